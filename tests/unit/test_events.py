"""The outbox and delivery log on a real SQLite database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from media import assets, deliveries
from media.events import Outbox
from media.keys import create_api_key, tenant_for_key
from media.records import Asset, AssetEvent, Database, Delivery, Job, Webhook, utcnow
from media.webhooks import Attempt


@pytest.fixture
def world(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade()
    sent, published = [], []
    outbox = Outbox(render=lambda a: {"id": a.id, "status": a.status},
                    publish=lambda asset_id, seq: published.append(seq),
                    send=lambda ids: sent.extend(ids))
    seed(db, outbox)
    return db, outbox, sent, published


def seed(db: Database, outbox: Outbox) -> None:
    """A tenant with a subscription to asset.completed, and an image asset of its with its
    own webhook_url: two targets for each event."""
    with db.session() as session:
        key = create_api_key(session, "alice")["api_key"]
    with db.session() as session:
        tenant = tenant_for_key(session, key)
        session.add(Webhook(tenant_id=tenant.id, url="https://example.com/a",
                            events=["asset.completed"]))
        upload = assets.Upload("b" * 32, "image", "image/jpeg", "a.jpg", 10, "0" * 64)
        assets.create(session, tenant.id, upload, "https://example.com/own", outbox)


def run_all(db, outbox) -> None:
    with db.session() as session:
        job_ids = [j.id for j in session.scalars(select(Job))]
    for job_id in job_ids:
        with db.session() as session:
            assets.start_job(session, job_id, "w", f"t-{job_id}", outbox=outbox)
        with db.session() as session:
            assets.complete_job(session, job_id, [], None, outbox)


def events(db, event_type=None) -> list[AssetEvent]:
    with db.session() as session:
        query = select(AssetEvent).order_by(AssetEvent.seq)
        if event_type:
            query = query.where(AssetEvent.type == event_type)
        return list(session.scalars(query))


def test_each_change_is_one_event_in_order_and_published_after_commit(world):
    db, outbox, sent, published = world
    run_all(db, outbox)
    recorded = events(db)
    assert [e.seq for e in recorded] == list(range(1, len(recorded) + 1))
    assert published == [e.seq for e in recorded]
    assert [e.data["status"] for e in recorded][0] == "queued"
    assert recorded[-1].type == "asset.completed" and recorded[-1].data["status"] == "completed"
    types = [e.type for e in recorded if e.type]
    assert sorted(types) == ["asset.completed", "asset.metadata.completed",
                             "asset.thumbnails.completed"]
    # The subscription wants only asset.completed; the upload's own URL gets every type.
    with db.session() as session:
        rows = list(session.scalars(select(Delivery)))
    assert sorted(d.url for d in rows if d.event_type == "asset.completed") == [
        "https://example.com/a", "https://example.com/own"]
    assert len(rows) == 4 and sorted(sent) == sorted(d.id for d in rows)
    assert len({d.message_id for d in rows if d.event_type == "asset.completed"}) == 1


def test_a_rolled_back_change_leaves_no_event_and_sends_nothing(world):
    db, outbox, sent, published = world
    before = len(events(db))
    with db.session() as session:
        job_id = session.scalars(select(Job)).first().id
    with pytest.raises(RuntimeError), db.session() as session:
        assets.start_job(session, job_id, "w", "t", outbox=outbox)
        raise RuntimeError("crash before commit")
    assert len(events(db)) == before and len(published) == before and sent == []


def test_reprocess_makes_new_events(world):
    db, outbox, *_ = world
    run_all(db, outbox)
    with db.session() as session:
        assets.reprocess(session, assets.get(session, session.scalars(
            select(Job)).first().asset.tenant_id, "b" * 32), outbox)
    run_all(db, outbox)
    assert len(events(db, "asset.completed")) == 2


def test_attempts_are_logged_retried_and_given_up(world):
    db, outbox, *_ = world
    run_all(db, outbox)
    with db.session() as session:
        delivery_id = session.scalars(select(Delivery.id)).first()
    schedule = (1, 1)
    for n in range(3):
        with db.session() as session:
            session.get(Delivery, delivery_id).next_attempt_at = utcnow() - timedelta(1)
        with db.session() as session:
            assert deliveries.claim(session, delivery_id) is not None
        with db.session() as session:  # claimed: a duplicate message gets nothing
            assert deliveries.claim(session, delivery_id) is None
        with db.session() as session:
            done = deliveries.record(session, delivery_id,
                                     Attempt("t", 500, 3, "HTTP 500", "oops"), schedule)
            status, next_at = done.status, done.next_attempt_at
        assert (status, next_at is None) == (("pending", False) if n < 2 else ("failed", True))
    with db.session() as session:
        logged = deliveries.to_json(session.get(Delivery, delivery_id))
    assert [a["status_code"] for a in logged["attempts"]] == [500, 500, 500]
    with db.session() as session:
        deliveries.redeliver(session, session.get(Delivery, delivery_id))
    with db.session() as session:
        assert deliveries.claim(session, delivery_id) is not None
        done = deliveries.record(session, delivery_id, Attempt("t", 204, 2, None), schedule)
        assert done.status == "delivered" and done.next_attempt_at is None


def test_due_hands_out_each_delivery_once_per_dispatch_window(world):
    db, outbox, *_ = world
    run_all(db, outbox)
    with db.session() as session:
        assert deliveries.due(session, 100) == []  # just dispatched by the outbox
        for row in session.scalars(select(Delivery)):
            row.dispatched_at = utcnow() - timedelta(minutes=5)
    with db.session() as session:
        assert len(deliveries.due(session, 100)) == 4
    with db.session() as session:
        assert deliveries.due(session, 100) == []


def test_completing_the_asset_renders_its_json_once(world):
    """The last job's event and asset.completed share one snapshot of the asset JSON."""
    db, outbox, *_ = world
    rendered = []
    counting = Outbox(render=lambda a: rendered.append(a.id) or {"id": a.id,
                                                                  "status": a.status})
    with db.session() as session:
        job_ids = [j.id for j in session.scalars(select(Job).order_by(Job.kind))]
    for job_id in job_ids:
        with db.session() as session:
            assets.start_job(session, job_id, "w", f"t-{job_id}")
    with db.session() as session:
        assets.complete_job(session, job_ids[0], [])
    with db.session() as session:
        assets.complete_job(session, job_ids[1], [], None, counting)
    last, completed = events(db)[-2:]
    assert (last.type, completed.type) == ("asset.thumbnails.completed", "asset.completed")
    assert completed.seq == last.seq + 1 and completed.data == last.data
    assert len(rendered) == 1


