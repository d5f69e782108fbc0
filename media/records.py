"""Durable records (SQLAlchemy 2): tenants, API keys, assets, jobs, idempotency keys.

The schema is owned by the Alembic migrations in media/migrations; `Database.upgrade()`
brings any database up to date and is safe to call from several processes at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

MIGRATIONS = Path(__file__).with_name("migrations")


def new_id() -> str:
    """A random 32-hex-digit id; never derived from user input."""
    return uuid.uuid4().hex


def asset_prefix(asset_id: str) -> str:
    """Where every object of an asset is stored; deleting it removes them all."""
    return f"assets/{asset_id}"


def original_key(asset_id: str) -> str:
    return f"{asset_prefix(asset_id)}/original"


def output_key(asset_id: str, filename: str) -> str:
    """A derivative's fixed key: a re-run overwrites rather than duplicates."""
    return f"{asset_prefix(asset_id)}/{filename}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def after_commit(session: Session, action) -> None:
    """Run `action()` after this session's transaction commits (never if it rolls back):
    messages and notifications about rows must not leave before the rows exist."""
    session.info.setdefault("after_commit", []).append(action)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (Index("ix_assets_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    kind: Mapped[str] = mapped_column(String(8))
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    # The base URL the asset was uploaded through ("the request host"): links that workers
    # put in events and webhooks point there, not at the worker's own host and port.
    public_url: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict] = mapped_column(default=dict)
    seq: Mapped[int] = mapped_column(Integer, default=0)  # last event's sequence number
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None, index=True)

    jobs: Mapped[list[Job]] = relationship(
        back_populates="asset", order_by="Job.kind", cascade="all, delete-orphan",
        passive_deletes=True,
    )

    @property
    def original_key(self) -> str:
        return original_key(self.id)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("asset_id", "kind", name="uq_jobs_asset_kind"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    outputs: Mapped[list] = mapped_column(default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    # While queued: not before this does the sweep send the job again (None: once it has
    # been queued for MEDIAMILL_JOB_STALE_SECONDS).
    resend_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    asset: Mapped[Asset] = relationship(back_populates="jobs")


class AssetEvent(Base):
    """One change of an asset, in order: the live stream replays these, and those with a
    webhook `type` are the outbox their deliveries are made from."""

    __tablename__ = "asset_events"
    __table_args__ = (UniqueConstraint("asset_id", "seq", name="uq_asset_events_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "state" or "progress"
    type: Mapped[str | None] = mapped_column(String(64), default=None)
    data: Mapped[dict] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """A tenant's subscription: events of the listed types go to `url`."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """One event to one URL, and every attempt to deliver it."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(String(64))  # webhook-id, the same on retries
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    asset_id: Mapped[str] = mapped_column(String(32), index=True)
    webhook_id: Mapped[str | None] = mapped_column(String(32), default=None)
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent each time
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[list] = mapped_column(default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    # A manual redelivery asked for and not yet logged: at or before the start of the claim
    # that sends it, or later (the running claim's end) when asked during an attempt.
    redeliver_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    asset_id: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DirectUpload(Base):
    """A direct-to-storage multipart upload (`POST /api/v1/uploads`) until it becomes an
    asset; `storage_upload_id` is the store's own id (S3's UploadId)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    asset_id: Mapped[str] = mapped_column(String(32), default=new_id)
    storage_upload_id: Mapped[str] = mapped_column(String(1024))
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255))  # as claimed; sniffed at complete
    size: Mapped[int] = mapped_column(BigInteger)
    part_size: Mapped[int] = mapped_column(BigInteger)
    part_count: Mapped[int] = mapped_column(Integer)
    # open|completing|completed|aborted
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)  # left open (since)

    @property
    def key(self) -> str:
        return original_key(self.asset_id)


class Database:
    """An engine made lazily in each process (never shared across fork) and its sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engines: dict[bool, Engine] = {}
        self._pid = 0

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        return self._engine(read_only=False)

    def _engine(self, read_only: bool) -> Engine:
        if self._pid != os.getpid():
            self._engines, self._pid = {}, os.getpid()
        if not self.is_sqlite:
            read_only = False  # one pool serves both on PostgreSQL
        if read_only not in self._engines:
            self._engines[read_only] = self._connect(read_only)
        return self._engines[read_only]

    def _connect(self, read_only: bool) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        database = make_url(self.url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        # Writers take the write lock when a transaction begins, so two processes that read
        # and then write wait for each other instead of failing with "database is locked";
        # readers begin deferred and, with WAL, never wait for a writer.
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine

    @contextlib.contextmanager
    def session(self, read_only: bool = False) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error; actions
        queued with `after_commit` run once the commit has succeeded. A `read_only` session
        must not write (on SQLite it does not take the write lock)."""
        with Session(self._engine(read_only), expire_on_commit=False) as session:
            with session.begin():
                yield session
            for action in session.info.pop("after_commit", []):
                _run_after_commit(action)

    def check(self) -> None:
        """Raise unless the database answers a query."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def upgrade(self) -> None:
        """Run every pending migration; concurrent callers wait for each other."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator:
        if self.is_sqlite:
            database = make_url(self.url).database or "mediamill"
            lock_path = Path(f"{database}.migrate-lock")
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "w") as lock, self.engine.connect() as conn:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield conn
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727274)"))
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727274)"))
                conn.commit()

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines = {}


def _run_after_commit(action) -> None:
    """Notifications after a commit are best effort: each has a database-backed fallback
    (beat dispatches deliveries, streams poll), so one failing must not stop the others or
    fail the work that was just committed."""
    try:
        action()
    except Exception:  # broker or Redis down: logged, the fallback picks it up
        logging.getLogger(__name__).warning("after-commit action failed", exc_info=True)


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook issues BEGIN itself
    cursor = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON",
                   "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
