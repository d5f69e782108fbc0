"""The assets API: upload (streamed to storage), get, list, delete, reprocess."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

from media import assets
from media.errors import UnsupportedMedia
from media.hashing import HashingStream, TooLarge
from media.records import IdempotencyKey, after_commit, asset_prefix, new_id, original_key
from media.sniff import SNIFF_BYTES, sniff
from tasks.pipeline import enqueue
from web.api import text
from web.api.webhooks import upload_target
from web.auth import require_tenant
from web.errors import Problem, too_large
from web.extensions import base_url, celery, services
from web.streaming import MalformedBody, MultipartReader, Part

bp = Blueprint("assets", __name__, url_prefix="/api/v1/assets")

FIELDS = ("webhook_url",)  # the form fields this call reads; others are read and dropped
FIELD_LIMIT = 8 * 1024
# The file, webhook_url and the few a client library adds (Uppy's XHR upload sends each
# file's meta fields, name and type among them); 15,000 fields of 8 KiB sent before the file
# were once all kept: 120 MB in memory.
FORM_PARTS_MAX = 16
# The rest of the request around the file: the other parts, their headers and boundaries.
MULTIPART_SLACK = FORM_PARTS_MAX * (FIELD_LIMIT + 4 * 1024)
IDEMPOTENCY_KEY_MAX = 255  # the column's length
PURGE_TASK = "upkeep.purge"  # tasks/upkeep.py


@bp.post("")
@require_tenant
def create():
    """Stream the `file` part to storage, record the asset, enqueue its jobs: 202."""
    boundary = _boundary()
    limit = services().settings.max_upload_bytes
    if (request.content_length or 0) > limit + MULTIPART_SLACK:
        raise too_large(limit)
    # Counts a chunked body too (Werkzeug's LimitedStream, as gunicorn terminates the body):
    # a read past it raises RequestEntityTooLarge, answered below.
    request.max_content_length = limit + MULTIPART_SLACK
    idempotency_key = request.headers.get("Idempotency-Key", "").strip() or None
    if idempotency_key and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:  # not cut: keys collided
        raise Problem(400, "Bad Idempotency-Key", f"An Idempotency-Key is at most "
                      f"{IDEMPOTENCY_KEY_MAX} characters; this one has {len(idempotency_key)}.")
    replay = _idempotent_record(idempotency_key)
    asset_id = new_id()
    stored, fields, upload, sha256 = False, {}, None, None
    try:
        for count, part in enumerate(MultipartReader(request.stream, boundary).parts(), 1):
            if count > FORM_PARTS_MAX:
                raise _too_many_parts()
            if part.filename is not None and part.name == "file" and sha256 is None:
                text(part.filename, "The file's name")
                if replay is None:
                    upload = _receive(part, asset_id, limit)
                    stored, sha256 = True, upload.sha256
                else:
                    sha256 = _digest(part, limit)
            elif part.filename is None:
                value = part.text(FIELD_LIMIT)  # read whatever its name, to its limit
                if part.name in FIELDS:
                    fields[part.name] = value
        if sha256 is None:
            raise Problem(400, "No file", "Send the file as multipart/form-data in a field "
                          "named 'file'.")
        if replay is not None:  # the first answer again, whatever else this one sent
            return _replay(replay, sha256)
        webhook_url = upload_target(fields.get("webhook_url"))
        return _record(asset_id, upload, webhook_url, idempotency_key)
    except BaseException as exc:
        if stored:
            services().storage.delete_prefix(asset_prefix(asset_id))
        if isinstance(exc, MalformedBody):
            raise _malformed(exc) from None
        if isinstance(exc, RequestEntityTooLarge):
            raise _request_too_large(limit) from None
        raise


@bp.get("/<asset_id>")
@require_tenant
def show(asset_id: str):
    """One asset of the caller's tenant; another tenant's id is 404."""
    with services().db.session(read_only=True) as session:
        return jsonify(asset_json(_get_or_404(session, asset_id)))


@bp.get("")
@require_tenant
def index():
    """The tenant's assets, newest first, with an opaque cursor to the next page."""
    status = request.args.get("status") or None
    if status not in (None, "queued", "processing", "completed", "failed"):
        raise Problem(400, "Bad status", "status must be queued, processing, completed or failed.")
    limit = request.args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 200:
        raise Problem(400, "Bad limit", "limit must be a whole number from 1 to 200.")
    try:
        with services().db.session(read_only=True) as session:
            items, cursor = assets.page(session, g.tenant_id, status, int(limit),
                                        request.args.get("cursor") or None)
            return jsonify({"items": [asset_json(a) for a in items], "next_cursor": cursor})
    except ValueError:
        raise Problem(400, "Bad cursor",
                      "cursor must be a next_cursor from a previous answer.") from None


@bp.delete("/<asset_id>")
@require_tenant
def destroy(asset_id: str):
    """Hide the asset at once (404 from now on) and have its objects purged: 204."""
    if not delete_asset(g.tenant_id, asset_id):
        raise _not_found(asset_id)
    return Response(status=204)


@bp.post("/<asset_id>/reprocess")
@require_tenant
def reprocess(asset_id: str):
    """Run every job of the asset again; outputs are replaced: 202."""
    if not reprocess_asset(g.tenant_id, asset_id):
        raise _not_found(asset_id)
    with services().db.session(read_only=True) as session:
        return jsonify(asset_json(_get_or_404(session, asset_id))), 202


