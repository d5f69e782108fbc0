"""The asset lifecycle on a real SQLite database: jobs, settling, leases, progress."""

from __future__ import annotations

from datetime import timedelta

import pytest

from media import assets
from media.keys import create_api_key, tenant_for_key
from media.records import Database, Job


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.upgrade()
    return database


@pytest.fixture
def asset_id(db):
    with db.session() as session:
        key = create_api_key(session, "alice")["api_key"]
    with db.session() as session:
        tenant = tenant_for_key(session, key)
        upload = assets.Upload("a" * 32, "video", "video/mp4", "clip.mp4", 10, "0" * 64)
        assets.create(session, tenant.id, upload)
    return "a" * 32


def jobs(db, asset_id) -> dict[str, Job]:
    with db.session() as session:
        found = session.query(Job).filter_by(asset_id=asset_id).all()
        return {job.kind: job for job in found}


def status(db, asset_id) -> str:
    with db.session() as session:
        return session.get(assets.Asset, asset_id).status


def test_a_video_gets_three_queued_jobs(db, asset_id):
    assert set(jobs(db, asset_id)) == {"metadata", "thumbnails", "video"}
    assert status(db, asset_id) == "queued"


def test_completed_only_when_every_job_is(db, asset_id):
    ids = {kind: job.id for kind, job in jobs(db, asset_id).items()}
    for kind in ("metadata", "thumbnails"):
        with db.session() as session:
            assert assets.start_job(session, ids[kind], "w", f"t-{kind}") is not None
        with db.session() as session:
            assets.complete_job(session, ids[kind], [])
        assert status(db, asset_id) == "processing"
    with db.session() as session:
        assets.start_job(session, ids["video"], "w", "t-video")
        assets.complete_job(session, ids["video"], [{"name": "mp4_720p"}])
    assert status(db, asset_id) == "completed"
    with db.session() as session:  # a duplicate finishing second changes nothing
        again = assets.complete_job(session, ids["video"], [{"name": "other"}])
    assert again is not None and again.status == "completed"
    assert jobs(db, asset_id)["video"].outputs == [{"name": "mp4_720p"}]


def test_one_failure_fails_the_asset_for_good(db, asset_id):
    ids = {kind: job.id for kind, job in jobs(db, asset_id).items()}
    with db.session() as session:
        assets.fail_job(session, ids["video"], "The video could not be read.")
    with db.session() as session:
        assets.complete_job(session, ids["metadata"], [])
        assets.complete_job(session, ids["thumbnails"], [])
    assert status(db, asset_id) == "failed"
    assert jobs(db, asset_id)["video"].error == "The video could not be read."
    with db.session() as session:  # a failed job is not started again by a stray message
        assert assets.start_job(session, ids["video"], "w", "t") is None


def test_a_job_runs_under_one_task_id_while_it_beats(db, asset_id):
    job_id = jobs(db, asset_id)["video"].id
    with db.session() as session:
        assert assets.start_job(session, job_id, "video@a", "task-1") is not None
    with db.session() as session:  # a duplicate message with another id waits its turn
        assert assets.start_job(session, job_id, "video@b", "task-2") is None
    with db.session() as session:  # the same message redelivered after a crash restarts
        assert assets.start_job(session, job_id, "video@b", "task-1") is not None
    with db.session() as session:  # no heartbeat for too long: anyone may take it over
        assert assets.start_job(session, job_id, "video@c", "task-3",
                                stale=timedelta(0)) is not None
    job = jobs(db, asset_id)["video"]
    assert (job.worker, job.task_id, job.attempts) == ("video@c", "task-3", 3)


def test_a_beat_says_whether_the_work_is_still_wanted(db, asset_id):
    job_id = jobs(db, asset_id)["video"].id
    with db.session() as session:
        assets.start_job(session, job_id, "video@a", "task-1")
    with db.session() as session:
        assert assets.beat(session, job_id, "task-1") is True
    with db.session() as session:
        assets.mark_deleted(session, session.get(assets.Asset, asset_id))
    with db.session() as session:  # deleted: the transcode may stop
        assert assets.beat(session, job_id, "task-1") is False


