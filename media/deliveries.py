"""The delivery log: claiming a due delivery, recording an attempt, finding what is due.

A delivery is attempted by whoever claims it (a short lease in the row), so the message
sent at once after the event and beat's dispatcher can both exist without the receiver
getting the event twice at the same time; every attempt carries the same webhook-id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from media.records import Asset, Delivery, utcnow
from media.timefmt import aware, rfc3339
from media.webhooks import Attempt, encode, next_attempt

CLAIM = timedelta(seconds=60)  # longer than one attempt's connect + read timeouts
REDISPATCH = timedelta(seconds=60)


def claim(session: Session, delivery_id: str) -> Delivery | None:
    """Take the delivery for one attempt if it is pending, due and unclaimed."""
    now = utcnow()
    taken = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, *_claimable(now))
        .values(claimed_until=now + CLAIM)
    ).rowcount
    return session.get(Delivery, delivery_id) if taken else None


def record(session: Session, delivery_id: str, attempt: Attempt,
           schedule: tuple[int, ...]) -> Delivery:
    """Log an attempt; delivered on 2xx, else scheduled again or failed for good."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    entry = {"at": attempt.at, "status_code": attempt.status_code,
             "duration_ms": attempt.duration_ms, "error": attempt.error,
             "response": attempt.response}
    delivery.attempts = [*delivery.attempts, entry]
    delivery.claimed_until = delivery.dispatched_at = None
    if attempt.delivered:
        delivery.status, delivery.next_attempt_at = "delivered", None
    else:
        failures = sum(1 for a in delivery.attempts if a["error"])
        delivery.next_attempt_at = next_attempt(schedule, failures, utcnow())
        if delivery.next_attempt_at is None:
            delivery.status = "failed"
    return delivery


def due(session: Session, limit: int) -> list[str]:
    """Pending deliveries whose time has come and that no one holds; marks them dispatched."""
    now = utcnow()
    rows = list(session.scalars(
        select(Delivery)
        .where(*_claimable(now),
               or_(Delivery.dispatched_at.is_(None), Delivery.dispatched_at < now - REDISPATCH))
        .order_by(Delivery.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    ))
    for row in rows:
        row.dispatched_at = now
    return [row.id for row in rows]


def _claimable(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Pending, due by `now`, and held by no one (or by a claim that has lapsed)."""
    return (Delivery.status == "pending", Delivery.next_attempt_at <= now,
            or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now))


def redeliver(session: Session, delivery: Delivery,
              render: Callable[[Asset], dict] | None = None) -> None:
    """Send again now, with the same webhook-id, whatever its status was. With `render`
    (the asset JSON as events carry it), the event's links, signed for 7 days when it was
    recorded, are signed afresh if the asset still exists; the rest is as it was. Not while
    an attempt holds the delivery: the send this asks for may race that attempt, and two
    sends under one webhook-id must carry the same bytes."""
    attempting = (delivery.claimed_until is not None
                  and aware(delivery.claimed_until) > utcnow())
    delivery.status, delivery.next_attempt_at = "pending", utcnow()
    delivery.claimed_until, delivery.dispatched_at = None, utcnow()
    asset = session.get(Asset, delivery.asset_id) if render and not attempting else None
    if asset is not None and asset.deleted_at is None:
        delivery.body = fresh_links(delivery.body, render(asset))


def fresh_links(body: str, current: dict) -> str:
    """`body` (an event) with its original and derivative links taken from `current`."""
    event = json.loads(body)
    data = event.get("data")
    if not isinstance(data, dict) or data.get("id") != current.get("id"):
        return body
    links = {d.get("name"): d.get("url") for d in current.get("derivatives") or []}
    if "original_url" in data:
        data["original_url"] = current.get("original_url")
    for derivative in data.get("derivatives") or []:
        if derivative.get("name") in links:
            derivative["url"] = links[derivative["name"]]
    return encode(event)


def to_json(delivery: Delivery) -> dict:
    """The contract's delivery-log entry."""
    return {
        "id": delivery.id,
        "event_type": delivery.event_type,
        # The Standard Webhooks `webhook-id` header value, the same on every (re)send: a
        # receiver matches what it got to this entry by it.
        "webhook_id": delivery.message_id,
        # The subscription it was sent for; None for the upload's own webhook_url.
        "subscription_id": delivery.webhook_id,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": [{k: a.get(k) for k in ("at", "status_code", "duration_ms", "error")}
                     for a in delivery.attempts],
        "next_attempt_at": rfc3339(delivery.next_attempt_at) if delivery.next_attempt_at
        else None,
        "asset_id": delivery.asset_id,
    }
