"""GET /api/v1/openapi.json: the OpenAPI 3.1 description of the HTTP API (no key needed).

Written out by hand, compactly: each operation names its answers; the asset, upload and
delivery shapes are shared components. A test holds it to the app's real routes.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

PROBLEM = {"description": "An RFC 9457 problem", "content": {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _json(ref: str, description: str = "OK") -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _op(summary: str, answers: dict, body: dict | None = None, params: list | None = None,
        public: bool = False) -> dict:
    op = {"summary": summary, "responses": {
        str(code): (answer if isinstance(answer, dict) else PROBLEM)
        for code, answer in answers.items()}}
    if body:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _body(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


ASSET_ID, UPLOAD_ID = [_path_param("asset_id")], [_path_param("upload_id")]
AUTH = {"401": None, "404": None}

PATHS = {
    "/api/v1/assets": {
        "post": _op("Upload an image or video (streamed to storage)", {
            "202": _json("Asset", "Accepted; jobs queued"), "400": None, "401": None,
            "413": None, "415": None, "422": None, "503": None,
        }, body={"multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"},
                                "webhook_url": {"type": "string", "format": "uri"}}}}},
            params=[{"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "maxLength": 255}}]),
        "get": _op("The tenant's assets, newest first", {
            "200": _json("AssetPage"), "400": None, "401": None,
        }, params=[_query("status", {"enum": ["queued", "processing", "completed", "failed"]}),
                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                   _query("cursor", {"type": "string"})]),
    },
    "/api/v1/assets/{asset_id}": {
        "get": _op("One asset", {"200": _json("Asset"), **AUTH}, params=ASSET_ID),
        "delete": _op("Delete an asset and its objects", {"204": {"description": "Deleted"},
                                                          **AUTH}, params=ASSET_ID),
    },
    "/api/v1/assets/{asset_id}/reprocess": {
        "post": _op("Run every job again", {"202": _json("Asset"), **AUTH}, params=ASSET_ID),
    },
    "/api/v1/assets/{asset_id}/events": {
        "get": _op("Live status as server-sent events (id: sequence, event: state|progress, "
                   "data: the asset)", {"200": {"description": "An event stream", "content": {
                       "text/event-stream": {"schema": {"type": "string"}}}},
                       "204": {"description": "Resumed after the final event: nothing to send"},
                       **AUTH},
                   params=[*ASSET_ID, {"name": "Last-Event-ID", "in": "header",
                                       "required": False, "schema": {"type": "string"}}]),
    },
    "/api/v1/uploads": {
        "post": _op("Start a direct-to-storage multipart upload", {
            "201": _json("Upload", "Created"), "400": None, "401": None, "413": None,
            "503": None,
        }, body=_body("UploadRequest")),
    },
    "/api/v1/uploads/{upload_id}": {
        "get": _op("The upload and the parts already stored", {"200": _json("Upload"), **AUTH},
                   params=UPLOAD_ID),
        "delete": _op("Abort the upload and free its parts",
                      {"204": {"description": "Aborted"}, **AUTH, "409": None},
                      params=UPLOAD_ID),
    },
    "/api/v1/uploads/{upload_id}/parts": {
        "post": _op("Presigned PUT URLs for parts", {"200": _json("PartUrls"), "400": None,
                                                      **AUTH, "409": None, "413": None},
                    body=_body("PartNumbers"), params=UPLOAD_ID),
    },
    "/api/v1/uploads/{upload_id}/complete": {
        "post": _op("Join the parts into an asset", {"202": _json("Asset"), "400": None,
                                                     **AUTH, "409": None, "413": None,
                                                     "415": None, "422": None, "503": None},
                    body=_body("CompleteRequest"), params=UPLOAD_ID),
    },
    "/api/v1/webhooks": {
        "post": _op("Subscribe a URL to events", {"201": _json("Webhook", "Created"),
                                                  "400": None, "401": None, "413": None,
                                                  "422": None},
                    body=_body("WebhookRequest")),
        "get": _op("The tenant's subscriptions", {"200": _json("WebhookList"), "401": None}),
    },
    "/api/v1/webhooks/{webhook_id}": {
        "delete": _op("Stop a subscription", {"204": {"description": "Deleted"}, **AUTH},
                      params=[_path_param("webhook_id")]),
    },
    "/api/v1/webhooks/deliveries": {
        "get": _op("The delivery log, newest first", {"200": _json("DeliveryList"),
                                                      "401": None},
                   params=[_query("asset_id", {"type": "string"})]),
    },
    "/api/v1/webhooks/deliveries/{delivery_id}/redeliver": {
        "post": _op("Send again with the same webhook-id", {"202": _json("Delivery"), **AUTH,
                                                            "409": None},
                    params=[_path_param("delivery_id")]),
    },
    "/healthz": {"get": _op("The process is up", {"200": {"description": "OK"}},
                            public=True)},
    "/readyz": {"get": _op("Database, broker and storage answer",
                           {"200": {"description": "Ready"}, "503": None}, public=True)},
    "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "text/plain"}},
                            public=True)},
    "/api/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OK"}},
                                        public=True)},
}

_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_JOB = {"type": "object", "properties": {
    "status": {"enum": ["queued", "processing", "completed", "failed"]},
    "progress": {"type": "number", "minimum": 0, "maximum": 1},
    "error": {"type": ["string", "null"]}}}
SCHEMAS = {
    "Problem": {"type": "object", "required": ["status", "title", "detail"], "properties": {
        "type": _STR, "title": _STR, "status": _INT, "detail": _STR}},
    "Derivative": {"type": "object", "properties": {
        "name": _STR, "kind": _STR, "content_type": _STR, "width": _INT, "height": _INT,
        "size": _INT, "duration": _NUM, "url": {"type": "string", "format": "uri"}}},
    "Asset": {"type": "object", "required": ["id", "status", "kind", "jobs"], "properties": {
        "id": _STR, "status": {"enum": ["queued", "processing", "completed", "failed"]},
        "kind": {"enum": ["image", "video"]}, "filename": _STR, "content_type": _STR,
        "size": _INT, "sha256": _STR,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "original_url": {"type": "string", "format": "uri"},
        "jobs": {"type": "object", "additionalProperties": _JOB},
        "metadata": {"type": "object"},
        "derivatives": {"type": "array", "items": {"$ref": "#/components/schemas/Derivative"}}}},
    "AssetPage": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Asset"}},
        "next_cursor": {"type": ["string", "null"]}}},
    "UploadRequest": {"type": "object", "required": ["filename", "size"], "properties": {
        "filename": _STR, "content_type": _STR, "size": _INT}},
    "Upload": {"type": "object", "properties": {
        "id": _STR, "part_size": _INT, "part_count": _INT, "status": _STR,
        "parts": {"type": "array", "items": {"type": "object", "properties": {
            "part_number": _INT, "etag": _STR, "size": _INT}}}}},
    "PartNumbers": {"type": "object", "required": ["part_numbers"], "properties": {
        "part_numbers": {"type": "array", "items": _INT}}},
    "PartUrls": {"type": "object", "properties": {
        "urls": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "CompleteRequest": {"type": "object", "required": ["parts"], "properties": {
        "parts": {"type": "array", "items": {"type": "object", "properties": {
            "part_number": _INT, "etag": _STR}}},
        "webhook_url": {"type": "string", "format": "uri"}}},
    "WebhookRequest": {"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "format": "uri"},
        "events": {"type": "array", "items": {"enum": [
            "asset.metadata.completed", "asset.thumbnails.completed", "asset.video.completed",
            "asset.completed", "asset.failed"]}}}},
    "Webhook": {"type": "object", "properties": {
        "id": _STR, "url": _STR, "events": {"type": "array", "items": _STR},
        "created_at": {"type": "string", "format": "date-time"}}},
    "WebhookList": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}}},
    "Delivery": {"type": "object", "properties": {
        "id": _STR, "event_type": _STR,
        "webhook_id": {"type": "string", "description": "the webhook-id header it is sent with"},
        "subscription_id": {"type": ["string", "null"],
                            "description": "the subscription; null for the upload's webhook_url"},
        "url": _STR, "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "array", "items": {"type": "object", "properties": {
            "at": _STR, "status_code": {"type": ["integer", "null"]}, "duration_ms": _INT,
            "error": {"type": ["string", "null"]}}}},
        "next_attempt_at": {"type": ["string", "null"]}}},
    "DeliveryList": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "mediamill", "version": "1",
             "description": "Upload images and videos; get thumbnails, web video, metadata "
                            "and signed webhooks back."},
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {
        "apiKey": {"type": "http", "scheme": "bearer"}}},
    "security": [{"apiKey": []}],
}


@bp.get("/api/v1/openapi.json")
def document():
    """The OpenAPI description of this API."""
    return jsonify(DOCUMENT)
