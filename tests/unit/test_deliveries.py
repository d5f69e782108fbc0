"""Redeliveries and deleted subscriptions in the delivery log, on real SQLite and
PostgreSQL databases (the latter skipped when none answers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from media import deliveries
from media.events import Outbox
from media.records import Database, Delivery, Webhook, utcnow
from media.webhooks import Attempt
from tests.unit.test_events import run_all, seed

FAILED = Attempt("t", 500, 3, "HTTP 500", "oops")


@pytest.fixture(params=["sqlite", "postgres"])
def world(request, tmp_path):
    """An asset with a delivery to its own webhook_url and one to a subscription."""
    url = (request.getfixturevalue("postgres_url") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'db.sqlite'}")
    db = Database(url)
    db.upgrade()
    outbox = Outbox(render=lambda a: {"id": a.id, "status": a.status},
                    publish=lambda asset_id, seq: None, send=lambda ids: None)
    seed(db, outbox)
    yield db, outbox
    db.dispose()


def one(db, subscribed: bool = True) -> str:
    """The id of a delivery for the subscription (or for the upload's own webhook_url)."""
    with db.session() as session:
        hook = Delivery.webhook_id.is_not(None) if subscribed else Delivery.webhook_id.is_(None)
        return session.scalars(select(Delivery.id).where(hook)).first()


def make_due(db, delivery_id: str) -> None:
    with db.session() as session:
        session.get(Delivery, delivery_id).next_attempt_at = utcnow() - timedelta(seconds=1)


def claim(db, delivery_id: str) -> bool:
    with db.session() as session:
        return deliveries.claim(session, delivery_id) is not None


def record(db, delivery_id: str, attempt: Attempt, schedule) -> tuple[str, object]:
    with db.session() as session:
        done = deliveries.record(session, delivery_id, attempt, schedule)
        return done.status, done.next_attempt_at


def redeliver(db, delivery_id: str) -> bool:
    with db.session() as session:
        return deliveries.redeliver(session, session.get(Delivery, delivery_id))


def test_a_redelivery_asked_during_an_attempt_follows_it_instead_of_racing_it(world):
    db, outbox = world
    run_all(db, outbox)
    delivery_id, schedule = one(db), (600, 600)
    make_due(db, delivery_id)
    assert claim(db, delivery_id)  # an attempt is under way
    for _ in range(3):
        redeliver(db, delivery_id)
        assert not claim(db, delivery_id)  # nothing is sent beside it
    status, next_at = record(db, delivery_id, FAILED, schedule)
    assert status == "pending" and next_at <= utcnow()  # due now, not in 10 minutes
    assert claim(db, delivery_id)  # the redelivery: one, for the three asks
    status, next_at = record(db, delivery_id, FAILED, schedule)
    assert status == "pending" and next_at > utcnow() + timedelta(seconds=500)
    assert not claim(db, delivery_id)
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.redeliver_at is None
        assert [a["manual"] for a in delivery.attempts] == [False, True]


def test_a_redelivery_after_a_delivered_attempt_is_still_sent(world):
    db, outbox = world
    run_all(db, outbox)
    delivery_id = one(db)
    make_due(db, delivery_id)
    assert claim(db, delivery_id)
    redeliver(db, delivery_id)
    assert record(db, delivery_id, Attempt("t", 200, 3, None), (1,))[0] == "pending"
    assert claim(db, delivery_id)
    assert record(db, delivery_id, Attempt("t", 204, 3, None), (1,)) == ("delivered", None)


def test_a_failed_redelivery_uses_up_no_retry(world):
    db, outbox = world
    run_all(db, outbox)
    delivery_id, schedule = one(db), (1,)  # two automatic attempts in all
    make_due(db, delivery_id)
    assert claim(db, delivery_id)
    assert record(db, delivery_id, FAILED, schedule)[0] == "pending"
    redeliver(db, delivery_id)
    assert claim(db, delivery_id)
    assert record(db, delivery_id, FAILED, schedule)[0] == "pending"  # the retry is left
    make_due(db, delivery_id)
    assert claim(db, delivery_id)
    assert record(db, delivery_id, FAILED, schedule) == ("failed", None)
    redeliver(db, delivery_id)
    assert claim(db, delivery_id)  # one more, by hand
    assert record(db, delivery_id, FAILED, schedule) == ("failed", None)


def test_deleting_a_subscription_cancels_its_pending_deliveries_only(world):
    db, outbox = world
    run_all(db, outbox)
    hooked, own = one(db), one(db, subscribed=False)
    with db.session() as session:
        hook_id = session.scalars(select(Webhook.id)).one()
        deliveries.unsubscribe(session, hook_id)
        session.delete(session.get(Webhook, hook_id))
    with db.session() as session:
        cancelled = deliveries.to_json(session.get(Delivery, hooked))
    assert cancelled["status"] == "failed" and cancelled["next_attempt_at"] is None
    assert cancelled["attempts"][-1]["error"] == "not sent: its subscription was deleted"
    make_due(db, hooked)
    assert not claim(db, hooked)
    assert not redeliver(db, hooked)
    with db.session() as session:
        assert session.get(Delivery, hooked).status == "failed"
    assert claim(db, own)  # the upload's own webhook_url: as before
    assert record(db, own, FAILED, (1,))[0] == "pending"


def test_the_claim_refuses_a_delivery_whose_subscription_is_gone(world):
    db, outbox = world
    run_all(db, outbox)
    hooked = one(db)
    make_due(db, hooked)
    with db.session() as session:  # deleted between a dispatch and the claim
        session.delete(session.scalars(select(Webhook)).one())
    assert not claim(db, hooked)
    with db.session() as session:
        delivery = session.get(Delivery, hooked)
        assert delivery.status == "failed" and delivery.next_attempt_at is None
        assert delivery.attempts[-1]["error"] == deliveries.UNSUBSCRIBED


def test_an_attempt_under_way_when_its_subscription_is_deleted_is_not_retried(world):
    db, outbox = world
    run_all(db, outbox)
    hooked = one(db)
    make_due(db, hooked)
    assert claim(db, hooked)
    with db.session() as session:
        hook = session.scalars(select(Webhook)).one()
        deliveries.unsubscribe(session, hook.id)
        session.delete(hook)
    assert record(db, hooked, FAILED, (1, 1)) == ("failed", None)
    with db.session() as session:
        errors = [a["error"] for a in session.get(Delivery, hooked).attempts]
    assert errors == [deliveries.UNSUBSCRIBED, "HTTP 500"]


def test_a_failed_resend_of_a_delivered_event_starts_no_schedule(world):
    """Delivered, resent by hand, the resend answered 500: that is one try, not the start
    of ~24 h of automatic POSTs of an event the receiver already had."""
    db, outbox = world
    run_all(db, outbox)
    delivery_id = one(db)
    make_due(db, delivery_id)
    assert claim(db, delivery_id)
    assert record(db, delivery_id, Attempt("t", 200, 3, None), (1, 1))[0] == "delivered"
    redeliver(db, delivery_id)
    assert claim(db, delivery_id)
    assert record(db, delivery_id, FAILED, (1, 1)) == ("failed", None)
    assert not claim(db, delivery_id)
