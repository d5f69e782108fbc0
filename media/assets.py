"""The asset lifecycle on records: create with jobs, run a job, settle the asset, serialise.

Each job moves queued -> processing -> completed | failed. Finishing a job and deciding the
asset's status happen in one transaction with the asset row locked, so two jobs finishing
at once cannot both miss (or both claim) the asset's completion.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from media.events import Outbox
from media.records import Asset, DirectUpload, IdempotencyKey, Job, utcnow
from media.storage import Storage
from media.timefmt import aware, rfc3339

JOB_KINDS = {"image": ("metadata", "thumbnails"), "video": ("metadata", "thumbnails", "video")}
FINAL = ("completed", "failed")
IDEMPOTENCY_TTL = timedelta(hours=24)
HEARTBEAT_STALE = timedelta(minutes=2)  # no heartbeat for this long: its worker is gone
# A still-queued job is sent again at least this often: work whose message the broker lost
# is picked up again within 5 minutes (the contract), with the sweep's 30 s period.
RESEND_AT_LEAST_EVERY = timedelta(minutes=4)


@dataclass(frozen=True)
class Upload:
    """What the web learned about an upload while streaming it to storage."""

    asset_id: str
    kind: str
    content_type: str
    filename: str
    size: int
    sha256: str


def create(session: Session, tenant_id: str, upload: Upload, webhook_url: str | None = None,
           outbox: Outbox | None = None, public_url: str | None = None) -> Asset:
    """Record a stored upload as a queued asset with one queued job per processing kind.
    `public_url`: the base URL it was uploaded through, for links made outside requests."""
    asset = Asset(
        id=upload.asset_id, tenant_id=tenant_id, kind=upload.kind, filename=upload.filename,
        content_type=upload.content_type, size=upload.size, sha256=upload.sha256,
        webhook_url=webhook_url, public_url=public_url, status="queued", meta={},
        jobs=[Job(kind=kind) for kind in JOB_KINDS[upload.kind]],
    )
    session.add(asset)
    session.flush()
    if outbox:
        outbox.state(session, asset)
    return asset


def get(session: Session, tenant_id: str, asset_id: str) -> Asset | None:
    """The tenant's live asset with its jobs, or None (another tenant's id is None too)."""
    return session.scalar(
        select(Asset)
        .options(selectinload(Asset.jobs))
        .where(Asset.id == asset_id, Asset.tenant_id == tenant_id, Asset.deleted_at.is_(None))
    )


def page(session: Session, tenant_id: str, status: str | None, limit: int,
         cursor: str | None) -> tuple[list[Asset], str | None]:
    """Newest first, `limit` at a time; the cursor is opaque and stable under inserts."""
    query = (
        select(Asset)
        .options(selectinload(Asset.jobs))
        .where(Asset.tenant_id == tenant_id, Asset.deleted_at.is_(None))
        .order_by(Asset.created_at.desc(), Asset.id.desc())
        .limit(limit + 1)
    )
    if status:
        query = query.where(Asset.status == status)
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            (Asset.created_at < created_at)
            | ((Asset.created_at == created_at) & (Asset.id < last_id))
        )
    items = list(session.scalars(query))
    more = len(items) > limit
    items = items[:limit]
    return items, encode_cursor(items[-1]) if more else None


def encode_cursor(asset: Asset) -> str:
    raw = f"{aware(asset.created_at).isoformat()}|{asset.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse a cursor; ValueError if it was not made by encode_cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, asset_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), asset_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("malformed cursor") from exc


def start_job(session: Session, job_id: str, worker: str, task_id: str,
              stale: timedelta = HEARTBEAT_STALE, outbox: Outbox | None = None) -> Job | None:
    """Mark a job processing and return it, or None when there is nothing to do: done,
    failed for good, asset deleted, or held by another live run (its heartbeat is fresh).
    The same task redelivered after its worker died starts it again."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINAL:
        return None
    beat = job.heartbeat_at or job.started_at
    if (job.status == "processing" and job.task_id != task_id and beat
            and aware(beat) > utcnow() - stale):
        return None
    asset = session.get(Asset, job.asset_id, with_for_update=True)
    if asset is None or asset.deleted_at is not None:
        return None
    job.status, job.worker, job.task_id = "processing", worker, task_id
    job.started_at = job.heartbeat_at = utcnow()
    job.attempts += 1
    if asset.status == "queued":
        asset.status = "processing"
    asset.updated_at = utcnow()
    if outbox:
        outbox.state(session, asset)
    return job


