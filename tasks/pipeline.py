"""Running one job: load by id, fetch the original, call media, store outputs, settle.

Every processing task is a thin wrapper around `run_job`. Permanent problems (MediaError)
fail the job with their sentence and are not retried; transient ones (storage) are retried
with backoff and jitter; anything else fails the job with a generic sentence and is raised
so the worker logs it.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from config.logging import context as log_context
from media import assets
from media.errors import Cancelled, MediaError, TransientError
from media.records import asset_prefix, original_key, output_key
from media.services import Services

log = logging.getLogger(__name__)

TASKS = {"metadata": "metadata.extract", "thumbnails": "thumbnails.render",
         "video": "video.transcode"}


@dataclass
class Context:
    """What a job's work function gets: the original on disk (unless the job reads it from
    storage itself) and where to put outputs."""

    asset_id: str
    kind: str
    sha256: str
    src: Path
    out_dir: Path
    services: Services
    report: Callable[[float], None]
    # Set once the asset is deleted while the job runs: long work (a transcode) stops.
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Result:
    """What a job's work function returns."""

    files: list = field(default_factory=list)  # (name, path, content_type, extra fields)
    meta: dict | None = None


class JobTask(Task):
    """Base for processing tasks: crash-safe delivery and a readable failure, always."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (TransientError,)
    retry_backoff = 5
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8
    typing = False

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, TransientError):
            reason = ("Storage could not be reached after several retries; reprocess the "
                      "asset once storage is back.")
        else:
            reason = (f"Processing failed unexpectedly ({type(exc).__name__}); reprocess the "
                      f"asset, and report task {task_id} if it happens again.")
        _fail(self.app.services, args[0], reason)


def enqueue(app, jobs: Iterable) -> None:
    """Send one task per job, by name; routing picks the queue. Call after commit."""
    for job in jobs:
        app.send_task(TASKS[job.kind], args=[job.id])


def run_job(task: Task, job_id: str, work: Callable[[Context], Result],
            fetch: Callable[[str], bool] = lambda kind: True) -> str:
    """Run `work` for a job. Idempotent: outputs go to fixed keys and replace a prior run.
    The original is downloaded to `ctx.src` first if `fetch(kind)`; otherwise `work`
    reads what it needs through `Storage.source`."""
    services: Services = task.app.services
    log_context.set({"job_id": job_id})
    with services.db.session() as session:
        job = assets.start_job(session, job_id, task.request.hostname or "eager",
                               task.request.id or "eager", _stale(services), services.outbox)
        if job is None:
            return "skipped"
        asset_id, kind, sha256 = job.asset_id, job.asset.kind, job.asset.sha256
    log_context.set({"asset_id": asset_id, "job_id": job_id})
    cancelled = threading.Event()
    with (work_folder() as tmp,
          Heartbeat(services, job_id, task.request.id or "eager", cancelled)):
        src, out_dir = Path(tmp) / "original", Path(tmp) / "out"
        out_dir.mkdir()
        try:
            if fetch(kind):
                services.storage.download(original_key(asset_id), src)
            result = work(Context(asset_id, kind, sha256, src, out_dir, services,
                                  _progress_writer(services, job_id), cancelled))
        except Cancelled:
            log.info("job %s stopped: its asset was deleted", job_id)
            return "discarded"
        except FileNotFoundError:
            return _fail(services, job_id, "The original file is missing from storage; "
                                           "upload it again.")
        except MediaError as exc:
            return _fail(services, job_id, str(exc))
        except SoftTimeLimitExceeded:
            return _fail(services, job_id, "Processing took longer than the time limit and "
                                           "was stopped; the file may be too large or complex.")
        outputs = _store_all(services, asset_id, result.files)
    with services.db.session() as session:
        asset = assets.complete_job(session, job_id, outputs, result.meta, services.outbox)
        gone = asset is None or asset.deleted_at is not None
    if gone:  # deleted while we worked: do not leave our outputs behind
        services.storage.delete_prefix(asset_prefix(asset_id))
        return "discarded"
    return "completed"


class Heartbeat(threading.Thread):
    """Marks the job alive six times per MEDIAMILL_JOB_STALE_SECONDS while it runs, so
    beat's sweep can tell a long transcode from one whose worker was killed."""

    def __init__(self, services: Services, job_id: str, task_id: str,
                 cancelled: threading.Event | None = None) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.services, self.job_id, self.task_id = services, job_id, task_id
        self.stopped = threading.Event()
        self.cancelled = cancelled or threading.Event()

    def run(self) -> None:
        every = _stale(self.services).total_seconds() / 6
        while not self.stopped.wait(every):
            try:
                with self.services.db.session() as session:
                    if not assets.beat(session, self.job_id, self.task_id):
                        self.cancelled.set()  # the asset was deleted: stop the work
            except SQLAlchemyError:  # a missed beat is retried next time; never kill the job
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()