def delete_asset(tenant_id: str, asset_id: str) -> bool:
    """Hide the tenant's asset at once and purge its objects after commit; False if the
    tenant has no such asset. The API and the site both delete through here."""
    with services().db.session() as session:
        asset = assets.get(session, tenant_id, asset_id)
        if asset is None:
            return False
        assets.mark_deleted(session, asset)
        after_commit(session, lambda: celery().send_task(PURGE_TASK, args=[asset_id]))
        # Live streams of the asset end now rather than at their next heartbeat.
        seq = asset.seq
        after_commit(session, lambda: services().publish(asset_id, seq))
    return True


def reprocess_asset(tenant_id: str, asset_id: str) -> bool:
    """Run every job of the tenant's asset again (sent after commit); False if the tenant
    has no such asset. The API and the site both reprocess through here."""
    with services().db.session() as session:
        asset = assets.get(session, tenant_id, asset_id)
        if asset is None:
            return False
        jobs = assets.reprocess(session, asset, services().outbox)
        after_commit(session, lambda: enqueue(celery(), jobs))
    return True


def _boundary() -> bytes:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        raise Problem(400, "No file", "Send the file as multipart/form-data in a field named "
                      "'file'.")
    return options["boundary"].encode("latin-1")


def _receive(part: Part, asset_id: str, limit: int) -> assets.Upload:
    """Sniff the first bytes, then stream the rest to storage."""
    try:
        stream = HashingStream(part, limit, SNIFF_BYTES)
        if not stream.head:
            raise Problem(400, "Empty file", "The uploaded file is empty.")
        found = sniff(stream.head)
        services().storage.upload(original_key(asset_id), stream, found.content_type)
        digest = stream.finish()
    except UnsupportedMedia as exc:
        raise Problem(415, "Unsupported Media Type", str(exc)) from None
    except TooLarge:
        raise too_large(limit) from None
    return assets.Upload(asset_id, found.kind, found.content_type, part.filename or "",
                         digest.size, digest.sha256)


def _digest(part: Part, limit: int) -> str:
    """The file's SHA-256, only: on a replay all that matters is whether it is the first
    file, so a different one is the contract's 422 even when it is empty or not media."""
    try:
        return HashingStream(part, limit, 0).finish().sha256
    except TooLarge:
        raise too_large(limit) from None


def _record(asset_id: str, upload: assets.Upload, webhook_url: str | None,
            idempotency_key: str | None):
    try:
        with services().db.session() as session:
            asset = assets.create(session, g.tenant_id, upload, webhook_url,
                                  services().outbox, public_url=base_url())
            if idempotency_key:  # only an answer that made an asset: a refusal made nothing
                session.add(IdempotencyKey(tenant_id=g.tenant_id, key=idempotency_key,
                                           sha256=upload.sha256, asset_id=asset_id,
                                           status_code=202))
            jobs = list(asset.jobs)
            after_commit(session, lambda: enqueue(celery(), jobs))
    except IntegrityError:  # the same key raced us and won: answer as a replay
        services().storage.delete_prefix(asset_prefix(asset_id))
        return _replay(_idempotent_record(idempotency_key), upload.sha256)
    with services().db.session(read_only=True) as session:
        return jsonify(asset_json(_get_or_404(session, asset_id))), 202


def _idempotent_record(key: str | None) -> IdempotencyKey | None:
    if not key:
        return None
    with services().db.session() as session:
        return assets.find_idempotent(session, g.tenant_id, key)


def _replay(record: IdempotencyKey, sha256: str):
    if record.sha256 != sha256:
        raise Problem(422, "Idempotency-Key reused", "This Idempotency-Key was used with a "
                      "different file in the last 24 hours; use a new key for a new upload.")
    with services().db.session() as session:
        asset = assets.get(session, g.tenant_id, record.asset_id)
        if asset is None:
            raise Problem(404, "Not Found", "The asset created with this Idempotency-Key has "
                          "been deleted.")
        return jsonify(asset_json(asset)), record.status_code


def _get_or_404(session, asset_id: str):
    asset = assets.get(session, g.tenant_id, asset_id)
    if asset is None:
        raise _not_found(asset_id)
    return asset


def _not_found(asset_id: str) -> Problem:
    return Problem(404, "Not Found", f"No asset {asset_id!r} for this API key.")


def asset_json(asset) -> dict:
    """The contract's asset JSON, with signed links, for this request."""
    s = services()
    return assets.to_json(asset, s.storage, base_url(), s.settings.signed_url_ttl)


def _too_many_parts() -> Problem:
    return Problem(400, "Too many form fields", f"An upload is at most {FORM_PARTS_MAX} form "
                   "parts: the file, webhook_url and a few more.")


def _request_too_large(limit: int) -> Problem:
    return Problem(413, "Payload Too Large", f"The request is larger than this service's "
                   f"limit of {limit} bytes (MEDIAMILL_MAX_UPLOAD_BYTES) for a file, and "
                   f"{MULTIPART_SLACK} bytes more for the rest of the form.")


def _malformed(exc: Exception) -> Problem:
    return Problem(400, "Malformed upload", f"The request body ended early or is not valid "
                   f"multipart/form-data ({exc}).")
