"""tasks.pipeline's side-by-side uploads of a job's outputs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from PIL import Image

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


HOLD = """
import sys, time
from tasks import pipeline
with pipeline.work_folder() as folder:
    print(folder, flush=True)
    time.sleep(60)
"""


def test_orphaned_work_folders_go_and_live_ones_stay(tmp_path):
    """A job's folder stays while its process lives, and goes at the next sweep once the
    process is killed: the lock says so, whatever the pid means in this namespace. A
    folder without a lock file goes once it is old."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    jobs = [subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True,
                             env=env, cwd=Path(__file__).parents[2]) for _ in range(2)]
    try:
        live, killed = (Path(job.stdout.readline().strip()) for job in jobs)
        assert live.parent == killed.parent == tmp_path
        (killed / "original").write_bytes(b"x" * 1000)
        jobs[1].kill()
        jobs[1].wait()
        fresh, old = tmp_path / "mediamill-x1", tmp_path / "mediamill-x2"
        other, fifo, link = tmp_path / "other", tmp_path / "mediamill-f", tmp_path / "mediamill-l"
        for folder in (fresh, old, other, fifo, link):
            (folder / "out").mkdir(parents=True)
        os.utime(old, (time.time() - pipeline.ORPHAN_AGE - 60,) * 2)
        os.mkfifo(fifo / pipeline.LOCK_NAME)  # planted: opening it must not hang the worker
        (link / pipeline.LOCK_NAME).symlink_to(killed / pipeline.LOCK_NAME)
        with mock.patch.object(tempfile, "tempdir", str(tmp_path)):
            pipeline.remove_orphaned_temp()
        assert {p.name for p in tmp_path.iterdir()} == {live.name, fresh.name, other.name,
                                                        fifo.name, link.name}
    finally:
        for job in jobs:
            job.kill()
            job.wait()


def test_a_work_folder_is_removed_at_the_end_and_never_shared(tmp_path):
    with mock.patch.object(tempfile, "tempdir", str(tmp_path)):
        with pipeline.work_folder() as one, pipeline.work_folder() as two:
            assert one != two and (one / pipeline.LOCK_NAME).exists()
            pipeline.remove_orphaned_temp()  # both held, here in this very process
            assert one.exists() and two.exists()
        assert not any(tmp_path.iterdir())


def _video_context(tmp_path: Path, storage, size: str = "640x360", seconds: float = 2,
                   boxes: tuple[int, ...] = (256,)) -> pipeline.Context:
    """A thumbnails job's context for a clip stored in `storage` as asset a1."""
    import subprocess

    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True,
                   timeout=60)
    storage.upload_file("assets/a1/original", clip, "video/mp4")
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    settings = SimpleNamespace(max_image_pixels=100_000_000, thumbnail_boxes=boxes,
                               thumbnail_formats=("jpeg",), thumbnail_animated=False,
                               thumbnail_quality=(("webp", 80), ("jpeg", 85), ("avif", 60)))
    return pipeline.Context("a1", "video", "", work / "original", work / "out",
                            SimpleNamespace(storage=storage, settings=settings),
                            lambda p: None)


def test_a_videos_thumbnails_read_its_original_from_storage_not_a_download(tmp_path):
    """A 2 GB video's poster needs a few seconds of it: the thumbnails job asks storage where
    the original is (ffmpeg seeks through it) instead of downloading all of it first, which
    ran past the job's time limit. Images are still downloaded."""
    from media.storage import FileStorage
    from tasks import thumbnails as task

    ctx = _video_context(tmp_path, FileStorage(tmp_path / "storage", "secret"))

    result = task.make_thumbnails(ctx)

    assert not ctx.src.exists()  # the original was never copied to the work folder
    assert [name for name, *_ in result.files] == ["thumb_256.jpg"]
    fetches = {kind: task.downloads_original(kind) for kind in ("image", "video")}
    assert fetches == {"image": True, "video": False}


def test_a_videos_thumbnails_have_the_sizes_of_its_own_frames_in_every_box(tmp_path):
    """Fitted from the video's size, not from a poster already rounded to 2048 px with even
    sides (2048x1152, which gave 1 px too many), and boxes above 2048 are made too."""
    from media.storage import FileStorage
    from media.thumbnails import fit
    from tasks import thumbnails as task

    ctx = _video_context(tmp_path, FileStorage(tmp_path / "storage", "secret"), "2704x1520",
                         seconds=0.4, boxes=(2500, 2048, 256))

    result = task.make_thumbnails(ctx)

    made = {name: (info["width"], info["height"]) for name, _, _, info in result.files}
    assert made == {f"thumb_{box}.jpg": fit((2704, 1520), box) for box in (2500, 2048, 256)}
    assert made["thumb_2048.jpg"] == (2048, 1151)
    for name, path, _, info in result.files:
        with Image.open(path) as image:
            assert image.size == (info["width"], info["height"]), name


def test_a_poster_whose_url_cannot_be_read_is_tried_again_later(tmp_path):
    """ffmpeg's read of the original through its URL failed (storage down, or too busy to
    answer in time): that is a storage fault, retried with backoff like any other, not a
    verdict on the video, and not a reason to download all of it."""
    from media.errors import StorageUnavailable, TransientError
    from media.storage import FileStorage
    from tasks import thumbnails as task

    class DeadLinks(FileStorage):
        def source(self, key: str) -> str:
            super().source(key)
            return f"http://127.0.0.1:9/{key}"  # the discard port: nothing answers

    ctx = _video_context(tmp_path, DeadLinks(tmp_path / "storage", "secret"))

    with pytest.raises(StorageUnavailable) as caught:
        task.make_thumbnails(ctx)

    assert isinstance(caught.value, TransientError)  # JobTask retries these
    assert TransientError in task.render.autoretry_for
    assert not ctx.src.exists()  # nothing downloaded


def test_a_damaged_video_read_through_its_url_fails_at_once_without_a_download(tmp_path):
    """Only a failed read falls back to a download: a verdict on the file (here, bytes that
    are no video) stands, readable, without fetching all of a possibly huge file."""
    import functools
    import http.server
    import threading

    from media.errors import MediaError
    from media.storage import FileStorage
    from tasks import thumbnails as task

    served = tmp_path / "served"
    served.mkdir()
    (served / "original").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Served(FileStorage):
        def source(self, key: str) -> str:
            return f"http://127.0.0.1:{server.server_address[1]}/original"

    storage = Served(tmp_path / "storage", "secret")
    ctx = _video_context(tmp_path, storage)
    try:
        with pytest.raises(MediaError) as caught:
            task.make_thumbnails(ctx)
    finally:
        server.shutdown()

    assert not isinstance(caught.value, task.video.SourceUnreadable)
    assert "could not be read" in str(caught.value) and "storage" not in str(caught.value)
    assert not ctx.src.exists()  # no download of the original
