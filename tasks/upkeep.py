"""Upkeep run by beat: re-send silent jobs, purge deleted assets, abort abandoned direct
uploads; bounded work per run."""

import contextlib
from datetime import timedelta

from celery import shared_task
from sqlalchemy import delete, select

from media import assets
from media.records import Asset, DirectUpload, utcnow
from media.services import Services
from tasks.pipeline import enqueue

PURGE_BATCH = 100
ABANDONED_AFTER = timedelta(hours=24)
SEND_BATCH = 500


@shared_task(name="upkeep.purge", bind=True, acks_late=True, autoretry_for=(OSError,),
             retry_backoff=2, max_retries=5)
def purge(self, asset_id: str) -> int:
    """Delete a deleted asset's objects, then its row. Idempotent; absent objects are fine."""
    return purge_asset(self.app.services, asset_id)


@shared_task(name="upkeep.sweep", bind=True)
def sweep(self) -> dict:
    """Re-send jobs left queued (the broker was down when they were accepted) or whose run
    stopped beating (its worker was killed), and purge deleted assets whose purge message
    was lost. Bounded per run; safe to run twice."""
    services = self.app.services
    # A job silent for MEDIAMILL_JOB_STALE_SECONDS, queued but never started (its message
    # never reached the broker) or running without a heartbeat, is sent again. A duplicate
    # of a message still waiting in a backlog is harmless: start_job skips it.
    stale = timedelta(seconds=services.settings.job_stale_seconds)
    with services.db.session() as session:
        jobs = assets.stale_queued(session, stale, SEND_BATCH)
        jobs += assets.stale_running(session, stale, SEND_BATCH)
    enqueue(self.app, jobs)
    return {"resent": len(jobs), "purged": _purge_deleted(services),
            "abandoned": _abort_abandoned(services)}


def _purge_deleted(services: Services) -> int:
    cutoff = utcnow() - timedelta(seconds=10)
    with services.db.session() as session:
        ids = list(session.scalars(
            select(Asset.id).where(Asset.deleted_at < cutoff).limit(PURGE_BATCH)
        ))
    for asset_id in ids:
        purge_asset(services, asset_id)
    return len(ids)


def _abort_abandoned(services: Services) -> int:
    """Free the parts of direct uploads left open for a day (the browser went away)."""
    cutoff = utcnow() - ABANDONED_AFTER
    with services.db.session() as session:
        stale = list(session.scalars(
            select(DirectUpload).where(DirectUpload.status == "open",
                                       DirectUpload.created_at < cutoff).limit(PURGE_BATCH)
        ))
        for upload in stale:
            with contextlib.suppress(FileNotFoundError):  # already gone from the store
                services.storage.abort_multipart(upload.key, upload.storage_upload_id)
            upload.status = "aborted"
    return len(stale)


def purge_asset(services: Services, asset_id: str) -> int:
    """Remove the objects of a deleted asset, then its row; return the objects removed."""
    count = services.storage.delete_prefix(f"assets/{asset_id}")
    with services.db.session() as session:
        session.execute(delete(Asset).where(Asset.id == asset_id, Asset.deleted_at.is_not(None)))
    return count
