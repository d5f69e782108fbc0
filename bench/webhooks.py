"""Webhook delivery rate, upload-to-webhook latency, and 200 live streams held open.

Runs the Procfile's processes under honcho (gunicorn web, thumbnails, metadata, webhooks,
beat) on a private redis-server, SQLite and file storage, with a local receiver in this
process. Three measurements, each against a baseline from the same run:

1. deliveries/s: N pending deliveries handed to the webhooks pool, vs the same N signed
   POSTs sent straight from 16 threads here (the HTTP floor on this machine);
2. p50/p95 from an upload's 202 to its asset.completed webhook, small JPEGs, one every
   0.2 s;
3. the same latency while 200 server-sent-event streams are held open on the web
   process, as a ratio of (2), plus the web workers' RSS.

    .venv/bin/python bench/webhooks.py [--deliveries 300] [--uploads 40] [--streams 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from common import ROOT, MiB, Receiver, jpeg, log, pct, post_asset, proc_status, run_stack, wait_for


def latencies(base: str, key: str, receiver: Receiver, n: int, tag: str) -> list[float]:
    """Upload n small JPEGs 0.2 s apart; seconds from each 202 to its asset.completed."""
    sent: dict[str, float] = {}
    for i in range(n):
        asset = post_asset(base, key, jpeg(i), f"{tag}{i}.jpg")
        sent[asset["id"]] = time.monotonic()
        time.sleep(0.2)
    wait_for(lambda: all((a, "asset.completed") in receiver.arrivals for a in sent), 300,
             f"{n} asset.completed webhooks ({tag})")
    return [receiver.arrivals[(a, "asset.completed")] - t for a, t in sent.items()]


def delivery_rate(env: dict, receiver: Receiver, n: int, secret: str) -> tuple[float, float]:
    """(service deliveries/s, direct signed POSTs/s) for n events to the receiver."""
    sys.path.insert(0, str(ROOT))
    from config.settings import Settings
    from media import webhooks
    from media.records import Asset, Database, Delivery, Tenant, utcnow

    db = Database(Settings.from_env(env).database_url)
    body = webhooks.body_for("asset.completed", utcnow(), {"id": "bench"})
    with db.session() as session:
        tenant_id = session.query(Tenant).one().id
        asset_id = session.query(Asset.id).first()[0]
        rows = [Delivery(message_id=f"msg_bench_{i}", tenant_id=tenant_id, asset_id=asset_id,
                         url=receiver.url, event_type="asset.completed",
                         body=body.replace('"bench"', f'"bench{i}"'), status="pending",
                         attempts=[], next_attempt_at=utcnow(),
                         dispatched_at=utcnow() - timedelta(minutes=5))
                for i in range(n)]
        session.add_all(rows)
    started = time.monotonic()  # beat's dispatcher (every 5 s) hands them to the pool
    wait_for(lambda: sum((f"bench{i}", "asset.completed") in receiver.arrivals
                         for i in range(n)) == n, 300, f"{n} deliveries")
    first = min(receiver.arrivals[(f"bench{i}", "asset.completed")] for i in range(n))
    last = max(receiver.arrivals[(f"bench{i}", "asset.completed")] for i in range(n))
    service = n / max(last - first, 1e-6)
    log(f"deliveries: first after {first - started:.1f}s (dispatch interval), "
        f"{n} in {last - first:.2f}s")

    def post(i: int) -> None:
        payload = body.replace('"bench"', f'"direct{i}"')
        headers = webhooks.sign(secret, f"msg_direct_{i}", int(time.time()), payload)
        webhooks.send(receiver.url, payload, headers, allow_private=True)

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(post, range(n)))
    direct = n / (time.monotonic() - started)
    return service, direct


class Stream(threading.Thread):
    """One SSE client: counts events until told to stop."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.events = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with requests.get(self.url, headers={"Authorization": f"Bearer {self.key}"},
                              stream=True, timeout=(5, 60)) as answer:
                for line in answer.iter_lines():
                    if line.startswith(b"id:"):
                        self.events += 1
                    if self.stop.is_set():
                        return
        except requests.RequestException as exc:
            if not self.stop.is_set():
                self.error = str(exc)[:100]


def web_rss(port: int) -> float:
    """Total RSS of the gunicorn master and workers bound to `port`, MiB."""
    out = subprocess.run(["pgrep", "-f", f"gunicorn .*:{port} "], capture_output=True,
                         text=True).stdout
    return sum(proc_status(int(pid)).get("VmRSS", 0) for pid in out.split()) / MiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    with run_stack() as stack:
        base, key, receiver = stack.base, stack.key, stack.receiver
        log("warm-up")
        latencies(base, key, receiver, 3, "warm")
        log("delivery rate")
        service_rate, direct_rate = delivery_rate(stack.env, receiver, args.deliveries,
                                                  stack.secret)
        log("latency, idle web")
        idle = latencies(base, key, receiver, args.uploads, "idle")
        rss_before = web_rss(stack.port)
        # A video nobody transcodes (no video pool runs) stays `processing`: its streams
        # stay open for as long as we like.
        with open(ROOT.parent / "shared/corpus/video/example.mp4", "rb") as fh:
            video = post_asset(base, key, fh.read(), "held.mp4")
        url = f"{base}/api/v1/assets/{video['id']}/events"
        streams = [Stream(url, key) for _ in range(args.streams)]
        for stream in streams:
            stream.start()
        wait_for(lambda: sum(s.events > 0 for s in streams) == len(streams), 120,
                 f"{args.streams} streams to get their first event")
        log(f"{args.streams} streams open")
        busy = latencies(base, key, receiver, args.uploads, "busy")
        alive = sum(s.is_alive() and s.error is None for s in streams)
        rss_during = web_rss(stack.port)
        for stream in streams:
            stream.stop.set()
    print(f"\nmediamill webhooks and live status, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'measure':44} {'value':>12} {'baseline':>12} {'ratio':>7}")
    print(f"{'deliveries/s (webhooks pool, 16 threads)':44} {service_rate:12.1f} "
          f"{direct_rate:12.1f} {service_rate / direct_rate:7.2f}")
    p50, p95 = pct(idle, 50), pct(idle, 95)
    b50, b95 = pct(busy, 50), pct(busy, 95)
    print(f"{'upload 202 -> asset.completed p50 (s)':44} {p50:12.3f} {'':>12} {'':>7}")
    print(f"{'upload 202 -> asset.completed p95 (s)':44} {p95:12.3f} {'':>12} {'':>7}")
    print(f"{f'... with {args.streams} SSE streams open, p50 (s)':44} {b50:12.3f} "
          f"{p50:12.3f} {b50 / p50:7.2f}")
    print(f"{f'... with {args.streams} SSE streams open, p95 (s)':44} {b95:12.3f} "
          f"{p95:12.3f} {b95 / p95:7.2f}")
    print(f"{'SSE streams still open after the uploads':44} {alive:12d} {args.streams:12d}")
    print(f"{'web (gunicorn) RSS, MiB':44} {rss_during:12.1f} {rss_before:12.1f} "
          f"{rss_during / rss_before:7.2f}")
    print("baselines: direct signed POSTs from 16 threads in the bench process; the idle "
          "latency; RSS before the streams opened")
    return 0 if alive == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