def test_progress_only_rises(db, asset_id):
    job_id = jobs(db, asset_id)["video"].id
    with db.session() as session:
        assert not assets.set_progress(session, job_id, 0.5)  # not running yet
        assets.start_job(session, job_id, "w", "t")
    for value, changed in ((0.4, True), (0.2, False), (0.4, False), (0.9, True)):
        with db.session() as session:
            assert assets.set_progress(session, job_id, value) is changed
    assert jobs(db, asset_id)["video"].progress == 0.9


def test_deleted_asset_jobs_do_not_start(db, asset_id):
    job_id = jobs(db, asset_id)["metadata"].id
    with db.session() as session:
        assets.mark_deleted(session, session.get(assets.Asset, asset_id))
    with db.session() as session:
        assert assets.start_job(session, job_id, "w", "t") is None


def test_reprocess_requeues_every_job(db, asset_id):
    ids = {kind: job.id for kind, job in jobs(db, asset_id).items()}
    with db.session() as session:
        assets.fail_job(session, ids["video"], "broken")
    with db.session() as session:
        asset = session.get(assets.Asset, asset_id)
        assert len(assets.reprocess(session, asset)) == 3
    assert status(db, asset_id) == "queued"
    assert {j.status for j in jobs(db, asset_id).values()} == {"queued"}
    assert all(j.error is None and j.progress == 0 for j in jobs(db, asset_id).values())


def test_stale_queued_jobs_are_resent_once(db, asset_id):
    with db.session() as session:
        assert assets.stale_queued(session, timedelta(minutes=5), 10) == []
        for job in session.query(Job).filter_by(asset_id=asset_id):
            job.queued_at -= timedelta(minutes=10)
    with db.session() as session:
        assert len(assets.stale_queued(session, timedelta(minutes=5), 10)) == 3
    with db.session() as session:
        assert assets.stale_queued(session, timedelta(minutes=5), 10) == []


def test_a_job_waiting_in_a_backlog_is_resent_as_its_age_doubles(db, asset_id):
    """A queued job 3 min old is sent again now, then when 6 min old, then every 4 min
    (lost work is picked up within 5 minutes); never at every 30 s sweep."""
    job_id = jobs(db, asset_id)["video"].id
    stale = timedelta(minutes=2)

    def age_by(delta: timedelta) -> None:
        with db.session() as session:
            job = session.get(Job, job_id)
            job.queued_at -= delta
            if job.resend_at is not None:
                job.resend_at -= delta

    def resent() -> bool:
        with db.session() as session:
            return job_id in [j.id for j in assets.stale_queued(session, stale, 10)]

    age_by(timedelta(minutes=3))
    assert resent()
    assert not resent()  # the next sweep leaves it
    age_by(timedelta(minutes=2))
    assert not resent()  # 5 min old: not yet doubled
    age_by(timedelta(minutes=1, seconds=30))
    assert resent()  # 6.5 min old
    age_by(timedelta(hours=2))
    assert resent()
    age_by(timedelta(minutes=3, seconds=30))
    assert not resent()
    age_by(timedelta(seconds=45))
    assert resent()  # however old, at least every 4 minutes
    with db.session() as session:  # reprocess starts the clock again
        assets.reprocess(session, session.get(Job, job_id).asset)
        assert session.get(Job, job_id).resend_at is None


def test_cursor_round_trips_and_rejects_garbage():
    with pytest.raises(ValueError):
        assets.decode_cursor("not-a-cursor")


def test_a_run_that_stopped_beating_goes_back_to_the_queue(db, asset_id):
    job_id = jobs(db, asset_id)["video"].id
    with db.session() as session:
        assets.start_job(session, job_id, "video@a", "task-1")
    with db.session() as session:
        assert assets.stale_running(session, timedelta(minutes=2), 10) == []
        assets.beat(session, job_id, "task-1")
    with db.session() as session:
        session.get(Job, job_id).heartbeat_at -= timedelta(minutes=3)
    with db.session() as session:
        assert [j.id for j in assets.stale_running(session, timedelta(minutes=2), 10)] == [
            job_id]
    assert jobs(db, asset_id)["video"].status == "queued"
    with db.session() as session:  # a new message takes it; the dead run's would not
        assert assets.start_job(session, job_id, "video@b", "task-2") is not None
    with db.session() as session:
        assert assets.start_job(session, job_id, "video@c", "task-1") is None


def test_the_migrations_make_the_schema_the_models_describe(db, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from media.records import Base

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
