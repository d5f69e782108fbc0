"""Video end to end through real workers: a portrait phone clip, progress, and hostile files
that must fail readably without anything of the worker's files reaching an output."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import auth, fetch, upload, wait_final

pytestmark = pytest.mark.integration

PASSWD = Path("/etc/passwd").read_bytes()[:12]  # "root:x:0:0:r": its first line, in any form


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


def ffprobe(path: Path) -> dict:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of",
                           "json", str(path)], capture_output=True, check=True, timeout=30)
    return json.loads(done.stdout)


@pytest.fixture
def phone_clip(tmp_path) -> Path:
    """How a phone records portrait: 1280x720 pixels with a 90-degree display matrix."""
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "portrait.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "4", "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(plain))
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v", "rotate=90", str(rotated))
    return rotated


def test_video_portrait_clip_completes_upright_with_rising_progress(make_stack, phone_clip,
                                                                   tmp_path):
    stack = make_stack()
    client, key = stack.client(), stack.create_key("alice")
    asset_id = upload(client, key, phone_clip).json["id"]

    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/assets/{asset_id}", headers=auth(key)).json
        seen.append(body["jobs"]["video"]["progress"])
        if body["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    done = wait_final(client, key, asset_id)

    assert done["status"] == "completed", done["jobs"]
    assert any(0.0 < p < 1.0 for p in seen), seen  # seen between the ends, not just jumping
    assert seen == sorted(seen) and seen[-1] == 1.0
    meta = done["metadata"]
    assert (meta["width"], meta["height"], meta["rotation"]) == (720, 1280, 90)
    videos = {d["name"]: d for d in done["derivatives"] if d["kind"] == "video"}
    assert set(videos) == {"mp4_720p", "mp4_480p"}  # no upscale to a 1080x1920 box
    for name, size in (("mp4_720p", (720, 1280)), ("mp4_480p", (480, 854))):
        derivative = videos[name]
        assert (derivative["width"], derivative["height"]) == size
        assert derivative["content_type"] == "video/mp4"
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(fetch(stack, derivative["url"]))
        assert path.stat().st_size == derivative["size"]
        probe = ffprobe(path)
        picture = next(s for s in probe["streams"] if s["codec_type"] == "video")
        assert (picture["width"], picture["height"]) == size  # upright pixels
        assert {s["codec_name"] for s in probe["streams"]} == {"h264", "aac"}
        assert abs(float(probe["format"]["duration"]) - meta["duration"]) <= 0.1
    posters = [d for d in done["derivatives"] if d["kind"] == "thumbnail"]
    assert posters and all(d["height"] > d["width"] for d in posters)


def _all_jobs_final(client, key: str, asset_id: str, timeout: float = 120) -> dict:
    """The asset once every job has settled: it is `failed` as soon as one job fails."""
    from tests.conftest import wait_for

    def settled():
        body = client.get(f"/api/v1/assets/{asset_id}", headers=auth(key)).json
        jobs = body["jobs"].values()
        return body if all(j["status"] in ("completed", "failed") for j in jobs) else None

    return wait_for(settled, timeout=timeout, interval=0.2, what=f"jobs of {asset_id}")


def _stored(stack, asset_id: str) -> dict[str, bytes]:
    folder = stack.tmp / "storage" / "assets" / asset_id
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_video_hostile_files_fail_readably_and_leak_nothing(make_stack, corpus, tmp_path):
    stack = make_stack()
    client, key = stack.client(), stack.create_key("alice")
    # A damaged index: the upload's bytes start like any MP4, so it is accepted and queued.
    data = bytearray((corpus / "video/example.mp4").read_bytes())
    moov = data.rindex(b"moov") - 4
    data[moov + 8:] = b"\xff" * (len(data) - moov - 8)
    broken = upload(client, key, data=bytes(data), filename="broken.mp4").json["id"]
    # Files that only the upload's sniffing keeps out: put in storage behind its back, as
    # if sniffing had been fooled, then reprocessed.
    hostile = {
        "playlist": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
                    b"#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/passwd\n"
                    b"#EXT-X-ENDLIST\n",
        "concat": b"ffconcat version 1.0\nfile 'file:///etc/passwd'\n",
    }
    ids = {}
    for name, body in hostile.items():
        asset_id = upload(client, key, corpus / "video/example.mp4").json["id"]
        assert wait_final(client, key, asset_id)["status"] == "completed"
        (stack.tmp / "storage" / "assets" / asset_id / "original").write_bytes(body)
        again = client.post(f"/api/v1/assets/{asset_id}/reprocess", headers=auth(key))
        assert again.status_code == 202
        ids[name] = asset_id

    for asset_id in (broken, *ids.values()):
        done = _all_jobs_final(client, key, asset_id)
        assert done["status"] == "failed", done["jobs"]
        for kind in ("video", "thumbnails"):
            error = done["jobs"][kind]["error"]
            assert error and error.startswith("The ") and error.endswith("."), done["jobs"]
            assert "Traceback" not in error and "/tmp" not in error and " @ 0x" not in error
        assert PASSWD not in json.dumps(done).encode()
        for name, body in _stored(stack, asset_id).items():
            assert PASSWD not in body, name
    for asset_id in ids.values():
        error = wait_final(client, key, asset_id)["jobs"]["video"]["error"]
        assert "playlists and scripts" in error
    assert all(proc.poll() is None for proc in stack.workers.values())
