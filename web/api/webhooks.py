"""Webhook subscriptions and the delivery log."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import select

from media import deliveries
from media.records import Delivery, Webhook, after_commit
from media.timefmt import rfc3339
from media.webhooks import EVENT_TYPES, RefusedTarget, check_url
from web.api import json_object, text
from web.auth import require_tenant
from web.errors import Problem
from web.extensions import celery, services

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")


@bp.post("")
@require_tenant
def create():
    """Subscribe a URL to some event types: 201; 422 for a refused target."""
    body = json_object()
    url, events = body.get("url"), body.get("events", list(EVENT_TYPES))
    if not isinstance(url, str) or not isinstance(events, list) or not events:
        raise Problem(400, "Bad subscription", 'Send {"url": "...", "events": [...]}.')
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise Problem(422, "Unknown event type", f"Unknown events {unknown}; choose from "
                      f"{list(EVENT_TYPES)}.")
    url = text(url, "url").strip()
    check_target(url)
    with services().db.session() as session:
        hook = Webhook(tenant_id=g.tenant_id, url=url, events=sorted(set(events)))
        session.add(hook)
        session.flush()
        return jsonify(_json(hook)), 201


@bp.get("")
@require_tenant
def index():
    """The tenant's subscriptions."""
    with services().db.session(read_only=True) as session:
        hooks = session.scalars(select(Webhook).where(Webhook.tenant_id == g.tenant_id)
                                .order_by(Webhook.created_at))
        return jsonify({"items": [_json(h) for h in hooks]})


@bp.delete("/<webhook_id>")
@require_tenant
def destroy(webhook_id: str):
    """Stop a subscription: 204. Its pending deliveries are cancelled with it (logged as
    failed, saying why), so no retry reaches the URL after this answer."""
    with services().db.session() as session:
        hook = _owned(session, Webhook, webhook_id, "webhook")
        deliveries.unsubscribe(session, hook.id)
        session.delete(hook)
    return Response(status=204)


@bp.get("/deliveries")
@require_tenant
def log():
    """Deliveries, newest first, optionally of one asset, with every attempt."""
    query = select(Delivery).where(Delivery.tenant_id == g.tenant_id)
    if asset_id := request.args.get("asset_id"):
        query = query.where(Delivery.asset_id == asset_id)
    with services().db.session(read_only=True) as session:
        rows = session.scalars(query.order_by(Delivery.created_at.desc()).limit(200))
        return jsonify({"items": [deliveries.to_json(d) for d in rows]})


@bp.post("/deliveries/<delivery_id>/redeliver")
@require_tenant
def redeliver(delivery_id: str):
    """Send a delivery again with the same webhook-id, its links signed afresh: 202 (after
    the attempt under way, if any); 409 when its subscription has been deleted."""
    with services().db.session() as session:
        delivery = _owned(session, Delivery, delivery_id, "delivery")
        if not deliveries.redeliver(session, delivery, services().render):
            raise Problem(409, "Subscription deleted", f"Delivery {delivery_id!r} was for a "
                          "subscription that has since been deleted; it is not sent again.")
        answer = deliveries.to_json(delivery)
        after_commit(session, lambda: celery().send_task("webhooks.deliver", args=[delivery_id]))
    return jsonify(answer), 202


def check_target(url: str) -> None:
    """422 unless webhooks may reach `url`."""
    try:
        check_url(url, services().settings.webhook_allow_private)
    except RefusedTarget as exc:
        raise Problem(422, "Refused webhook URL", str(exc)) from None


def upload_target(value: object) -> str | None:
    """An upload's optional `webhook_url`: None when blank, else checked as `check_target`."""
    if value is None:
        return None
    value = text(value, "webhook_url").strip()
    if not value:
        return None
    check_target(value)
    return value


def _json(hook: Webhook) -> dict:
    return {"id": hook.id, "url": hook.url, "events": hook.events,
            "created_at": rfc3339(hook.created_at)}


def _owned(session, model, row_id: str, what: str):
    """The tenant's row `row_id` of `model`; 404 when absent or another tenant's."""
    row = session.get(model, row_id)
    if row is None or row.tenant_id != g.tenant_id:
        raise Problem(404, "Not Found", f"No {what} {row_id!r} for this API key.")
    return row
