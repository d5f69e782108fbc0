"""tasks.pipeline's side-by-side uploads of a job's outputs."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from config.logging import context as log_context
from tasks import pipeline

log = logging.getLogger("tests.store")


class Storage:
    """Records what each upload saw; `fail` names a file whose upload raises."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail, self.seen, self.lock = fail, [], threading.Lock()

    def upload_file(self, key: str, path: Path, content_type: str) -> None:
        if path.name == self.fail:
            raise OSError("storage refused")
        time.sleep(0.05)  # long enough for the failure to come first
        log.info("stored %s", key)
        with self.lock:
            self.seen.append((path.name, log_context.get()))


def outputs(tmp_path: Path, count: int) -> list:
    files = []
    for n in range(count):
        path = tmp_path / f"out_{n}.webp"
        path.write_bytes(b"x" * (n + 1))
        files.append((path.name, path, "image/webp", {"width": n}))
    return files


def test_every_upload_logs_with_the_jobs_ids_and_results_keep_order(tmp_path):
    storage = Storage()
    log_context.set({"asset_id": "a1", "job_id": "j1"})
    try:
        stored = pipeline._store_all(SimpleNamespace(storage=storage), "a1",
                                     outputs(tmp_path, 8))
    finally:
        log_context.set(None)
    assert [s["name"] for s in stored] == [f"out_{n}.webp" for n in range(8)]
    assert [s["size"] for s in stored] == list(range(1, 9))
    assert len(storage.seen) == 8
    assert all(ctx == {"asset_id": "a1", "job_id": "j1"} for _, ctx in storage.seen)


def test_a_failed_upload_raises_and_the_queued_ones_are_not_started(tmp_path):
    storage = Storage(fail="out_0.webp")
    with pytest.raises(OSError, match="storage refused"):
        pipeline._store_all(SimpleNamespace(storage=storage), "a1", outputs(tmp_path, 12))
    # Four threads: the three already running finish; the eight still queued never start.
    assert len(storage.seen) <= 4


def test_orphaned_work_folders_go_and_live_ones_stay(tmp_path, monkeypatch):
    """A killed job's folder (named after its process) goes as soon as that process is
    gone; a running job's stays, and so does an unnamed folder until it is old."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "30"])
    try:
        dead = tmp_path / f"mediamill-{ended.pid}-a1"
        live = tmp_path / f"mediamill-{running.pid}-b2"
        mine = tmp_path / f"mediamill-{os.getpid()}-c3"  # this process is only starting
        fresh, old = tmp_path / "mediamill-x1", tmp_path / "mediamill-x2"
        other = tmp_path / f"other-{ended.pid}"
        for folder in (dead, live, mine, fresh, old, other):
            (folder / "out").mkdir(parents=True)
            (folder / "original").write_bytes(b"x" * 1000)
        os.utime(old, (time.time() - pipeline.ORPHAN_AGE - 60,) * 2)
        assert Path(tempfile.mkdtemp(prefix=pipeline.temp_prefix())).name.startswith(
            f"mediamill-{os.getpid()}-")
        pipeline.remove_orphaned_temp()
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {live.name, fresh.name, other.name}
    finally:
        running.kill()
        running.wait()