def test_a_redelivery_signs_the_events_links_afresh_and_keeps_the_rest(world):
    """An event's links are signed for 7 days when it is recorded: a manual redelivery
    later would send dead links. The rest of the event is as it was."""
    db, outbox, *_ = world
    run_all(db, outbox)
    with db.session() as session:
        delivery = session.scalars(select(Delivery)).first()
        delivery_id, old = delivery.id, json.loads(delivery.body)
        old["data"].update(original_url="https://s/original?expired=1", derivatives=[
            {"name": "thumb_256.webp", "url": "https://s/256?expired=1", "width": 256},
            {"name": "gone.webp", "url": "https://s/gone?expired=1"}])
        delivery.body = body = json.dumps(old)

    def render(asset) -> dict:
        return {"id": asset.id, "status": "changed since", "original_url": "https://s/o?new",
                "derivatives": [{"name": "thumb_256.webp", "url": "https://s/256?new"}]}

    with db.session() as session:
        deliveries.redeliver(session, session.get(Delivery, delivery_id), render)
    with db.session() as session:
        new = json.loads(session.get(Delivery, delivery_id).body)
    assert new["data"]["original_url"] == "https://s/o?new"
    assert new["data"]["derivatives"] == [
        {"name": "thumb_256.webp", "url": "https://s/256?new", "width": 256},
        {"name": "gone.webp", "url": "https://s/gone?expired=1"}]  # no longer made: as it was
    old["data"].pop("original_url"), old["data"].pop("derivatives")
    new["data"].pop("original_url"), new["data"].pop("derivatives")
    assert new == old  # status, type, timestamp: the event as it happened

    with db.session() as session:  # not while an attempt holds it: one id, one body
        delivery = session.get(Delivery, delivery_id)
        delivery.body, delivery.claimed_until = body, utcnow() + timedelta(seconds=30)
    with db.session() as session:
        deliveries.redeliver(session, session.get(Delivery, delivery_id), render)
    with db.session() as session:
        assert session.get(Delivery, delivery_id).body == body

    with db.session() as session:  # a deleted asset's links stay as they were
        delivery = session.get(Delivery, delivery_id)
        session.get(Asset, delivery.asset_id).deleted_at = utcnow()
        before = delivery.body
        deliveries.redeliver(session, delivery, render)
        assert delivery.body == before
