"""One upload the whole way: API -> storage -> three queues in three worker processes ->
records -> API, on both storage backends and both databases."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import select

from media.records import Job
from tests.conftest import wait_for
from tests.helpers import auth, fetch, upload, wait_final

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
    original = (corpus / "images/orientation/Portrait_6.jpg").read_bytes()
    assert fetch(stack, done["original_url"]) == original

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


def _objects(stack, asset_id: str) -> set[str]:
    folder = stack.tmp / "storage" / "assets" / asset_id
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_bad_files_fail_readably_and_workers_keep_serving(make_stack, corpus):
    stack = make_stack()
    client, key = stack.client(), stack.create_key("alice")
    bomb = upload(client, key, corpus / "images/pillow/decompression_bomb.gif").json["id"]
    truncated = upload(client, key, corpus / "images/pillow/truncated_jpeg.jpg").json["id"]
    fake = upload(client, key, data=(corpus / "video/fire2.mp4").read_bytes()[:64] + b"\0" * 4096,
                  filename="fake.mp4").json["id"]

    done = wait_final(client, key, bomb)
    assert done["status"] == "failed"
    assert "pixels" in done["jobs"]["thumbnails"]["error"]
    done = wait_final(client, key, truncated)
    assert done["status"] == "failed"
    assert "truncated or corrupt" in done["jobs"]["thumbnails"]["error"]
    done = wait_final(client, key, fake)
    assert done["status"] == "failed"
    errors = [j["error"] for j in done["jobs"].values() if j["error"]]
    assert errors and all(e.startswith("The ") for e in errors)  # sentences, not exceptions
    for job in (*wait_final(client, key, bomb)["jobs"].values(), *done["jobs"].values()):
        if job["error"]:
            assert "Traceback" not in job["error"] and "Error:" not in job["error"][:40]

    ok = upload(client, key, corpus / "images/camera/DSCN0010.jpg").json["id"]
    assert wait_final(client, key, ok)["status"] == "completed"
    assert all(proc.poll() is None for proc in stack.workers.values())


def test_reprocess_replaces_outputs_and_delete_purges(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"))  # webhooks: the purge
    client, key = stack.client(), stack.create_key("alice")
    asset_id = upload(client, key, corpus / "images/misc/vacation_2017.jpg").json["id"]
    first = wait_final(client, key, asset_id)
    assert first["status"] == "completed"
    objects = _objects(stack, asset_id)
    assert {"original", "thumb_2048.webp", "thumb_256.jpg"} <= objects

    again = client.post(f"/api/v1/assets/{asset_id}/reprocess", headers={
        "Authorization": f"Bearer {key}"})
    assert again.status_code == 202 and again.json["status"] == "queued"
    second = wait_final(client, key, asset_id)
    assert second["status"] == "completed"
    assert [d["name"] for d in second["derivatives"]] == [d["name"] for d in first["derivatives"]]
    assert _objects(stack, asset_id) == objects
    with stack.app.extensions["mediamill"].db.session() as session:
        assert len(session.scalars(select(Job).where(Job.asset_id == asset_id)).all()) == 2

    gone = client.delete(f"/api/v1/assets/{asset_id}", headers={"Authorization": f"Bearer {key}"})
    assert gone.status_code == 204
    from tests.conftest import wait_for

    wait_for(lambda: not _objects(stack, asset_id), timeout=30, what="objects purged")


def test_a_delete_is_purged_however_busy_the_metadata_pool_is(make_stack, corpus):
    """The purge rode on the metadata pool, behind jobs that each read a whole original
    (up to 900 s): a DELETE's objects outlived the contract's 30 s. Here no metadata worker
    runs at all, the busiest it can be, and the objects still go."""
    stack = make_stack(queues=("webhooks",))
    client, key = stack.client(), stack.create_key("alice")
    asset_id = upload(client, key, corpus / "images/misc/vacation_2017.jpg").json["id"]
    assert _objects(stack, asset_id) == {"original"}  # its jobs wait for their pools

    gone = client.delete(f"/api/v1/assets/{asset_id}", headers=auth(key))

    assert gone.status_code == 204
    wait_for(lambda: not _objects(stack, asset_id), timeout=30, what="objects purged")


def test_running_a_task_twice_leaves_one_result(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata"))
    client, key = stack.client(), stack.create_key("alice")
    asset_id = upload(client, key, corpus / "images/orientation/Landscape_3.jpg").json["id"]
    before = wait_final(client, key, asset_id)
    objects = _objects(stack, asset_id)
    services = stack.app.extensions["mediamill"]
    with services.db.session() as session:
        job = session.scalars(select(Job).where(Job.asset_id == asset_id,
                                                Job.kind == "thumbnails")).one()
        job.status = "queued"  # as if the message were redelivered before it was acked
        job_id = job.id
    # Run the real task body in this process, twice: a redelivery and a duplicate.
    celery_app = stack.app.extensions["celery"]
    celery_app.loader.import_default_modules()
    task = celery_app.tasks["thumbnails.render"]
    assert task.apply(args=[job_id]).get() == "completed"
    assert task.apply(args=[job_id]).get() == "skipped"
    after = wait_final(client, key, asset_id)
    strip = lambda ds: [{k: v for k, v in d.items() if k != "url"} for d in ds]  # noqa: E731
    assert strip(after["derivatives"]) == strip(before["derivatives"])
    assert _objects(stack, asset_id) == objects
    with services.db.session() as session:
        assert len(session.scalars(select(Job).where(Job.asset_id == asset_id)).all()) == 2


def test_upload_accepted_while_broker_down_is_sent_by_the_sweep(make_stack, corpus):
    from datetime import timedelta

    from web import create_app

    stack = make_stack(queues=("thumbnails", "metadata"))
    key = stack.create_key("alice")
    # The same deployment, but the web process cannot reach the broker.
    down = create_app(replace(stack.settings, broker_url="redis://127.0.0.1:1/0"))
    response = upload(down.test_client(), key, corpus / "images/camera/DSCN0021.jpg")
    assert response.status_code == 202
    asset_id = response.json["id"]
    services = stack.app.extensions["mediamill"]
    with services.db.session() as session:
        for job in session.scalars(select(Job).where(Job.asset_id == asset_id)):
            assert job.status == "queued"
            job.queued_at -= timedelta(minutes=10)  # as if beat's sweep came 10 minutes later
    celery_app = stack.app.extensions["celery"]
    celery_app.loader.import_default_modules()
    assert celery_app.tasks["upkeep.sweep"].apply().get()["resent"] == 2
    assert celery_app.tasks["upkeep.sweep"].apply().get()["resent"] == 0  # nothing twice
    assert wait_final(stack.client(), key, asset_id)["status"] == "completed"


def test_rabbitmq_broker_runs_the_pipeline(make_stack, amqp_url, corpus):
    stack = make_stack(broker_url=amqp_url)
    assert stack.settings.broker_kind == "amqp"
    client, key = stack.client(), stack.create_key("alice")
    ids = [upload(client, key, corpus / path).json["id"]
           for path in ("images/camera/jolla.jpg", "video/example.mp4")]
    for asset_id in ids:
        assert wait_final(client, key, asset_id)["status"] == "completed"


def test_metrics_reflect_queues_jobs_and_uploads(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata"))
    client, key = stack.client(), stack.create_key("alice")
    path = corpus / "images/camera/DSCN0010.jpg"
    image = upload(client, key, path).json["id"]
    video = upload(client, key, corpus / "video/example.mp4").json["id"]  # no video pool
    assert wait_final(client, key, image)["status"] == "completed"

    def video_waits_for_its_pool():
        jobs = client.get(f"/api/v1/assets/{video}", headers=auth(key)).json["jobs"]
        return jobs["metadata"]["status"] == jobs["thumbnails"]["status"] == "completed"

    wait_for(video_waits_for_its_pool, timeout=60, what="the video's other jobs")
    scrape = client.get("/metrics")  # no key needed
    assert scrape.status_code == 200 and scrape.mimetype == "text/plain"
    text = scrape.data.decode()
    lines = set(text.splitlines())
    assert "mediamill_broker_up 1.0" in lines
    assert 'mediamill_queue_depth{queue="video"} 1.0' in lines  # waiting: no video worker
    assert 'mediamill_jobs{kind="thumbnails",status="completed"} 2.0' in lines
    assert 'mediamill_jobs{kind="video",status="queued"} 1.0' in lines
    assert "mediamill_uploads 2.0" in lines
    size = path.stat().st_size + (corpus / "video/example.mp4").stat().st_size
    assert f"mediamill_upload_bytes {float(size)}" in lines
    assert 'mediamill_job_seconds{kind="metadata",status="completed"}' in text
