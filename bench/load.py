"""Load and queue isolation through the whole service, as the Procfile runs it.

1. 500 small JPEG uploads from 8 concurrent clients over HTTP: assets completed per second
   and p50/p95 from each upload's start to its asset.completed webhook.
2. Queue isolation: the p95 of small-image jobs (one upload every 0.3 s) while the video
   queue holds a 20-clip backlog, as a ratio of their p95 on an idle system (target <= 1.5).

    .venv/bin/python bench/load.py [--uploads 500] [--clients 8] [--clips 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from common import ROOT, Receiver, jpeg, log, pct, post_asset, run_stack, wait_for

CLIP = ROOT.parent / "shared/corpus/video/smpte-2997.mp4"  # 10 s of 1080p H.264 + AAC
TARGET = 1.5


def completed(receiver: Receiver, asset_id: str) -> float | None:
    return receiver.arrivals.get((asset_id, "asset.completed"))


def burst(base: str, key: str, receiver: Receiver, n: int, clients: int):
    """n uploads from `clients` threads; (assets/s, latencies from upload start)."""
    started: dict[str, float] = {}

    def one(i: int) -> None:
        t = time.monotonic()
        started[post_asset(base, key, jpeg(i), f"load{i}.jpg")["id"]] = t

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wait_for(lambda: all(completed(receiver, a) for a in started), 900, f"{n} completions")
    last = max(completed(receiver, a) for a in started)
    return n / (last - t0), [completed(receiver, a) - t for a, t in started.items()]


def trickle(base: str, key: str, receiver: Receiver, n: int, tag: str) -> list[float]:
    """n uploads 0.3 s apart; latencies from upload start to asset.completed."""
    started = {}
    for i in range(n):
        t = time.monotonic()
        started[post_asset(base, key, jpeg(i), f"{tag}{i}.jpg")["id"]] = t
        time.sleep(0.3)
    wait_for(lambda: all(completed(receiver, a) for a in started), 600, f"{tag} completions")
    return [completed(receiver, a) - t for a, t in started.items()]


def jobs(base: str, kind: str, status: str) -> int:
    """How many jobs of `kind` are in `status`, from /metrics."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    prefix = f'mediamill_jobs_total{{kind="{kind}",status="{status}"}}'
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return int(float(found[0].split()[-1])) if found else 0


def only_video_waits(base: str) -> bool:
    """The clips' own thumbnail and metadata jobs are done; only the video queue is busy."""
    return all(jobs(base, kind, status) == 0 for kind in ("thumbnails", "metadata")
               for status in ("queued", "processing"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--probes", type=int, default=60)
    args = parser.parse_args()
    with run_stack(("web", "thumbnails", "video", "metadata", "webhooks", "beat")) as stack:
        base, key, receiver = stack.base, stack.key, stack.receiver
        trickle(base, key, receiver, 3, "warm")
        log(f"{args.uploads} uploads from {args.clients} clients")
        rate, burst_lat = burst(base, key, receiver, args.uploads, args.clients)
        log("small images on an idle system")
        idle = trickle(base, key, receiver, args.probes, "idle")
        log(f"{args.clips} clips into the video queue")
        clip = CLIP.read_bytes()
        for i in range(args.clips):
            post_asset(base, key, clip, f"clip{i}.mp4")
        wait_for(lambda: only_video_waits(base), 300, "the clips' other jobs")
        backlog_before = jobs(base, "video", "queued")
        busy = trickle(base, key, receiver, args.probes, "busy")
        backlog_after = jobs(base, "video", "queued")
    ratio = pct(busy, 95) / pct(idle, 95)
    print(f"\nmediamill load, {os.cpu_count()} CPUs (Procfile defaults: thumbnails 2, "
          f"metadata 2, video 1 process), load {os.getloadavg()[0]:.2f}")
    print(f"{'measure':52} {'value':>10}")
    print(f"{f'{args.uploads} uploads, {args.clients} clients: assets completed/s':52} "
          f"{rate:10.1f}")
    print(f"{'  upload start -> asset.completed p50 (s)':52} {pct(burst_lat, 50):10.2f}")
    print(f"{'  upload start -> asset.completed p95 (s)':52} {pct(burst_lat, 95):10.2f}")
    print(f"{'small image p95, idle system (s)':52} {pct(idle, 95):10.3f}")
    print(f"{f'small image p95, {args.clips}-clip video backlog (s)':52} {pct(busy, 95):10.3f}")
    print(f"{'  ratio (target <= 1.5)':52} {ratio:10.2f}")
    print(f"{'  video jobs queued when the probes began / ended':52} "
          f"{f'{backlog_before} / {backlog_after}':>10}")
    print("PASS" if ratio <= TARGET else "FAIL", f"queue isolation: {ratio:.2f} (<= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
