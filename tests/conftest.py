"""Fixtures that run the real parts: a private redis-server, a moto_server subprocess (S3),
a throwaway PostgreSQL database, and Celery worker subprocesses, one per queue."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("MEDIAMILL_CORPUS", ROOT.parent / "shared" / "corpus"))
BIN = Path(sys.executable).parent
QUEUES = ("thumbnails", "video", "metadata", "webhooks")
PG_ADMIN_URL = os.environ.get("MEDIAMILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# boto3 in this process (the web app under test, and assertions) talks to moto_server.
for _name, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                      ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_name, _value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := predicate():
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_all(procs: list[subprocess.Popen]) -> None:
    """Kill processes started in sessions of their own, with all their children, at once.
    For a test's cleanup only: a Celery worker's warm shutdown took about 3 s per stack
    (over 2 min of a run), and each stack's broker is emptied before it starts."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def pytest_configure(config) -> None:
    if not CORPUS.is_dir():  # the tests' real photos and videos: a hard requirement
        raise pytest.UsageError(f"the test corpus is missing at {CORPUS}; check out shared/ "
                                "beside the project or set MEDIAMILL_CORPUS")


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port; yields its base URL (add /N for a db)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make install provides it)")
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}"
    stop(proc)


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    """A redis-server on `port` that keeps nothing on disk, answering when this returns."""
    import redis

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: redis.Redis(port=port).ping(), what="redis-server")
    return proc


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto_server subprocess speaking S3 over HTTP; yields its endpoint URL."""
    exe = BIN / "moto_server"
    if not exe.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import requests

    wait_for(lambda: requests.get(f"{url}/moto-api/", timeout=1).ok, what="moto_server")
    yield url
    stop(proc)


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def pg_admin():
    """A connection URL to a PostgreSQL server that can create databases."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN_URL} ({exc})")
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(pg_admin):
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    name = f"mediamill_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    """A running deployment under test: its settings, environment and Flask app."""

    env: dict
    settings: object
    app: object
    workers: dict
    tmp: Path
    started: list

    def start_worker(self, queue: str, concurrency: int = 1) -> subprocess.Popen:
        """(Re)start the worker of `queue`; stopped with the rest at the end of the test."""
        proc = start_worker(self.env, queue, self.tmp, concurrency)
        self.workers[queue] = proc
        self.started.append(proc)
        return proc

    def client(self):
        return self.app.test_client()

    def create_key(self, name: str) -> str:
        return self.create_tenant(name)["api_key"]

    def create_tenant(self, name: str) -> dict:
        """A new API key for `name`: {"tenant", "api_key", "webhook_secret"}."""
        from media.keys import create_api_key

        with self.app.extensions["mediamill"].db.session() as session:
            return create_api_key(session, name)


def stack_env(tmp: Path, redis_url: str, db: int, database_url: str, storage_url: str,
              s3_endpoint: str | None = None, broker_url: str | None = None) -> dict:
    """The environment a deployment's processes get."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "DATABASE_URL": database_url,
        "REDIS_URL": f"{redis_url}/{db}",
        "MEDIAMILL_STORAGE_URL": storage_url,
        "MEDIAMILL_SECRET_KEY": "test-secret-key-0123456789",
        "MEDIAMILL_INSTANCE_DIR": str(tmp / "instance"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if s3_endpoint:
        env["MEDIAMILL_S3_ENDPOINT_URL"] = s3_endpoint
    if broker_url:
        env["MEDIAMILL_BROKER_URL"] = broker_url
    return env


def start_worker(env: dict, queue: str, log_dir: Path, concurrency: int = 1,
                 extra: tuple = ()) -> subprocess.Popen:
    """One `celery -A tasks worker` consuming only `queue`, as the Procfile runs it."""
    log = open(log_dir / f"worker-{queue}.log", "ab")
    argv = [str(BIN / "celery"), "-A", "tasks", "worker", "-Q", queue, "-n", f"{queue}@%h",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", *extra]
    if queue == "video":
        argv += ["--prefetch-multiplier", "1"]
    if queue == "webhooks":
        argv += ["--pool", "threads"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_workers_ready(env: dict, queues, timeout: float = 60) -> None:
    """Wait until a worker answers ping on each queue's node name."""
    from celery import Celery

    probe = Celery(broker=env.get("MEDIAMILL_BROKER_URL", env["REDIS_URL"]))
    try:
        def ready():
            replies = probe.control.ping(timeout=1.0) or []
            names = {name.split("@")[0] for reply in replies for name in reply}
            return set(queues) <= names

        wait_for(ready, timeout=timeout, interval=0.5, what=f"workers for {queues}")
    finally:
        probe.close()


@pytest.fixture
def make_stack(tmp_path, redis_server, request):
    """Start a deployment: settings for the given database and storage, four workers."""
    started: list[subprocess.Popen] = []
    counter = iter(range(1, 16))

    def make(database_url: str | None = None, storage: str = "file",
             s3_endpoint: str | None = None, broker_url: str | None = None,
             queues=QUEUES, extra_env: dict | None = None, beat: bool = False) -> Stack:
        from config.settings import Settings
        from web import create_app

        tmp = tmp_path / f"stack{len(started)}"
        tmp.mkdir()
        storage_url = (f"s3://{make_bucket(s3_endpoint)}/media" if storage == "s3"
                       else f"file://{tmp / 'storage'}")
        db_url = database_url or f"sqlite:///{tmp / 'mediamill.db'}"
        env = stack_env(tmp, redis_server, next(counter), db_url, storage_url, s3_endpoint,
                        broker_url)
        env.update(extra_env or {})
        settings = Settings.from_env(env)
        app = create_app(settings)  # migrates the schema before the workers start
        app.config["TESTING"] = True
        _flush_broker(settings.broker_url)
        workers = {q: start_worker(env, q, tmp) for q in queues}
        started.extend(workers.values())
        if beat:
            log = open(tmp / "beat.log", "ab")
            started.append(subprocess.Popen(
                [str(BIN / "celery"), "-A", "tasks", "beat", "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_workers_ready(env, queues)
        return Stack(env, settings, app, workers, tmp, started)

    yield make
    kill_all(started)
    for log in tmp_path.glob("stack*/worker-*.log"):
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            sys.stderr.write(f"\n--- {log} ---\n{log.read_text()[-4000:]}\n")


def _flush_broker(url: str) -> None:
    """Start each deployment with empty queues (RabbitMQ's outlive a test run)."""
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).flushdb()
    elif url.startswith("amqp"):
        from kombu import Connection

        with Connection(url) as conn:
            channel = conn.default_channel
            for queue in QUEUES:
                channel.queue_delete(queue)


@pytest.fixture(scope="session")
def amqp_url():
    """The machine's RabbitMQ, if one answers."""
    from kombu import Connection

    url = os.environ.get("MEDIAMILL_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure: no usable RabbitMQ here
        pytest.skip(f"no RabbitMQ server at {url} ({exc})")
    return url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