def beat(session: Session, job_id: str, task_id: str) -> bool:
    """Record that the run `task_id` of a job is alive. False once its asset is deleted
    (or gone): the run may stop, nobody wants its outputs."""
    session.execute(update(Job).where(Job.id == job_id, Job.task_id == task_id,
                                      Job.status == "processing").values(heartbeat_at=utcnow()))
    row = session.execute(select(Asset.deleted_at).join(Job, Job.asset_id == Asset.id)
                          .where(Job.id == job_id)).first()
    return row is not None and row.deleted_at is None


def stale_running(session: Session, stale: timedelta, limit: int) -> list[Job]:
    """Jobs whose run stopped beating (its worker was killed): put back in the queue."""
    jobs = _silent(session, "processing", Job.heartbeat_at, stale, limit)
    for job in jobs:
        job.status, job.queued_at, job.resend_at = "queued", utcnow(), None
    return jobs


def stale_queued(session: Session, older_than: timedelta, limit: int) -> list[Job]:
    """Jobs still queued long after they were (or should have been) sent: their message
    never reached the broker, or was lost with it. A job that is only waiting its turn in a
    long backlog looks the same, so each is sent again only once its age has doubled since
    the last time, and at least every RESEND_AT_LEAST_EVERY: duplicates of a waiting job
    (each skipped by start_job) are spaced out instead of sent at every sweep."""
    now = utcnow()
    jobs = _silent(session, "queued", Job.queued_at, older_than, limit,
                   or_(Job.resend_at.is_(None), Job.resend_at < now))
    for job in jobs:
        job.resend_at = now + min(now - aware(job.queued_at), RESEND_AT_LEAST_EVERY)
    return jobs


def _silent(session: Session, status: str, clock: InstrumentedAttribute, age: timedelta,
            limit: int, *also) -> list[Job]:
    """Live assets' jobs in `status` whose `clock` is older than `age` (and that meet
    `also`), oldest first, locked (rows another sweep holds are skipped)."""
    return list(session.scalars(
        select(Job).join(Asset)
        .where(Job.status == status, clock < utcnow() - age, Asset.deleted_at.is_(None), *also)
        .order_by(clock).limit(limit).with_for_update(skip_locked=True)
    ))


