"""One upload the whole way: API -> storage -> three queues in three worker processes ->
records -> API, on both storage backends and both databases."""

from __future__ import annotations

import io
import json
import subprocess
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import select

from media.records import Job
from tests.helpers import fetch, upload, wait_final

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
@pytest.mark.parametrize("storage", ["file", "s3"])
def test_image_and_video_complete(make_stack, s3_endpoint, corpus, request, database, storage,
                                  tmp_path):
    db_url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    stack = make_stack(db_url, storage, s3_endpoint if storage == "s3" else None)
    client, key = stack.client(), stack.create_key("alice")

    image = upload(client, key, corpus / "images/orientation/Portrait_6.jpg")
    video = upload(client, key, corpus / "video/fire2.mp4")
    assert image.status_code == 202, image.json
    assert video.status_code == 202, video.json
    assert image.json["status"] == "queued" and image.json["kind"] == "image"
    assert set(video.json["jobs"]) == {"metadata", "thumbnails", "video"}

    done = wait_final(client, key, image.json["id"])
    assert done["status"] == "completed", done["jobs"]
    assert set(done["jobs"]) == {"metadata", "thumbnails"}
    assert all(j["progress"] == 1.0 and j["error"] is None for j in done["jobs"].values())
    # Portrait_6 is stored 1800x1200 with EXIF orientation 6: displayed 1200x1800.
    assert (done["metadata"]["width"], done["metadata"]["height"]) == (1200, 1800)
    names = {d["name"] for d in done["derivatives"]}
    assert names == {"thumb_1024.webp", "thumb_1024.jpg", "thumb_256.webp", "thumb_256.jpg"}
    for derivative in done["derivatives"]:
        body = fetch(stack, derivative["url"])
        assert len(body) == derivative["size"]
        thumb = Image.open(io.BytesIO(body))
        assert thumb.size == (derivative["width"], derivative["height"])
        assert thumb.height > thumb.width  # upright portrait
        assert "exif" not in thumb.info
    assert fetch(stack, done["original_url"]) == (corpus / "images/orientation/Portrait_6.jpg").read_bytes()

    done = wait_final(client, key, video.json["id"], timeout=240)
    assert done["status"] == "completed", done["jobs"]
    meta = done["metadata"]
    assert (meta["width"], meta["height"], meta["video_codec"], meta["audio_codec"]) == (
        1280, 720, "h264", "aac")
    mp4 = next(d for d in done["derivatives"] if d["name"] == "mp4_720p")
    assert mp4["content_type"] == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(fetch(stack, mp4["url"]))
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, check=True).stdout)
    codecs = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}
    assert abs(float(probe["format"]["duration"]) - meta["duration"]) < 0.2
    assert any(d["name"] == "thumb_256.jpg" for d in done["derivatives"])  # poster thumbs

    # Each job ran in the worker consuming its own queue.
    with stack.app.extensions["mediamill"].db.session() as session:
        jobs = session.scalars(select(Job)).all()
    assert len(jobs) == 5
    for job in jobs:
        assert job.worker.split("@")[0] == job.kind, (job.kind, job.worker)

    if storage == "s3":  # the objects really are in the bucket, under the configured prefix
        import boto3

        bucket = urlsplit(stack.settings.storage_url).netloc
        listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
            Bucket=bucket, Prefix=f"media/assets/{video.json['id']}/")
        keys = {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]}
        assert {"original", "mp4_720p.mp4", "thumb_256.webp"} <= keys
