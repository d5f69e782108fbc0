"""Bad days: a worker killed mid-transcode loses nothing and sends no second event."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from media.records import Job, utcnow
from tests.conftest import start_redis, wait_for, wait_workers_ready
from tests.helpers import auth, jpeg, upload, wait_final
from tests.receiver import Receiver

pytestmark = pytest.mark.integration


def ffmpeg_pids(env: dict) -> set[int]:
    """The ffmpeg processes started by the stack whose environment is `env` (its HOME is
    the test's own folder), not those of anything else running on the machine."""
    out = subprocess.run(["pgrep", "-x", "ffmpeg"], capture_output=True, text=True).stdout
    mine = f"HOME={env['HOME']}".encode()
    pids = set()
    for pid in map(int, out.split()):
        with contextlib.suppress(OSError):
            if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.add(pid)
    return pids


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_20_videos_survive_warm_stop_group_stop_and_sigkill_of_the_video_pool(make_stack,
                                                                             corpus, tmp_path):
    """20 clips in flight while the video pool is stopped three ways, as platforms do:
    SIGTERM to the worker alone (docker stop, systemd): the running transcode finishes;
    SIGTERM to its whole process group (honcho, Heroku): the transcode is put back;
    SIGKILL to the group (OOM killer, kill -9): beat's sweep sends it again;
    SIGKILL to the pool child alone (as a hard time limit does): the job is put back.
    All 20 complete, each with exactly one asset.completed webhook, no ffmpeg is left and
    no work folder (a killed job's original and outputs) stays behind."""
    receiver = Receiver().start()
    try:
        # One ffmpeg thread: a quiet machine transcodes a clip in 1.4 s with two, and a
        # transcode must be caught in progress three times.
        work = tmp_path / "work"  # the workers' TMPDIR
        work.mkdir()
        stack = make_stack(extra_env={"MEDIAMILL_JOB_STALE_SECONDS": "6",
                                      "MEDIAMILL_FFMPEG_THREADS": "1",
                                      "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1",
                                      "TMPDIR": str(work)}, beat=True)
        key = stack.create_key("alice")
        client = stack.client()
        client.post("/api/v1/webhooks", headers=auth(key),
                    json={"url": receiver.url, "events": ["asset.completed"]})
        clip = corpus / "video/chaplin.mp4"  # 9.6 s, 640x360, H.264 + MP3
        ids = [upload(client, key, clip, filename=f"clip{i}.mp4").json["id"] for i in range(20)]
        db = stack.app.extensions["mediamill"].db

        chosen: list[str] = []

        def video_job(job_id=None):
            """The job `job_id`, or a transcode live now (beating within 3 s: not the row a
            stopped worker left behind) that no earlier stop chose."""
            with db.session(read_only=True) as session:
                if job_id:
                    return session.get(Job, job_id)
                return session.scalar(select(Job).where(
                    Job.kind == "video", Job.status == "processing", Job.progress > 0,
                    Job.progress < 0.9, Job.id.not_in(chosen),
                    Job.heartbeat_at > utcnow() - timedelta(seconds=3)))

        def stop(how: str) -> Job:
            """Stop the video pool mid-transcode `how`; return the job it was running."""
            running = wait_for(video_job, timeout=120, interval=0.05,
                               what="a transcode under way")
            chosen.append(running.id)
            children = wait_for(lambda: ffmpeg_pids(stack.env), timeout=20, interval=0.05,
                                what="ffmpeg running")
            victim = stack.workers["video"]
            if how == "kill-child":  # the pool stays up and starts a new child
                child = next(parent for parent in map(_parent, children)
                             if _parent(parent) == victim.pid)  # the video pool's, not another's
                folder = next(Path(os.readlink(fd)).parent for fd in Path(
                    f"/proc/{child}/fd").iterdir() if os.readlink(fd).endswith("/.lock"))
                assert folder.parent == work
                os.kill(child, signal.SIGKILL)
                wait_for(lambda: not folder.exists(), timeout=30,
                         what="the killed child's work folder to be removed")
                assert not children & ffmpeg_pids(stack.env), "ffmpeg outlived its process"
                return running
            if how == "term":
                os.kill(victim.pid, signal.SIGTERM)
            else:
                os.killpg(victim.pid, signal.SIGTERM if how == "term-group" else signal.SIGKILL)
            code = victim.wait(timeout=120)
            if how == "term":
                assert code == 0, f"warm shutdown ended with {code}"
            time.sleep(1)
            assert not children & ffmpeg_pids(stack.env), f"ffmpeg outlived its worker ({how})"
            stack.start_worker("video")
            return running

        finished = stop("term")
        done = video_job(finished.id)
        assert (done.status, done.attempts) == ("completed", 1), "warm stop cut the transcode"
        put_back = stop("term-group")
        killed = stop("kill")
        lost_child = stop("kill-child")
        for asset_id in ids:
            final = wait_final(client, key, asset_id, timeout=300)
            assert final["status"] == "completed", final["jobs"]
        for job in (put_back, killed, lost_child):
            assert video_job(job.id).attempts == 2, "the interrupted transcode ran once only"
        wait_for(lambda: len(receiver.of_type("asset.completed")) >= 20, timeout=60,
                 what="20 asset.completed webhooks")
        time.sleep(2)
        got = Counter(r.json["data"]["id"] for r in receiver.of_type("asset.completed"))
        assert got == Counter(ids)
        assert not list(work.glob("mediamill-*")), "work folders left behind"
    finally:
        receiver.stop()


def test_redis_down_for_10s_during_30_uploads_loses_nothing(make_stack, tmp_path):
    # A Redis of its own, stopped without saving: queued messages die with it.
    from tests.conftest import free_port

    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    try:
        stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), beat=True, extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{port}/0", "MEDIAMILL_JOB_STALE_SECONDS": "5"})
        key = stack.create_key("alice")
        client = stack.client()
        ids = []
        for i in range(30):
            if i == 10:
                redis_proc.terminate()
                redis_proc.wait()
                down_at = time.monotonic()
            if i == 20:
                time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
                redis_proc = start_redis(port, tmp_path)
            image = jpeg(color=(i * 7 % 256, 40, 90))
            answer = upload(client, key, data=image, filename=f"{i}.jpg")
            assert answer.status_code == 202, answer.data[:300]  # accepted, never a 500
            ids.append(answer.json["id"])
        for asset_id in ids:
            assert wait_final(client, key, asset_id, timeout=180)["status"] == "completed"
        assert all(proc.poll() is None for proc in stack.workers.values())
    finally:
        redis_proc.terminate()
        redis_proc.wait()