def set_progress(session: Session, job_id: str, progress: float,
                 outbox: Outbox | None = None) -> bool:
    """Raise a running job's progress; never lowers it. True if it changed."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "processing", Job.progress < progress)
        .values(progress=min(progress, 1.0))
    )
    if result.rowcount and outbox:
        job = session.get(Job, job_id)
        outbox.progress(session, session.get(Asset, job.asset_id, with_for_update=True))
    return result.rowcount > 0


def complete_job(session: Session, job_id: str, outputs: list[dict],
                 meta: dict | None = None, outbox: Outbox | None = None) -> Asset | None:
    """Finish a job with its outputs (replacing any earlier run's) and settle the asset.
    Returns the asset, or None when the job and its asset are gone (deleted)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status == "completed":  # a duplicate run finished second: nothing changes
        return session.get(Asset, job.asset_id)
    job.status, job.progress, job.error = "completed", 1.0, None
    job.outputs, job.finished_at = outputs, utcnow()
    asset = session.get(Asset, job.asset_id, with_for_update=True)
    if meta is not None:
        asset.meta = meta
    before = asset.status
    settle(session, asset)
    if outbox:
        event_types = [f"asset.{job.kind}.completed"]
        if asset.status == "completed" != before:
            event_types.append("asset.completed")
        outbox.state(session, asset, *event_types)
    return asset


def fail_job(session: Session, job_id: str, error: str,
             outbox: Outbox | None = None) -> Asset | None:
    """Fail a job for good with a sentence a person can act on, and settle the asset."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINAL:
        return None
    job.status, job.error, job.finished_at = "failed", error, utcnow()
    asset = session.get(Asset, job.asset_id, with_for_update=True)
    before = asset.status
    settle(session, asset)
    if outbox:
        failed_now = asset.status == "failed" != before
        outbox.state(session, asset, "asset.failed" if failed_now else None)
    return asset


def settle(session: Session, asset: Asset) -> Asset:
    """Derive the asset's status from its jobs (caller holds the asset row lock)."""
    statuses = {job.status for job in session.scalars(select(Job).where(Job.asset_id == asset.id))}
    if "failed" in statuses:
        asset.status = "failed"
    elif statuses == {"completed"}:
        asset.status = "completed"
    elif statuses - {"queued"}:
        asset.status = "processing"
    else:
        asset.status = "queued"
    asset.updated_at = utcnow()
    return asset


def reprocess(session: Session, asset: Asset, outbox: Outbox | None = None) -> list[Job]:
    """Put every job of the asset back in the queue; outputs are overwritten by the re-run."""
    for job in asset.jobs:
        job.status, job.progress, job.error, job.outputs = "queued", 0.0, None, []
        job.started_at = job.finished_at = job.resend_at = None
        job.queued_at = utcnow()
    asset.status, asset.updated_at = "queued", utcnow()
    if outbox:
        outbox.state(session, asset)
    return list(asset.jobs)


def mark_deleted(session: Session, asset: Asset) -> None:
    """Hide the asset at once; its objects and row are removed by the purge task."""
    asset.deleted_at = asset.updated_at = utcnow()


# A complete of a direct upload silent this long is taken for dead (its process died, or
# the database failed under it): another complete, an abort or the sweep may take over.
COMPLETING_STALE = timedelta(minutes=2)


def move_upload(session: Session, upload_id: str, sources: tuple[str, ...], status: str, *,
                or_stale: bool = False) -> datetime | None:
    """Move a direct upload to `status` if it is in one of `sources`, in one UPDATE that
    concurrent requests take in turn: the time it moved (a claim's token), or None.
    `or_stale`: also take it from a complete silent for COMPLETING_STALE."""
    now = utcnow()
    taken = DirectUpload.status.in_(sources)
    if or_stale:
        taken = or_(taken, and_(DirectUpload.status == "completing",
                                DirectUpload.completed_at < now - COMPLETING_STALE))
    return _set_upload(session, upload_id, taken, status, now)


def release_upload(session: Session, upload_id: str, claimed: datetime, status: str) -> bool:
    """Move a `completing` upload to `status` if the claim made at `claimed` still holds
    it (no other request took it over): whether it moved."""
    held = and_(DirectUpload.status == "completing", DirectUpload.completed_at == claimed)
    return _set_upload(session, upload_id, held, status, utcnow()) is not None


def _set_upload(session: Session, upload_id: str, condition, status: str,
                now: datetime) -> datetime | None:
    moved = session.execute(update(DirectUpload).where(DirectUpload.id == upload_id, condition)
                            .values(status=status,
                                    completed_at=None if status == "open" else now))
    return now if moved.rowcount == 1 else None


def find_idempotent(session: Session, tenant_id: str, key: str) -> IdempotencyKey | None:
    """A still-valid idempotency record for this tenant and key."""
    record = session.get(IdempotencyKey, (tenant_id, key))
    if record is not None and aware(record.created_at) < utcnow() - IDEMPOTENCY_TTL:
        session.delete(record)
        session.flush()
        return None
    return record


def to_json(asset: Asset, storage: Storage, base_url: str, url_ttl: int = 3600) -> dict:
    """The contract's asset JSON, with signed, expiring links."""

    def link(key: str, filename: str | None = None) -> str:
        return urljoin(base_url + "/", storage.url(key, url_ttl, filename))

    jobs = {job.kind: job for job in asset.jobs}
    derivatives = []
    for kind in ("thumbnails", "video"):
        for out in jobs[kind].outputs if kind in jobs else []:
            derivatives.append({**{k: v for k, v in out.items() if k != "key"},
                                "url": link(out["key"])})
    return {
        "id": asset.id,
        "status": asset.status,
        "kind": asset.kind,
        "filename": asset.filename,
        "content_type": asset.content_type,
        "size": asset.size,
        "sha256": asset.sha256,
        "created_at": rfc3339(asset.created_at),
        "updated_at": rfc3339(asset.updated_at),
        "original_url": link(asset.original_key, asset.filename),
        "jobs": {job.kind: {"status": job.status, "progress": round(job.progress, 4),
                            "error": job.error} for job in asset.jobs},
        "metadata": asset.meta or {},
        "derivatives": derivatives,
    }