def _stale(services: Services) -> timedelta:
    return timedelta(seconds=services.settings.job_stale_seconds)


def _store_all(services: Services, asset_id: str, files: list) -> list[dict]:
    """Upload the outputs side by side, in order: each is one or more round trips to
    storage (a video's renditions and posters: ~20 % faster than one after the other)."""
    context = contextvars.copy_context()  # each upload logs with this job's ids
    with ThreadPoolExecutor(max_workers=4) as pool:  # map cancels the queued on a failure
        return list(pool.map(
            lambda item: context.copy().run(_store, services, asset_id, *item), files))


def _store(services: Services, asset_id: str, name: str, path: Path, content_type: str,
           extra: dict) -> dict:
    key = output_key(asset_id, path.name)
    services.storage.upload_file(key, path, content_type)
    return {"name": name, "content_type": content_type, "size": path.stat().st_size,
            "key": key, **extra}


def _fail(services: Services, job_id: str, reason: str) -> str:
    log.info("job %s failed: %s", job_id, reason)
    with services.db.session() as session:
        assets.fail_job(session, job_id, reason, services.outbox)
    return "failed"


def _progress_writer(services: Services, job_id: str, every: float = 1.0) -> Callable:
    """A callback that records progress at most once a second and only upwards."""
    last = {"at": 0.0, "value": 0.0}

    def report(value: float) -> None:
        now = time.monotonic()
        if now - last["at"] < every or value <= last["value"]:
            return
        last.update(at=now, value=value)
        with services.db.session() as session:
            assets.set_progress(session, job_id, min(value, 0.99), services.outbox)

    return report


TEMP_PREFIX = "mediamill-"
LOCK_NAME = ".lock"
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
ORPHAN_AGE = 6 * 3600  # seconds, for a folder without a lock file (made by an older version)


@contextlib.contextmanager
def work_folder() -> Iterator[Path]:
    """A job's own folder under $TMPDIR (`mediamill-...`), removed at the end. The job holds
    an exclusive flock on its `.lock` file throughout; the kernel drops it when the process
    dies, however it dies, which is how `remove_orphaned_temp` tells a killed job's folder
    from a running one, across containers sharing a TMPDIR too."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        lock = open(path / LOCK_NAME, "wb")  # noqa: SIM115 (held until the folder is gone)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.fstat(lock.fileno()).st_nlink:  # not swept in the instant before the lock
            break
        lock.close()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        lock.close()
        with contextlib.suppress(OSError):  # NFS keeps an open, unlinked .lock until here
            path.rmdir()


def remove_orphaned_temp() -> None:
    """Remove the work folders (the original, possibly GBs, and the outputs) of jobs whose
    process was killed: those whose lock no process holds; a folder without a lock file
    once it is ORPHAN_AGE old. Only this user's folders, and only a regular `.lock` is
    opened (a FIFO planted there would hang the worker's start). TMPDIR should be local to
    the machine, as it is by default; a shared one needs locks that work across machines
    (NFS with its lock manager does; `local_lock` or `nolock` mounts do not)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            info = folder.lstat()
        except OSError:  # removed meanwhile
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        try:
            fd = os.open(folder / LOCK_NAME, _LOCK_FLAGS)  # for writing: NFS locks need it
        except FileNotFoundError:  # an older version's folder, or one made this instant
            if time.time() - info.st_mtime > ORPHAN_AGE:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        except OSError as exc:
            log.warning("work folder %s left alone: %s", folder, exc)
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a running job
            continue
        except OSError as exc:  # no locks here (ENOLCK): nothing can be told apart
            log.warning("work folder %s left alone: %s", folder, exc)
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)  # still locked: no job can take it
        finally:
            os.close(fd)
