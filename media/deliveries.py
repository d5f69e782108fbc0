"""The delivery log: claiming a due delivery, recording an attempt, finding what is due.

A delivery is attempted by whoever claims it (a short lease in the row), so the message
sent at once after the event and beat's dispatcher can both exist without the receiver
getting the event twice at the same time; every attempt carries the same webhook-id. A
manual redelivery takes no lease of its own: asked during an attempt, it follows it. A
delivery whose subscription is deleted is not claimed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, or_, select, update
from sqlalchemy.orm import Session

from media.records import Asset, Delivery, Webhook, utcnow
from media.timefmt import aware, rfc3339
from media.webhooks import Attempt, encode, next_attempt

CLAIM = timedelta(seconds=60)  # longer than one attempt may take (webhooks.ATTEMPT_DEADLINE)
REDISPATCH = timedelta(seconds=60)
UNSUBSCRIBED = "not sent: its subscription was deleted"


def claim(session: Session, delivery_id: str) -> Delivery | None:
    """Take the delivery for one attempt if it is pending, due, unclaimed and its
    subscription (if it has one) still exists. Checked in the claim itself, so a claim racing
    the subscription's deletion cannot lead to a send; one found orphaned is cancelled."""
    now = utcnow()
    taken = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, *_claimable(now), _subscribed())
        .values(claimed_until=now + CLAIM)
    ).rowcount
    if taken:
        return session.get(Delivery, delivery_id)
    _cancel(session, Delivery.id == delivery_id, ~_subscribed())
    return None


def record(session: Session, delivery_id: str, attempt: Attempt,
           schedule: tuple[int, ...]) -> Delivery:
    """Log an attempt; delivered on 2xx, else scheduled again or failed for good. A failed
    manual redelivery uses up no retry of the schedule; a redelivery asked for while this
    attempt ran is made due now, and one whose subscription is gone is not retried."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    now = utcnow()
    manual = _manual(delivery, now)
    entry = {"at": attempt.at, "status_code": attempt.status_code,
             "duration_ms": attempt.duration_ms, "error": attempt.error,
             "response": attempt.response, "manual": manual}
    delivery.attempts = [*delivery.attempts, entry]
    delivery.claimed_until = delivery.dispatched_at = None
    if manual:
        delivery.redeliver_at = None
    wanted = subscribed(session, delivery)
    if attempt.delivered:
        delivery.status, delivery.next_attempt_at = "delivered", None
    elif not wanted:
        delivery.status, delivery.next_attempt_at = "failed", None
    elif manual and any(a.get("status_code") and 200 <= a["status_code"] < 300
                        for a in delivery.attempts[:-1]):
        # a resend of an event the receiver already had: one try, no schedule after it
        delivery.status, delivery.next_attempt_at = "failed", None
    else:
        failures = sum(1 for a in delivery.attempts if a["error"] and not a.get("manual"))
        delivery.next_attempt_at = next_attempt(schedule, max(failures, 1), now)
        if delivery.next_attempt_at is None:
            delivery.status = "failed"
    if delivery.redeliver_at is not None and wanted:
        delivery.status, delivery.next_attempt_at = "pending", now
        delivery.redeliver_at = now  # before the claim that sends it: that attempt is manual
    return delivery


def _manual(delivery: Delivery, now: datetime) -> bool:
    """Whether the attempt being logged is a redelivery: one asked for before its claim
    began (asked during the attempt, `redeliver_at` is the claim's end)."""
    if delivery.redeliver_at is None:
        return False
    started = aware(delivery.claimed_until) - CLAIM if delivery.claimed_until else now
    return aware(delivery.redeliver_at) <= started


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


def _subscribed() -> ColumnElement[bool]:
    """For the upload's own webhook_url, or for a subscription that still exists."""
    return or_(Delivery.webhook_id.is_(None),
               exists().where(Webhook.id == Delivery.webhook_id))


def subscribed(session: Session, delivery: Delivery) -> bool:
    """Whether `delivery` is still wanted: its subscription, if it has one, exists."""
    return delivery.webhook_id is None or session.get(Webhook, delivery.webhook_id) is not None


def unsubscribe(session: Session, webhook_id: str) -> None:
    """Cancel the pending deliveries of a subscription being deleted (in the same
    transaction), so none is attempted again; one under way may finish and is logged."""
    _cancel(session, Delivery.webhook_id == webhook_id)


def _cancel(session: Session, *where: ColumnElement[bool]) -> None:
    """Mark the pending deliveries matching `where` failed, with a line in their log that
    says why. Idempotent."""
    stopped = {"at": rfc3339(utcnow()), "status_code": None, "duration_ms": 0,
               "error": UNSUBSCRIBED, "response": None}
    for row in session.scalars(select(Delivery).where(Delivery.status == "pending", *where)
                               .with_for_update()):
        row.attempts = [*row.attempts, stopped]
        row.status, row.next_attempt_at, row.dispatched_at = "failed", None, None
        row.redeliver_at = None


def redeliver(session: Session, delivery: Delivery,
              render: Callable[[Asset], dict] | None = None) -> bool:
    """Send again with the same webhook-id, whatever its status was: one attempt besides the
    schedule (if it fails, the retries left are as they were). Asked while an attempt holds
    the delivery, it is queued behind it (`record` makes it due once that attempt is
    logged), so two sends under one webhook-id never overlap; asked again before it is
    sent, it is still one send. With `render` (the asset JSON as events carry it), the
    event's links, signed for 7 days when it was recorded, are signed afresh if the asset
    still exists; the rest is as it was. Not while an attempt is under way: the bytes of a
    webhook-id change only between attempts. False, changing nothing, when its
    subscription has been deleted."""
    session.refresh(delivery, with_for_update=True)  # decided against a claim, not beside it
    if not subscribed(session, delivery):
        return False
    now = utcnow()
    delivery.status = "pending"
    if delivery.claimed_until is not None and aware(delivery.claimed_until) > now:
        delivery.redeliver_at = delivery.claimed_until  # after this attempt began: queued
        return True
    delivery.redeliver_at = delivery.next_attempt_at = now
    delivery.claimed_until, delivery.dispatched_at = None, now
    asset = session.get(Asset, delivery.asset_id) if render else None
    if asset is not None and asset.deleted_at is None:
        delivery.body = fresh_links(delivery.body, render(asset))
    return True


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
