"""What the bench scripts share: paths, logging, the subprocesses a run starts (moto_server,
or the Procfile's processes under honcho) and their cleanup, waiting, and a local webhook
receiver. Imported by the scripts (`from common import ...`); not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}
PROCESSES = ("web", "thumbnails", "metadata", "webhooks", "beat")

_RAM_DIRS: list[Path] = []


def use_moto_credentials() -> None:
    """Default the AWS variables to moto's test values, keeping any already set; idempotent."""
    os.environ.update({k: os.environ.get(k, v) for k, v in AWS.items()})


def log(message: str) -> None:
    """One timestamped line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback TCP port that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """`predicate()`'s first truthy value, polled every 0.1 s (exceptions count as not yet);
    RuntimeError on timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}")
        with contextlib.suppress(Exception):
            if value := predicate():
                return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 within 2 s."""
    from urllib.request import urlopen

    with urlopen(url, timeout=2) as response:
        return response.status == 200


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _unit = line.split()
                out[name.rstrip(":")] = int(value) * 1024
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (inclusive method); the value itself when there is only one."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


class Processes:
    """Subprocesses this script started, each in its own session; all stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, **kwargs) -> subprocess.Popen:
        """Start `argv` with stdout and stderr to `logfile`, and remember it."""
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        """SIGTERM each process group, newest first, then SIGKILL what is left; idempotent."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # its own group: gunicorn's workers
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"{name} did not stop on SIGTERM; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            # whatever the group left behind (a worker whose master died first)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


def ram_dir(tmp: Path) -> Path:
    """A new directory on tmpfs (/dev/shm), removed by `remove_ram_dirs`; under `tmp` if
    there is no tmpfs."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        ram = Path(tempfile.mkdtemp(prefix="mediamill-bench-moto-", dir=shm))
        _RAM_DIRS.append(ram)
        return ram
    (tmp / "moto").mkdir()
    return tmp / "moto"


def remove_ram_dirs() -> None:
    """Remove every directory `ram_dir` made; idempotent."""
    for ram in _RAM_DIRS:
        shutil.rmtree(ram, ignore_errors=True)


class Moto(NamedTuple):
    """A started moto_server (S3): its process, endpoint URL and spool directory."""

    proc: subprocess.Popen
    endpoint: str
    spool: Path

    def wait(self) -> None:
        """Return once it answers, within 30 s."""
        wait_for(lambda: http_ok(self.endpoint + "/moto-api/"), 30, "moto_server", self.proc)


def start_moto(tmp: Path, procs: Processes) -> Moto:
    """moto_server on a free loopback port, not yet waited for. It spools object data over
    ~5 MiB to temp files: those go to tmpfs, so that disk writeback adds no noise."""
    port, spool = free_port(), ram_dir(tmp)
    proc = procs.start("moto_server", [str(BIN / "moto_server"), "-H", "127.0.0.1",
                                       "-p", str(port)], tmp / "moto.log",
                       env={**os.environ, "TMPDIR": str(spool)})
    return Moto(proc, f"http://127.0.0.1:{port}", spool)


def run_guarded(run, args, prefix: str, alarm: int, tails: tuple[str, ...] = ()) -> int:
    """`run(args, tmp, procs)` under an alarm of `alarm` seconds, SIGTERM and SIGHUP; 2 on
    error, after the tails of the logs named in `tails`. Whatever it started or wrote is
    removed on the way out, except `tmp` with `args.keep`."""

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(alarm)  # a hard stop for the whole run: setup, the rounds, cleanup margin
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes()
    try:
        return run(args, tmp, procs)
    except Exception as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        for name in tails:
            with contextlib.suppress(OSError):
                sys.stderr.write(f"--- {name} (tail) ---\n{(tmp / name).read_text()[-3000:]}\n")
        return 2
    finally:
        signal.alarm(0)
        procs.stop_all()
        remove_ram_dirs()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --- the whole service under honcho, with a webhook receiver ---------------------------


class Receiver:
    """Records when each (asset id, event type) first arrives; answers 200."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                now = time.monotonic()
                event = json.loads(body)
                key = (event["data"].get("id", ""), event["type"])
                with receiver.lock:
                    receiver.count += 1
                    receiver.arrivals.setdefault(key, now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def jpeg(i: int) -> bytes:
    """A small 640x480 JPEG whose colour depends on `i`."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (640, 480), (i % 256, 120, 60)).save(out, "JPEG", quality=85)
    return out.getvalue()


def start_stack(tmp: Path, procs: Processes, web_port: int,
                processes=PROCESSES) -> tuple[dict, str, str]:
    """Release, a key, then the Procfile's `processes` under honcho; (env, key, secret)."""
    import requests

    redis_port = free_port()
    procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"], tmp / "redis.log")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
           "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "MEDIAMILL_STORAGE_URL": f"file://{tmp / 'storage'}",
           "MEDIAMILL_SECRET_KEY": "bench-secret-key-0123456789abcdef",
           "MEDIAMILL_INSTANCE_DIR": str(tmp / "instance"),
           "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1", "PORT": str(web_port)}
    subprocess.run(["flask", "--app", "web", "release"], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    issued = subprocess.run(["flask", "--app", "web", "create-api-key", "bench"], env=env,
                            cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    tenant = json.loads(issued.stdout.strip().splitlines()[-1])
    procs.start("honcho", ["honcho", "start", "-f", "Procfile", "-p", str(web_port),
                           *processes], tmp / "honcho.log", env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: requests.get(f"{base}/readyz", timeout=2).ok, 90, "web /readyz")
    time.sleep(3)  # workers finish booting
    return env, tenant["api_key"], tenant["webhook_secret"]


class Stack(NamedTuple):
    """A running service: its base URL and web port, environment, API key, webhook secret,
    and the receiver subscribed to its asset.completed webhooks."""

    base: str
    port: int
    env: dict
    key: str
    secret: str
    receiver: Receiver


@contextlib.contextmanager
def run_stack(processes=PROCESSES):
    """The Procfile's `processes` (see `start_stack`) with a `Receiver` subscribed to
    asset.completed; yields a `Stack`, then stops and removes everything."""
    import requests

    procs, receiver = Processes(), Receiver()
    with tempfile.TemporaryDirectory(prefix="mediamill-bench-") as tmp_name:
        try:
            port = free_port()
            env, key, secret = start_stack(Path(tmp_name), procs, port, processes)
            base = f"http://127.0.0.1:{port}"
            requests.post(f"{base}/api/v1/webhooks", headers={"Authorization": f"Bearer {key}"},
                          json={"url": receiver.url, "events": ["asset.completed"]}, timeout=10)
            yield Stack(base, port, env, key, secret, receiver)
        finally:
            procs.stop_all()
            receiver.server.shutdown()


def post_asset(base: str, key: str, data: bytes, name: str, **fields) -> dict:
    """POST `data` as a new asset named `name`; the 202's JSON."""
    import requests

    answer = requests.post(f"{base}/api/v1/assets", headers={"Authorization": f"Bearer {key}"},
                           files={"file": (name, data)}, data=fields, timeout=30)
    answer.raise_for_status()
    return answer.json()
