"""The shared resources a process needs, built from settings: records, storage, outbox."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import redis
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from config.celery import REDIS_TIMEOUTS
from config.settings import Settings, stop
from media import storage as storage_module
from media.errors import StorageUnavailable
from media.events import CHANNEL, Outbox
from media.records import Asset, Database
from media.storage import FileStorage, Storage

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    """The gist of a start-up failure: the driver's own message, its first line."""
    reason = getattr(exc, "orig", None) or exc
    return (str(reason).strip().splitlines() or [type(reason).__name__])[0]

# Links inside recorded events (webhook bodies, the live stream) must outlive a day of
# webhook retries; 7 days is the longest an S3 presigned URL may live.
EVENT_URL_TTL = 7 * 24 * 3600


@dataclass
class Services:
    """Settings, database, storage and the event outbox for one process (web or worker)."""

    settings: Settings
    db: Database
    storage: Storage
    outbox: Outbox = field(init=False)
    _redis: redis.Redis | None = field(default=None, init=False, repr=False)
    _redis_pid: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(render=self.render, publish=self.publish)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        return cls(settings, db, storage_module.from_settings(settings))

    @property
    def base_url(self) -> str:
        """Where links made outside a request point: MEDIAMILL_PUBLIC_URL, else this host."""
        return self.settings.public_url or f"http://127.0.0.1:{self.settings.port}"

    def asset_base_url(self, asset: Asset) -> str:
        """Where links about `asset` point: MEDIAMILL_PUBLIC_URL, else the host it was
        uploaded through (a worker's own PORT, under honcho, is not the web's)."""
        return self.settings.public_url or asset.public_url or self.base_url

    @property
    def redis(self) -> redis.Redis:
        """One client per process (made after fork) for the live-status channel."""
        if self._redis is None or self._redis_pid != os.getpid():
            self._redis = redis.Redis.from_url(self.settings.redis_url, **REDIS_TIMEOUTS)
            self._redis_pid = os.getpid()
        return self._redis

    def render(self, asset: Asset) -> dict:
        """The asset JSON as events carry it."""
        from media.assets import to_json

        return to_json(asset, self.storage, self.asset_base_url(asset), EVENT_URL_TTL)

    def prepare(self, schema: bool = True, storage: bool = False,
                bucket: bool = True) -> None:
        """At process start: bring the schema up to date and, with `storage`, make sure a
        local storage directory is writable, or that an S3 client can be made from the
        settings and (with `bucket`; `release` creates it) that the bucket exists: one
        HeadBucket, given up after a few seconds, for S3 being down is not a reason to stop.
        If any of it cannot be done, stop the process with one line naming the setting (the
        contract's "one clear line", no traceback)."""
        try:
            if schema:
                self.db.upgrade()
        except (SQLAlchemyError, OSError) as exc:
            url = make_url(self.settings.database_url).render_as_string(hide_password=True)
            stop(f"mediamill: cannot open the database DATABASE_URL={url}: {_first_line(exc)}")
        if storage and isinstance(self.storage, FileStorage):
            try:
                self.storage.check()
            except (OSError, StorageUnavailable) as exc:
                stop(f"mediamill: cannot use MEDIAMILL_STORAGE_URL={self.settings.storage_url}:"
                     f" {_first_line(exc)}")
        elif storage:
            from botocore.exceptions import BotoCoreError

            try:
                self.storage.client  # noqa: B018 - making it checks region and endpoint
            except (BotoCoreError, ValueError) as exc:
                stop("mediamill: cannot use S3 storage with these settings (AWS_DEFAULT_REGION,"
                     f" MEDIAMILL_S3_ENDPOINT_URL, AWS credentials): {_first_line(exc)}")
            if bucket:
                self._check_bucket()

    def _check_bucket(self) -> None:
        """Stop if the bucket does not exist: a mistyped name otherwise answered every upload
        with a 500. S3 being down or refusing HeadBucket (a policy may allow objects only) is
        no reason to stop: /readyz reports it, and work waits for storage to come back."""
        try:
            self.storage.check()
        except FileNotFoundError:
            stop(f"mediamill: the bucket of MEDIAMILL_STORAGE_URL={self.settings.storage_url} "
                 "does not exist: create it, or run `flask --app web release`, which does")
        except Exception as exc:  # unreachable, slow, or not allowed to ask
            log.warning("storage not checked at start (%s): %s", type(exc).__name__,
                        _first_line(exc))

    def publish(self, asset_id: str, seq: int) -> None:
        """Wake live streams of this asset; losing one only delays them to their next poll."""
        try:
            self.redis.publish(CHANNEL.format(asset_id), seq)
        except redis.RedisError as exc:
            log.warning("live-status publish for %s failed: %s", asset_id, exc)
