"""The Procfile as operators run it: release, then every process under honcho, driven over
real HTTP (gunicorn), with uploads streamed by a real client."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
import requests

from tests.conftest import BIN, ROOT, free_port, stack_env, wait_for

pytestmark = pytest.mark.integration

PROCESSES = ("web", "thumbnails", "video", "metadata", "webhooks", "beat", "flower")


def test_procfile_runs_the_whole_service(tmp_path, redis_server, corpus):
    env = stack_env(tmp_path, redis_server, 13, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"file://{tmp_path / 'storage'}")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    port, flower_port = free_port(), free_port()
    env.update(FLOWER_BASIC_AUTH="ops:flower-secret", FLOWER_PORT=str(flower_port))
    release = subprocess.run(["flask", "--app", "web", "release"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert release.returncode == 0, release.stderr
    issued = subprocess.run(["flask", "--app", "web", "create-api-key", "ops"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    key = json.loads(issued.stdout.strip().splitlines()[-1])["api_key"]
    log = open(tmp_path / "honcho.log", "wb")
    honcho = subprocess.Popen(["honcho", "start", "-f", "Procfile", "-p", str(port), *PROCESSES],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=2).ok, timeout=60,
                 what="web /readyz")
        _gunicorns_own_refusals(port)
        ids = []
        for path in ("images/orientation/Landscape_8.jpg", "video/example.mp4"):
            with open(corpus / path, "rb") as fh:
                answer = requests.post(f"{base}/api/v1/assets", headers=headers,
                                       files={"file": (path.rsplit("/", 1)[1], fh)}, timeout=30)
            assert answer.status_code == 202, answer.text
            assert answer.json()["original_url"].startswith(base)
            ids.append(answer.json()["id"])
        for asset_id in ids:
            done = wait_for(lambda a=asset_id: _final(base, headers, a), timeout=180,
                            interval=0.5, what=f"asset {asset_id}")
            assert done["status"] == "completed", done["jobs"]
        video = done
        assert video["metadata"]["audio_codec"] is None  # example.mp4 has no audio
        mp4 = next(d for d in video["derivatives"] if d["name"] == "mp4_720p")
        assert (mp4["width"], mp4["height"]) == (640, 480)  # never upscaled
        served = requests.get(mp4["url"], headers={"Range": "bytes=0-99"}, timeout=10)
        assert served.status_code == 206 and len(served.content) == 100
        assert served.headers["Content-Type"] == "video/mp4"
        # beat hands the upkeep sweep to the metadata pool every 30 s.
        swept = re.compile(r"Task upkeep\.sweep\[[0-9a-f-]+\] succeeded")
        wait_for(lambda: swept.search(_log(tmp_path)), timeout=60, interval=1,
                 what="beat's first sweep")
        # Flower, the optional process: behind its basic auth, it sees every pool.
        flower = f"http://127.0.0.1:{flower_port}"
        assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
        pools = {"thumbnails", "video", "metadata", "webhooks"}
        seen = wait_for(lambda: pools <= {name.split("@")[0] for name in requests.get(
            f"{flower}/api/workers", params={"refresh": 1}, auth=("ops", "flower-secret"),
            timeout=10).json()}, timeout=60, interval=1, what="Flower listing every pool")
        assert seen
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"-p {port}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "processes outlived honcho"


def _gunicorns_own_refusals(port: int) -> None:
    """What gunicorn answers before Flask sees a request is problem+json too, not HTML."""
    for request, status in [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            answer = b"".join(iter(lambda s=sock: s.recv(65536), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
        assert b"Content-Type: application/problem+json" in head, head
        assert json.loads(body)["status"] == status


def _final(base: str, headers: dict, asset_id: str):
    body = requests.get(f"{base}/api/v1/assets/{asset_id}", headers=headers, timeout=5).json()
    return body if body["status"] in ("completed", "failed") else None


def _log(tmp_path) -> str:
    return (tmp_path / "honcho.log").read_text(errors="replace")
