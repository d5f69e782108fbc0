"""Bad days: a worker killed mid-transcode loses nothing and sends no second event."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from sqlalchemy import select

from media.records import Job
from tests.conftest import wait_for
from tests.helpers import auth, upload, wait_final
from tests.receiver import Receiver

pytestmark = pytest.mark.integration


def ffmpeg_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "ffmpeg"], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def test_video_worker_killed_mid_transcode_loses_nothing(make_stack, corpus):
    receiver = Receiver().start()
    try:
        stack = make_stack(extra_env={"MEDIAMILL_JOB_STALE_SECONDS": "6",
                                      "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1"}, beat=True)
        key = stack.create_key("alice")
        client = stack.client()
        client.post("/api/v1/webhooks", headers=auth(key),
                    json={"url": receiver.url, "events": ["asset.completed"]})
        ids = [upload(client, key, corpus / "video/smpte-2997.mp4").json["id"] for _ in range(3)]
        db = stack.app.extensions["mediamill"].db

        def transcoding():
            with db.session(read_only=True) as session:
                return session.scalar(select(Job).where(Job.kind == "video",
                                                        Job.status == "processing"))

        wait_for(transcoding, timeout=60, interval=0.2, what="a transcode in progress")
        children = wait_for(ffmpeg_pids, timeout=20, interval=0.1, what="ffmpeg running")
        victim = stack.workers["video"]
        os.killpg(victim.pid, signal.SIGKILL)  # the worker, its pool and whatever they ran
        victim.wait()
        time.sleep(2)
        assert not children & ffmpeg_pids(), "ffmpeg outlived its killed worker"
        stack.start_worker("video")
        for asset_id in ids:
            done = wait_final(client, key, asset_id, timeout=240)
            assert done["status"] == "completed", done["jobs"]
        wait_for(lambda: len(receiver.of_type("asset.completed")) >= 3, timeout=60,
                 what="three asset.completed webhooks")
        time.sleep(2)
        got = Counter(r.json["data"]["id"] for r in receiver.of_type("asset.completed"))
        assert got == Counter(ids)
    finally:
        receiver.stop()
