"""Upkeep run by beat: re-send silent jobs, purge deleted assets, abort abandoned direct
uploads; bounded work per run."""

import contextlib
from datetime import timedelta

from celery import shared_task
from sqlalchemy import delete, select

from media import assets
from media.records import (
    Asset,
    Delivery,
    DirectUpload,
    IdempotencyKey,
    asset_prefix,
    utcnow,
)
from media.services import Services
from tasks.pipeline import enqueue

PURGE_BATCH = 100
ABANDONED_AFTER = timedelta(hours=24)
PRUNE_BATCH = 1000
DELIVERY_LOG_KEPT = timedelta(days=30)
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
            "abandoned": _abort_abandoned(services), **_prune(services)}


@shared_task(name="upkeep.free_interrupted", bind=True)
def free_interrupted(self) -> int:
    """Free the storage that writes cut off a day ago or more left behind: a web process
    killed mid-upload leaves an unfinished multipart upload (S3 keeps its parts, and bills
    them) or a temporary file. Direct uploads still open are kept. Hourly, from beat."""
    services = self.app.services
    with services.db.session(read_only=True) as session:
        keep = set(session.scalars(select(DirectUpload.storage_upload_id).where(
            DirectUpload.status.in_(("open", "completing")))))
    return services.storage.free_interrupted(utcnow() - ABANDONED_AFTER, keep)


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
    """Free the parts of direct uploads left open for a day (the browser went away), or
    left completing (the process died), and any original a complete joined but could not
    record."""
    cutoff = utcnow() - ABANDONED_AFTER
    with services.db.session(read_only=True) as session:
        stale = list(session.scalars(
            select(DirectUpload).where(DirectUpload.status.in_(("open", "completing")),
                                       DirectUpload.created_at < cutoff).limit(PURGE_BATCH)
        ))
    aborted = 0
    for upload in stale:
        # Taken as a DELETE takes it: never from a complete still running.
        with services.db.session() as session:
            if not assets.move_upload(session, upload.id, ("open",), "aborted",
                                      or_stale=True):
                continue
        with contextlib.suppress(FileNotFoundError):  # already gone from the store
            services.storage.abort_multipart(upload.key, upload.storage_upload_id)
        services.storage.delete_prefix(asset_prefix(upload.asset_id))
        aborted += 1
    return aborted


def _prune(services: Services) -> dict[str, int]:
    """Forget idempotency keys past their 24 h and finished deliveries past 30 days."""
    now = utcnow()
    with services.db.session() as session:
        keys = _delete_some(session, IdempotencyKey, IdempotencyKey.created_at
                            < now - assets.IDEMPOTENCY_TTL)
        done = Delivery.status.in_(("delivered", "failed"))
        logs = _delete_some(session, Delivery, done & (Delivery.created_at
                                                       < now - DELIVERY_LOG_KEPT))
    return {"idempotency_keys": keys, "delivery_logs": logs}


def _delete_some(session, model, condition) -> int:
    """Delete at most PRUNE_BATCH rows matching `condition` (oldest first)."""
    ids = select(model.created_at).where(condition).order_by(model.created_at)
    cutoff = session.scalars(ids.offset(PRUNE_BATCH - 1).limit(1)).first()
    if cutoff is not None:
        condition = condition & (model.created_at <= cutoff)
    return session.execute(delete(model).where(condition)).rowcount


def purge_asset(services: Services, asset_id: str) -> int:
    """Remove the objects of a deleted asset, then its row; return the objects removed."""
    count = services.storage.delete_prefix(asset_prefix(asset_id))
    with services.db.session() as session:
        session.execute(delete(Asset).where(Asset.id == asset_id, Asset.deleted_at.is_not(None)))
    return count