def test_redis_restart_with_tasks_in_flight_keeps_every_worker_running(make_stack, tmp_path):
    """Celery 5.7.0 exits ("Unrecoverable error: AttributeError ... 'hostname'") when the
    broker goes away while a worker holds an unacknowledged (acks_late) message: closing
    the lost connection tries to put the message back through a transport it has already
    let go. Here a webhook attempt is in flight when Redis restarts."""
    from tests.conftest import free_port

    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    slow = threading.Event()

    def answer(request) -> int:
        if not slow.is_set():  # the first attempt hangs on until Redis has gone and come back
            slow.wait(20)
        return 200

    receiver = Receiver(answer=answer).start()
    try:
        stack = make_stack(queues=("thumbnails", "metadata"), beat=True, extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{port}/0", "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1",
            "MEDIAMILL_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1"})
        # As the Procfile runs it: a pool of threads, more of them than messages in flight
        # (with one thread, the crash did not happen).
        stack.start_worker("webhooks", concurrency=4)
        wait_workers_ready(stack.env, ("webhooks",))
        key = stack.create_key("alice")
        client = stack.client()
        first = upload(client, key, data=jpeg(), webhook_url=receiver.url).json["id"]
        wait_for(lambda: receiver.received, timeout=120, what="a webhook attempt in flight")
        redis_proc.terminate()
        redis_proc.wait()
        time.sleep(2)
        redis_proc = start_redis(port, tmp_path)
        slow.set()
        time.sleep(5)  # the consumers notice the lost connection and reconnect
        exited = {q: proc.poll() for q, proc in stack.workers.items() if proc.poll() is not None}
        assert not exited, f"workers exited after the Redis restart: {exited}"
        second = upload(client, key, data=jpeg(color=(10, 200, 30))).json["id"]
        for asset_id in (first, second):  # the pools serve on after the restart
            assert wait_final(client, key, asset_id, timeout=180)["status"] == "completed"
        assert all(proc.poll() is None for proc in stack.workers.values())
    finally:
        slow.set()
        receiver.stop()
        redis_proc.terminate()
        redis_proc.wait()


