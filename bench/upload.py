"""Upload benchmark: the service's streaming POST /api/v1/assets against plain boto3.

One run starts its own redis-server, moto_server (S3) and gunicorn (as the Procfile runs the
web process), writes a pseudo-random file that starts with a real MP4 header, and then, in
alternating rounds against the same moto endpoint:

* baseline: boto3 `upload_file` of the file, default TransferConfig;
* service:  the file POSTed as multipart/form-data (streamed from disk, Content-Length
  computed up front) to /api/v1/assets; timed from the first byte sent to the 202.

Each service upload is checked: 202, the recorded size and SHA-256 match the file, and the
stored object has every byte. While it runs, the gunicorn worker's VmRSS is sampled every
50 ms from /proc, and VmHWM (reset before each upload through /proc/PID/clear_refs where
allowed) catches peaks between samples. Times are reported as the best of the rounds, with
the median in parentheses; the throughput target is judged on the best of each.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--rounds 3]

Targets: the worker's RSS rises by less than 64 MiB during any one upload, and the service
moves the file at least 0.8x as fast as boto3. Exit status 0 when both are met, 1 when one
is missed, 2 on error. Everything the run starts or writes is removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from common import (
    AWS,
    BIN,
    ROOT,
    MiB,
    Processes,
    free_port,
    http_ok,
    log,
    proc_status,
    run_guarded,
    start_moto,
    use_moto_credentials,
    wait_for,
)

SAMPLE_MP4 = ROOT.parent / "shared" / "corpus" / "video" / "fire2.mp4"
RSS_TARGET_MIB = 64
RATIO_TARGET = 0.8
# Smallest valid MP4 prefix, used when the corpus is not there: an ftyp box, brand isom.
FALLBACK_HEAD = (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
                 + b"\x00\x00\x00\x08free")

use_moto_credentials()


# --- the test file --------------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    """`size` bytes: a real MP4's first 4 KiB (so sniffing accepts it), then random bytes."""
    head = SAMPLE_MP4.read_bytes()[:4096] if SAMPLE_MP4.is_file() else FALLBACK_HEAD
    head = head[:size]
    with open(path, "wb") as fh:
        fh.write(head)
        left = size - len(head)
        while left:
            n = min(left, 8 * MiB)
            fh.write(os.urandom(n))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())  # no writeback of it during the timed uploads


# --- memory sampling ------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of `pid` (all its threads), or of this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by this process (the client), the web worker and moto_server."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def used(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of `pid`; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
                self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except OSError:
        return -1


def start_profiler(out_dir: Path | None, pid: int, round_no: int, procs: Processes,
                   tmp: Path) -> subprocess.Popen | None:
    """With --profile: py-spy (on PATH) records the worker's stacks during the upload."""
    if out_dir is None:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"service-round{round_no}.txt"
    proc = procs.start("py-spy", [exe, "record", "--pid", str(pid), "--rate", "200",
                                  "--format", "raw", "--threads", "--nonblocking",
                                  "--output", str(out)], tmp / f"py-spy{round_no}.log")
    time.sleep(1.0)  # let it attach
    return proc