def _within(seconds: float, call):
    """`call()`'s result, or a failure if it has not returned after `seconds` (a hang)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return result["value"]


def test_a_redis_that_stops_answering_is_reported_and_waited_out(make_stack, tmp_path):
    """SIGSTOP: Redis still accepts connections but answers nothing. Without socket
    timeouts /readyz, /metrics and an upload's job send each waited as long as it was
    stopped (five minutes, then a 200). (The jobs of the upload accepted meanwhile are sent
    again by beat's sweep, as test_redis_down_for_10s_during_30_uploads_loses_nothing shows.)"""
    from tests.conftest import free_port

    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    try:
        stack = make_stack(queues=("thumbnails", "metadata"),
                           extra_env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        key = stack.create_key("alice")
        client = stack.client()
        os.kill(redis_proc.pid, signal.SIGSTOP)
        try:
            ready = _within(60, lambda: client.get("/readyz"))
            assert ready.status_code == 503 and "broker" in ready.json["detail"], ready.json
            assert _within(60, lambda: client.get("/metrics")).status_code in (200, 503)
            answer = _within(60, lambda: upload(client, key, data=jpeg()))
            assert answer.status_code == 202, answer.data[:300]  # accepted; jobs sent later
        finally:
            os.kill(redis_proc.pid, signal.SIGCONT)
        assert client.get("/readyz").status_code == 200
        after = upload(client, key, data=jpeg(color=(200, 10, 10))).json["id"]
        assert wait_final(client, key, after, timeout=120)["status"] == "completed"
        assert all(proc.poll() is None for proc in stack.workers.values())
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
        redis_proc.terminate()
        redis_proc.wait()


def test_a_store_that_stops_answering_is_not_ready_within_seconds(make_stack, s3_endpoint):
    """Through the client for real work (5 attempts, 60 s reads), /readyz took six minutes
    to say 503 about a store that accepted connections and answered nothing."""
    from urllib.parse import urlsplit

    from tests.proxy import Proxy

    proxy = Proxy(urlsplit(s3_endpoint).port)
    try:
        stack = make_stack(storage="s3", s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                           queues=())
        client = stack.client()
        assert client.get("/readyz").status_code == 200
        proxy.stall()
        ready = _within(30, lambda: client.get("/readyz"))
        assert ready.status_code == 503 and "storage" in ready.json["detail"], ready.json
        proxy.restore()
        assert client.get("/readyz").status_code == 200
    finally:
        proxy.close()


def test_s3_unreachable_for_10s_during_processing_loses_nothing(make_stack, s3_endpoint,
                                                                corpus):
    from urllib.parse import urlsplit

    from tests.proxy import Proxy

    proxy = Proxy(urlsplit(s3_endpoint).port)
    try:
        stack = make_stack(storage="s3", s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                           queues=("thumbnails", "metadata"))
        key = stack.create_key("alice")
        client = stack.client()
        photos = sorted((corpus / "images/orientation").glob("*.jpg"))[:8]
        ids = [upload(client, key, path).json["id"] for path in photos]
        proxy.down()
        time.sleep(10)
        proxy.restore()
        for asset_id in ids:
            done = wait_final(client, key, asset_id, timeout=180)
            assert done["status"] == "completed", done["jobs"]
        with stack.app.extensions["mediamill"].db.session() as session:
            retried = session.scalars(select(Job).where(Job.attempts > 1)).all()
        assert retried, "the outage never hit a job: the test proved nothing"
    finally:
        proxy.close()


def test_workers_keep_serving_after_a_hostile_corpus(make_stack, corpus):
    stack = make_stack()
    key = stack.create_key("alice")
    client = stack.client()
    mp4_head = (corpus / "video/fire2.mp4").read_bytes()[:32]
    hostile = [
        ("bomb.gif", (corpus / "images/pillow/decompression_bomb.gif").read_bytes()),
        ("truncated.jpg", (corpus / "images/pillow/truncated_jpeg.jpg").read_bytes()),
        ("truncated.png", (corpus / "images/pillow/truncated_image.png").read_bytes()),
        ("corrupted.jpg", (corpus / "images/broken/corrupted.jpg").read_bytes()),
        ("photo.mp4", (corpus / "images/camera/DSCN0010.jpg").read_bytes()),  # mislabelled
        ("clip.jpg", (corpus / "video/example.mp4").read_bytes()),  # mislabelled
        ("../../../../etc/passwd", (corpus / "images/camera/no_exif.jpg").read_bytes()),
        ("fake.mp4", mp4_head + b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\nfile:///etc/passwd\n" * 50),
        ("moov.mp4", mp4_head + b"\0\0\0\x10moov\xff\xff\xff\xff" + b"\0" * 4000),
        ("playlist.m3u8", b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n"),
        ("empty.jpg", b""),
    ]
    accepted = []
    for name, body in hostile:
        answer = upload(client, key, data=body, filename=name)
        assert answer.status_code in (202, 400, 415), (name, answer.status_code)
        if answer.status_code == 202:
            assert answer.json["filename"] == name
            accepted.append(answer.json["id"])
    for asset_id in accepted:
        done = wait_final(client, key, asset_id, timeout=120)
        for job in done["jobs"].values():
            assert "/etc/passwd" not in (job["error"] or "") and "root:" not in str(done)
    ok = upload(client, key, corpus / "images/orientation/Portrait_3.jpg").json["id"]
    assert wait_final(client, key, ok)["status"] == "completed"
    assert all(proc.poll() is None for proc in stack.workers.values())
    stored = {p.as_posix() for p in (stack.tmp / "storage").rglob("*") if p.is_file()}
    assert all("/assets/" in path and ".." not in path for path in stored)


def test_deleting_an_asset_stops_its_transcode(make_stack, corpus, tmp_path):
    """The job's heartbeat sees the deletion and ffmpeg stops: the video pool is free for the
    next clip instead of finishing work nobody wants."""
    long_clip = tmp_path / "long.mp4"  # 20 s of 1080p: about a minute at one thread
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1920x1080:rate=25", "-t", "20", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(long_clip)],
                   check=True, timeout=120)
    stack = make_stack(queues=("video",), extra_env={
        "MEDIAMILL_JOB_STALE_SECONDS": "6", "MEDIAMILL_FFMPEG_THREADS": "1"})  # a beat a second
    client, key = stack.client(), stack.create_key("alice")
    asset_id = upload(client, key, long_clip).json["id"]

    def transcoding():
        job = client.get(f"/api/v1/assets/{asset_id}", headers=auth(key)).json["jobs"]["video"]
        return job["progress"] > 0 and ffmpeg_pids(stack.env)

    wait_for(transcoding, timeout=60, what="the transcode to be under way")
    assert client.delete(f"/api/v1/assets/{asset_id}", headers=auth(key)).status_code == 204
    wait_for(lambda: not ffmpeg_pids(stack.env), timeout=20, what="ffmpeg to stop")
    # The pool takes the next clip at once.
    second = upload(client, key, corpus / "video/example.mp4").json["id"]
    wait_for(lambda: client.get(f"/api/v1/assets/{second}", headers=auth(key)).json["jobs"][
        "video"]["status"] == "completed", timeout=60, what="the next clip")