def stop_profiler(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def gunicorn_worker(master: int) -> int:
    """The one worker process of the gunicorn `master`."""
    def children() -> list[int]:
        try:
            with open(f"/proc/{master}/task/{master}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN
            return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == master]
    kids = wait_for(children, 30, "the gunicorn worker")
    if len(kids) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {kids}")
    return kids[0]


# --- the two contenders ---------------------------------------------------------------


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def baseline_upload(client, bucket: str, path: Path) -> float:
    key = f"baseline/{uuid.uuid4().hex}"
    start = time.perf_counter()
    client.upload_file(str(path), bucket, key)
    seconds = time.perf_counter() - start
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if size != path.stat().st_size:
        raise RuntimeError(f"baseline: stored {size} bytes, sent {path.stat().st_size}")
    return seconds


def multipart_body(path: Path, filename: str, chunk: int = MiB):
    """(generator of body bytes, content type, content length): the file streamed from
    disk between a preamble and the closing boundary."""
    boundary = f"bench-{uuid.uuid4().hex}"
    preamble = (f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
    closing = f"\r\n--{boundary}--\r\n".encode()
    length = len(preamble) + path.stat().st_size + len(closing)

    def body():
        yield preamble
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                yield data
        yield closing

    return body(), f"multipart/form-data; boundary={boundary}", length


def service_upload(port: int, api_key: str, path: Path, timeout: float) -> tuple[float, dict]:
    body, content_type, length = multipart_body(path, "bench.mp4")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("POST", "/api/v1/assets", body=body, headers={
            "Authorization": f"Bearer {api_key}", "Content-Type": content_type,
            "Content-Length": str(length)})
        response = conn.getresponse()
        payload = response.read()
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    if response.status != 202:
        raise RuntimeError(f"service answered {response.status}: {payload[:500]!r}")
    return seconds, json.loads(payload)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(8 * MiB):
            h.update(data)
    return h.hexdigest()


def check_asset(client, bucket: str, asset: dict, size: int, digest: str) -> None:
    """The service recorded the right size and SHA-256, and stored every byte."""
    if asset.get("size") != size or asset.get("sha256") != digest:
        raise RuntimeError(f"service recorded size {asset.get('size')} sha256 "
                           f"{asset.get('sha256')}; expected {size} {digest}")
    key = f"bench/assets/{asset['id']}/original"
    stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if stored != size:
        raise RuntimeError(f"service stored {stored} bytes under {key}, expected {size}")


def empty_bucket(client, bucket: str) -> None:
    """Free moto's memory and disk between rounds."""
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


# --- main -----------------------------------------------------------------------------


def run(args, tmp: Path, procs: Processes) -> int:
    size = args.size_mib * MiB
    data = tmp / "upload.mp4"
    log(f"writing {args.size_mib} MiB of pseudo-random data to {data}")
    make_file(data, size)
    digest = sha256_of(data)

    redis_port, web_port = free_port(), free_port()
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise RuntimeError("redis-server is not installed")
    (tmp / "redis").mkdir()
    redis_proc = procs.start("redis-server", [
        redis_exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp / "redis")], tmp / "redis.log")
    moto = start_moto(tmp, procs)
    log(f"moto_server spools objects under {moto.spool}")
    endpoint = moto.endpoint

    def redis_ready():
        with socket.create_connection(("127.0.0.1", redis_port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_for(redis_ready, 20, "redis-server", redis_proc)
    moto.wait()
    client = s3_client(endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/15",
        "MEDIAMILL_STORAGE_URL": f"s3://{bucket}/bench",
        "MEDIAMILL_S3_ENDPOINT_URL": endpoint,
        "MEDIAMILL_SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "MEDIAMILL_INSTANCE_DIR": str(tmp / "instance"),
        "MEDIAMILL_MAX_UPLOAD_BYTES": str(size + 64 * MiB),
        "MALLOC_ARENA_MAX": "2",  # as the Procfile's web line sets it
        **AWS,
        **dict(item.split("=", 1) for item in args.web_env),
    }
    out = subprocess.run([str(BIN / "flask"), "--app", "web", "create-api-key", "bench"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"create-api-key failed:\n{out.stdout}{out.stderr}")
    api_key = json.loads(out.stdout.strip().splitlines()[-1])["api_key"]

    gunicorn = procs.start("gunicorn", [
        str(BIN / "gunicorn"), "web:create_app()", "--bind", f"127.0.0.1:{web_port}",
        "--config", "python:config.gunicorn", "--worker-class", args.worker_class,
        "--workers", "1", "--threads", "4", "--timeout", "300"],
        tmp / "gunicorn.log", cwd=ROOT, env=env)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{web_port}/readyz"), 60, "gunicorn /readyz",
             gunicorn)
    worker = gunicorn_worker(gunicorn.pid)
    idle_rss = proc_status(worker)["VmRSS"]

    # Warm-up: one small upload, so the first timed one does not pay for first-use imports
    # and the boto3 client (a server that has taken any upload before is in this state).
    warm = tmp / "warm.mp4"
    make_file(warm, 2 * MiB)
    service_upload(web_port, api_key, warm, 60)
    baseline_upload(client, bucket, warm)
    empty_bucket(client, bucket)
    log(f"gunicorn worker pid {worker}: idle RSS {idle_rss / MiB:.1f} MiB, after warm-up "
        f"{proc_status(worker)['VmRSS'] / MiB:.1f} MiB")

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {"baseline": [], "service": []}
    cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "service": []}
    pids = {"client": None, "web": worker, "moto": moto.proc.pid}
    rss_runs: list[tuple[int, int, int, bool]] = []
    for round_no in range(1, args.rounds + 1):
        meter = CpuMeter(pids)
        seconds = baseline_upload(client, bucket, data)
        times["baseline"].append(seconds)
        cpu["baseline"].append(meter.used())
        log(f"round {round_no}: baseline boto3 upload_file {seconds:.2f}s "
            f"({size / seconds / 1e6:.1f} MB/s), CPU s {_cpu_text(cpu['baseline'][-1])}")
        empty_bucket(client, bucket)

        before = proc_status(worker)["VmRSS"]
        hwm_reset = reset_hwm(worker)
        sampler = RssSampler(worker)
        sampler.start()
        spy = start_profiler(args.profile, worker, round_no, procs, tmp)
        meter = CpuMeter(pids)
        try:
            seconds, asset = service_upload(web_port, api_key, data, args.timeout)
        finally:
            sampler.stop()
            stop_profiler(spy)
        cpu["service"].append(meter.used())
        hwm = proc_status(worker)["VmHWM"]
        check_asset(client, bucket, asset, size, digest)
        peak = max(sampler.peak, hwm) if hwm_reset else sampler.peak
        rss_runs.append((before, sampler.peak, hwm, hwm_reset))
        times["service"].append(seconds)
        log(f"round {round_no}: service POST {seconds:.2f}s ({size / seconds / 1e6:.1f} MB/s), "
            f"worker RSS {before / MiB:.1f} -> peak {peak / MiB:.1f} MiB "
            f"({sampler.samples} samples), CPU s {_cpu_text(cpu['service'][-1])}")
        empty_bucket(client, bucket)

    return report(args, size, times, cpu, rss_runs, idle_rss, (load_before, os.getloadavg()[0]))


def _transfer_text() -> str:
    """The service's TransferConfig for a streamed upload, as media/storage.py makes it."""
    try:
        sys.path.insert(0, str(ROOT))
        from media.storage import _transfer_config

        config = _transfer_config()
        return (f"service parts of {config.multipart_chunksize / MiB:g} MiB, at most "
                f"{config.max_in_memory_upload_chunks} in memory")
    except Exception as exc:  # informative only
        return f"service TransferConfig unknown ({type(exc).__name__})"


def _cpu_text(used: dict[str, float]) -> str:
    return " ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())


def report(args, size: int, times, cpu, rss_runs, idle_rss: int, load) -> int:
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"Upload of {size / MiB:.0f} MiB to moto_server, {args.rounds} alternating rounds; "
          f"best (median) of each; {_transfer_text()}")
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before the rounds, "
          f"{load[1]:.2f} after (client, web and moto_server share these CPUs)")
    print(f"{'contender':<28}{'seconds':>16}{'MB/s':>18}{'ratio':>14}"
          f"{'CPU s client/web/moto':>24}")
    names = {"baseline": "baseline boto3 upload_file", "service": "service POST"}
    for key in ("baseline", "service"):
        b, m = best[key], median[key]
        ratio_b, ratio_m = best["baseline"] / b, median["baseline"] / m
        used = cpu[key][times[key].index(b)]  # of the best run
        print(f"{names[key]:<28}{f'{b:.2f} ({m:.2f})':>16}"
              f"{f'{size / b / 1e6:.1f} ({size / m / 1e6:.1f})':>18}"
              f"{f'{ratio_b:.2f} ({ratio_m:.2f})':>14}"
              f"{'/'.join(f'{v:.1f}' for v in used.values()):>24}")
    print()
    print(f"gunicorn worker RSS when idle, before warm-up: {idle_rss / MiB:.1f} MiB")
    increases = []
    for n, (before, peak, hwm, hwm_ok) in enumerate(rss_runs, 1):
        top = max(peak, hwm) if hwm_ok else peak
        increases.append(top - before)
        hwm_text = f"VmHWM {hwm / MiB:.1f} MiB" if hwm_ok else "VmHWM not resettable"
        print(f"service round {n}: RSS before {before / MiB:.1f} MiB, peak {top / MiB:.1f} MiB "
              f"(sampled {peak / MiB:.1f}, {hwm_text}), increase {(top - before) / MiB:.1f} MiB")
    worst = max(increases)
    ratio = best["baseline"] / best["service"]
    rss_ok = worst < RSS_TARGET_MIB * MiB
    speed_ok = ratio >= RATIO_TARGET
    print()
    print(f"{'PASS' if rss_ok else 'FAIL'}: worst RSS increase {worst / MiB:.1f} MiB "
          f"(target < {RSS_TARGET_MIB} MiB)")
    print(f"{'PASS' if speed_ok else 'FAIL'}: throughput ratio {ratio:.2f} of baseline, "
          f"best of each (target >= {RATIO_TARGET}); median ratio "
          f"{median['baseline'] / median['service']:.2f}")
    return 0 if rss_ok and speed_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds allowed for one upload (default 600)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the worker with py-spy during each service upload, "
                             "collapsed stacks into DIR (slows the worker a little)")
    parser.add_argument("--web-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the web process (repeatable), e.g. "
                             "MALLOC_ARENA_MAX=2")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--worker-class", default="config.gunicorn.ThreadWorker",
                        help="gunicorn worker class (default the Procfile's; gthread: "
                             "gunicorn's own, to compare)")
    args = parser.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        parser.error("--size-mib and --rounds must be at least 1")
    if any("=" not in item for item in args.web_env):
        parser.error("--web-env takes NAME=VALUE")
    return run_guarded(run, args, "mediamill-bench-", int(300 + args.rounds * 2 * args.timeout),
                       ("gunicorn.log", "moto.log"))


if __name__ == "__main__":
    sys.exit(main())
