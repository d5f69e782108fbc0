"""Direct uploads through the API: parts go straight to storage (moto_server, or the app
itself for file://), then complete into an asset that is processed like any other."""

from __future__ import annotations

import hashlib
from functools import partial
from unittest import mock
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import auth, wait_final

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def put_part(client, url: str, data: bytes) -> requests.Response | object:
    """PUT one part to its presigned URL: straight to S3, or to the app for file://."""
    parts = urlsplit(url)
    if parts.path.startswith("/files/uploads/"):
        return client.put(f"{parts.path}?{parts.query}", data=data)
    return requests.put(url, data=data, timeout=30)


def etag_of(response) -> str:
    return response.headers["ETag"]


def padded_jpeg(corpus, size: int) -> bytes:
    """A real JPEG followed by filler up to `size` bytes (decoders stop at the end marker)."""
    head = (corpus / "images/orientation/Landscape_1.jpg").read_bytes()
    return (head + bytes(range(256)) * ((size - len(head)) // 256 + 1))[:size]


def upload_direct(client, key: str, data: bytes, filename: str, missing=()):
    """Create, sign, PUT every part but `missing`; return (upload, etags by part number)."""
    created = client.post("/api/v1/uploads", headers=auth(key), json={
        "filename": filename, "content_type": "image/jpeg", "size": len(data)})
    assert created.status_code == 201, created.json
    upload = created.json
    numbers = list(range(1, upload["part_count"] + 1))
    urls = client.post(f"/api/v1/uploads/{upload['id']}/parts", headers=auth(key),
                       json={"part_numbers": numbers}).json["urls"]
    etags = {}
    for n in numbers:
        if n in missing:
            continue
        chunk = data[(n - 1) * upload["part_size"]:n * upload["part_size"]]
        answer = put_part(client, urls[str(n)], chunk)
        assert answer.status_code == 200, answer
        etags[n] = etag_of(answer)
    return upload, etags


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_direct_upload_resumes_and_completes(make_stack, s3_endpoint, corpus, storage):
    stack = make_stack(None, storage, s3_endpoint if storage == "s3" else None,
                       queues=("metadata", "thumbnails"))
    client, key = stack.client(), stack.create_key("alice")
    data = padded_jpeg(corpus, 17 * MiB + 5)
    upload, etags = upload_direct(client, key, data, "Ünïcode photo.jpg", missing={2})
    assert (upload["part_size"], upload["part_count"]) == (8 * MiB, 3)

    # Resume: the stored parts are listed with their ETags and sizes; part 2 is missing.
    listed = client.get(f"/api/v1/uploads/{upload['id']}", headers=auth(key)).json
    assert [(p["part_number"], p["size"]) for p in listed["parts"]] == [(1, 8 * MiB),
                                                                         (3, MiB + 5)]
    assert {p["part_number"]: p["etag"].strip('"') for p in listed["parts"]} == {
        n: e.strip('"') for n, e in etags.items()}
    early = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(key),
                        json={"parts": [{"part_number": n, "etag": e} for n, e in etags.items()]})
    assert early.status_code == 400, early.json

    url = client.post(f"/api/v1/uploads/{upload['id']}/parts", headers=auth(key),
                      json={"part_numbers": [2]}).json["urls"]["2"]
    etags[2] = etag_of(put_part(client, url, data[8 * MiB:16 * MiB]))
    parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
    done = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(key),
                       json={"parts": parts})
    assert done.status_code == 202, done.json
    asset = done.json
    assert (asset["kind"], asset["content_type"], asset["filename"]) == (
        "image", "image/jpeg", "Ünïcode photo.jpg")
    assert asset["size"] == len(data)
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    again = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(key),
                        json={"parts": parts})
    assert (again.status_code, again.json["id"]) == (202, asset["id"])  # a retried complete

    final = wait_final(client, key, asset["id"])
    assert final["status"] == "completed", final["jobs"]
    assert any(d["name"] == "thumb_256.webp" for d in final["derivatives"])


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_refused_oversize_abort_and_other_tenants(make_stack, s3_endpoint, corpus, storage):
    stack = make_stack(None, storage, s3_endpoint if storage == "s3" else None, queues=(),
                       extra_env={"MEDIAMILL_MAX_UPLOAD_BYTES": str(20 * MiB)})
    client, key, other = stack.client(), stack.create_key("alice"), stack.create_key("bob")
    too_big = client.post("/api/v1/uploads", headers=auth(key), json={
        "filename": "huge.mp4", "content_type": "video/mp4", "size": 20 * MiB + 1})
    assert too_big.status_code == 413
    assert too_big.headers["Content-Type"] == "application/problem+json"

    # Not media: refused at complete, and the object is gone from storage.
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    upload, etags = upload_direct(client, key, svg, "logo.jpg")
    parts = [{"part_number": 1, "etag": etags[1]}]
    refused = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(key),
                          json={"parts": parts})
    assert refused.status_code == 415, refused.json
    storage_ = stack.app.extensions["mediamill"].storage
    assert client.get("/api/v1/assets", headers=auth(key)).json["items"] == []
    assert not any(storage_.exists(f"assets/{p}/original") for p in [upload["id"]])

    # Parts adding up to more than the size declared at create: 413 that says so.
    upload, _ = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "b.jpg", missing={2})
    url = client.post(f"/api/v1/uploads/{upload['id']}/parts", headers=auth(key),
                      json={"part_numbers": [1, 2]}).json["urls"]
    etags = {n: etag_of(put_part(client, url[str(n)], padded_jpeg(corpus, 8 * MiB)))
             for n in (1, 2)}
    over = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=auth(key), json={
        "parts": [{"part_number": n, "etag": e} for n, e in etags.items()]})
    assert over.status_code == 413, over.json
    assert "more than the 9437184 declared" in over.json["detail"]

    # Another tenant's upload id answers 404 on every call; abort frees the parts.
    upload, _ = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "a.jpg", missing={2})
    path = f"/api/v1/uploads/{upload['id']}"
    assert client.get(path, headers=auth(other)).status_code == 404
    assert client.post(f"{path}/parts", headers=auth(other),
                       json={"part_numbers": [1]}).status_code == 404
    assert client.delete(path, headers=auth(other)).status_code == 404
    assert client.delete(path, headers=auth(key)).status_code == 204
    assert client.get(path, headers=auth(key)).json["status"] == "aborted"
    assert client.post(f"{path}/parts", headers=auth(key),
                       json={"part_numbers": [1]}).status_code == 409


def test_file_part_links_are_signed(make_stack, corpus):
    stack = make_stack(None, "file", queues=())
    client, key = stack.client(), stack.create_key("alice")
    created = client.post("/api/v1/uploads", headers=auth(key), json={
        "filename": "a.jpg", "content_type": "image/jpeg", "size": 1000}).json
    url = client.post(f"/api/v1/uploads/{created['id']}/parts", headers=auth(key),
                      json={"part_numbers": [1]}).json["urls"]["1"]
    parts = urlsplit(url)
    tampered = parts.query.replace("signature=", "signature=x")
    assert client.put(f"{parts.path}?{tampered}", data=b"x").status_code == 403
    other_part = parts.path.rsplit("/", 1)[0] + "/2"
    assert client.put(f"{other_part}?{parts.query}", data=b"x").status_code == 403
    assert client.put(f"{parts.path}?{parts.query}", data=b"x" * (8 * MiB + 1)).status_code == 413


def test_moto_bucket_cors_lets_the_site_put_parts_and_read_etag(make_stack, s3_endpoint):
    """What `flask --app web release` sets up: a preflight from the site's origin passes and
    the ETag header is exposed to the page."""
    stack = make_stack(None, "s3", s3_endpoint, queues=(),
                       extra_env={"MEDIAMILL_PUBLIC_URL": "http://site.example:5000"})
    result = stack.app.test_cli_runner().invoke(args=["release"])
    assert result.exit_code == 0, result.output
    assert "bucket CORS lets http://site.example:5000" in result.output
    storage = stack.app.extensions["mediamill"].storage
    url = storage.presign_part("assets/x/original", storage.create_multipart(
        "assets/x/original", "application/octet-stream"), 1, 60)
    origin = {"Origin": "http://site.example:5000"}
    preflight = requests.options(url, timeout=10, headers={
        **origin, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] in ("http://site.example:5000", "*")
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    put = requests.put(url, data=b"part", headers=origin, timeout=10)
    assert put.status_code == 200
    assert "etag" in put.headers.get("Access-Control-Expose-Headers", "").lower()


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_sweep_aborts_uploads_abandoned_for_a_day(make_stack, s3_endpoint, corpus, storage):
    from datetime import timedelta

    from media.records import DirectUpload

    stack = make_stack(storage=storage, s3_endpoint=s3_endpoint if storage == "s3" else None,
                       queues=())
    key = stack.create_key("alice")
    client = stack.client()
    data = padded_jpeg(corpus, 9 * MiB)
    upload, _ = upload_direct(client, key, data, "left.jpg", missing=(2,))
    dead, _ = upload_direct(client, key, data, "dead.jpg", missing=(2,))
    services = stack.app.extensions["mediamill"]
    with services.db.session() as session:
        row = session.get(DirectUpload, upload["id"])
        row.created_at -= timedelta(hours=25)
        stored_key, upload_id = row.key, row.storage_upload_id
        dying = session.get(DirectUpload, dead["id"])  # its complete's process died
        dying.created_at -= timedelta(hours=25)
        dying.status, dying.completed_at = "completing", dying.created_at
    assert services.storage.list_parts(stored_key, upload_id)  # part 1 is stored
    celery_app = stack.app.extensions["celery"]
    celery_app.loader.import_default_modules()
    assert celery_app.tasks["upkeep.sweep"].apply().get()["abandoned"] == 2
    assert celery_app.tasks["upkeep.sweep"].apply().get()["abandoned"] == 0
    with pytest.raises(FileNotFoundError):  # the store freed the parts
        services.storage.list_parts(stored_key, upload_id)
    shown = client.get(f"/api/v1/uploads/{upload['id']}", headers=auth(key)).json
    assert shown["status"] == "aborted" and shown["parts"] == []
    assert client.get(f"/api/v1/uploads/{dead['id']}", headers=auth(key)).json[
        "status"] == "aborted"


@pytest.mark.parametrize(("storage", "database"), [("file", "sqlite"), ("s3", "postgresql")])
def test_complete_and_abort_take_the_upload_in_turn(make_stack, s3_endpoint, corpus, storage,
                                                    database, request, monkeypatch):
    """Raced, complete and DELETE both answered success (202 and 204, and the asset was
    processed) or complete a false 503. While one request completes an upload, another
    complete is told to ask again (503) and a DELETE is refused (409); a complete silent
    too long (its process died) is taken over."""
    from datetime import timedelta

    from media.assets import COMPLETING_STALE
    from media.records import DirectUpload, utcnow

    database_url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    stack = make_stack(database_url, storage, s3_endpoint if storage == "s3" else None,
                       queues=())
    client, key = stack.client(), stack.create_key("alice")
    services = stack.app.extensions["mediamill"]
    upload, etags = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "a.jpg")
    path, parts = f"/api/v1/uploads/{upload['id']}", [
        {"part_number": n, "etag": e} for n, e in sorted(etags.items())]

    def completing(since) -> None:  # as another request, in the middle of its complete
        with services.db.session() as session:
            row = session.get(DirectUpload, upload["id"])
            row.status, row.completed_at = "completing", since

    completing(utcnow())
    busy = client.post(f"{path}/complete", headers=auth(key), json={"parts": parts})
    assert (busy.status_code, busy.json["title"]) == (503, "Upload completing")
    assert busy.headers["Retry-After"] == "5"
    assert client.delete(path, headers=auth(key)).status_code == 409
    signing = client.post(f"{path}/parts", headers=auth(key), json={"part_numbers": [1]})
    assert (signing.status_code, signing.json["title"]) == (409, "Upload completing")
    assert "start a new one" not in signing.json["detail"]  # it may yet be open again
    assert client.get("/api/v1/assets", headers=auth(key)).json["items"] == []

    completing(utcnow() - COMPLETING_STALE - timedelta(seconds=1))  # its process died
    done = client.post(f"{path}/complete", headers=auth(key), json={"parts": parts})
    assert done.status_code == 202, done.json
    assert client.delete(path, headers=auth(key)).status_code == 409  # an asset now
    signing = client.post(f"{path}/parts", headers=auth(key), json={"part_numbers": [1]})
    assert (signing.status_code, signing.json["title"]) == (409, "Upload completed")
    assert done.json["id"] in signing.json["detail"]

    # Storage failing while the joined file is read back: a 503, and the upload stays open
    # with its file, which a retry reads again (before, the file was deleted and the
    # upload aborted: all of it had to be sent again).
    from media.errors import StorageUnavailable
    from web.api import uploads

    data = padded_jpeg(corpus, 9 * MiB + 7)
    upload, etags = upload_direct(client, key, data, "c.jpg")
    path, parts = f"/api/v1/uploads/{upload['id']}", [
        {"part_number": n, "etag": e} for n, e in sorted(etags.items())]

    def failing(row):
        raise StorageUnavailable("storage answered SlowDown")

    monkeypatch.setattr(uploads, "_inspect", failing)
    assert client.post(f"{path}/complete", headers=auth(key),
                       json={"parts": parts}).status_code == 503
    monkeypatch.undo()
    assert client.get(path, headers=auth(key)).json["status"] == "open"
    retried = client.post(f"{path}/complete", headers=auth(key), json={"parts": parts})
    assert retried.status_code == 202, retried.json
    assert retried.json["sha256"] == hashlib.sha256(data).hexdigest()

    # A complete refused for its parts leaves the upload open: fixed, it completes.
    upload, etags = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "b.jpg")
    path = f"/api/v1/uploads/{upload['id']}"
    wrong = client.post(f"{path}/complete", headers=auth(key),
                        json={"parts": [{"part_number": 1, "etag": '"0123"'},
                                        {"part_number": 2, "etag": etags[2]}]})
    assert wrong.status_code == 400, wrong.json
    assert client.get(path, headers=auth(key)).json["status"] == "open"
    twice = client.post(f"{path}/complete", headers=auth(key), json={"parts": [
        {"part_number": 1, "etag": etags[1]}, {"part_number": 1, "etag": etags[1]},
        {"part_number": 2, "etag": etags[2]}]})
    assert "only once" in twice.json["detail"]  # not "the parts hold more than declared"
    assert client.delete(path, headers=auth(key)).status_code == 204
    assert client.delete(path, headers=auth(key)).status_code == 204  # again: still 204
    assert client.post(f"{path}/complete", headers=auth(key),
                       json={"parts": parts}).status_code == 409


def test_a_complete_taken_over_while_it_ran_does_not_record_the_asset_too(make_stack, corpus,
                                                                        monkeypatch):
    """A complete slow enough to be taken for dead (a long read) finds, at the end, that
    another request has taken the upload over (here a DELETE, or the daily sweep): it
    records nothing, and answers what became of the upload."""
    from datetime import timedelta

    from media.assets import COMPLETING_STALE
    from media.records import DirectUpload
    from web.api import uploads

    stack = make_stack(None, "file", queues=())
    client, key = stack.client(), stack.create_key("alice")
    services = stack.app.extensions["mediamill"]
    celery_app = stack.app.extensions["celery"]
    celery_app.loader.import_default_modules()
    inspect = uploads._inspect
    for other in ("delete", "sweep"):
        upload, etags = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "a.jpg")
        path = f"/api/v1/uploads/{upload['id']}"

        def slow(row, other=other, upload_id=upload["id"], path=path):
            found = inspect(row)
            with services.db.session() as session:  # silent for too long, as if dead
                found_row = session.get(DirectUpload, upload_id)
                found_row.completed_at -= COMPLETING_STALE + timedelta(seconds=1)
                found_row.created_at -= timedelta(hours=25)
            if other == "delete":
                assert stack.client().delete(path, headers=auth(key)).status_code == 204
            else:
                assert celery_app.tasks["upkeep.sweep"].apply().get()["abandoned"] == 1
            return found

        monkeypatch.setattr(uploads, "_inspect", slow)
        late = client.post(f"{path}/complete", headers=auth(key), json={"parts": [
            {"part_number": n, "etag": e} for n, e in sorted(etags.items())]})
        monkeypatch.undo()
        assert (late.status_code, late.json["title"]) == (409, "Upload closed"), late.json
        assert client.get(path, headers=auth(key)).json["status"] == "aborted"
        assert client.get("/api/v1/assets", headers=auth(key)).json["items"] == []


def test_a_database_fault_while_recording_leaves_the_upload_for_a_retry(make_stack, corpus,
                                                                        monkeypatch):
    """The database failed under a complete: its 503 could not hand the upload back either,
    so the claim is left to go stale, and then a retry completes it."""

    from sqlalchemy.exc import OperationalError

    from media import assets
    from media.assets import COMPLETING_STALE
    from media.records import DirectUpload

    stack = make_stack(None, "file", queues=())
    client, key = stack.client(), stack.create_key("alice")
    services = stack.app.extensions["mediamill"]
    upload, etags = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "a.jpg")
    path, parts = f"/api/v1/uploads/{upload['id']}", [
        {"part_number": n, "etag": e} for n, e in sorted(etags.items())]
    def down(session, upload_id, claimed, status):  # recording, and handing it back
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(assets, "release_upload", down)
    assert client.post(f"{path}/complete", headers=auth(key),
                       json={"parts": parts}).status_code == 503
    monkeypatch.undo()
    assert client.get(path, headers=auth(key)).json["status"] == "completing"
    assert client.post(f"{path}/complete", headers=auth(key),
                       json={"parts": parts}).status_code == 503  # ask again in a moment
    with services.db.session() as session:
        session.get(DirectUpload, upload["id"]).completed_at -= COMPLETING_STALE
    done = client.post(f"{path}/complete", headers=auth(key), json={"parts": parts})
    assert done.status_code == 202, done.json
    assert client.get(path, headers=auth(key)).json["status"] == "completed"


def test_complete_and_abort_sent_together_never_both_succeed(make_stack, corpus):
    stack = make_stack(None, "file", queues=())
    key = stack.create_key("alice")
    outcomes = []
    for _ in range(6):
        client = stack.client()
        upload, etags = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "r.jpg")
        path = f"/api/v1/uploads/{upload['id']}"
        parts = [{"part_number": n, "etag": e} for n, e in sorted(etags.items())]
        complete, abort = _together(
            partial(stack.client().post, f"{path}/complete", headers=auth(key),
                    json={"parts": parts}),
            partial(stack.client().delete, path, headers=auth(key)))
        status = client.get(path, headers=auth(key)).json["status"]
        outcomes.append((complete.status_code, abort.status_code, status))
    for outcome in outcomes:
        assert outcome in ((202, 409, "completed"), (409, 204, "aborted")), outcomes


def _together(*calls):
    """Run `calls` in threads released at the same moment; their results, in order."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    start = Barrier(len(calls))

    def run(call):
        start.wait(30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result(60) for f in [pool.submit(run, call) for call in calls]]


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_storage_left_by_writes_a_killed_process_cut_off_is_freed(make_stack, s3_endpoint,
                                                                  corpus, storage):
    """A web process killed mid-upload leaves an unfinished multipart upload (S3 keeps, and
    bills, its parts for ever) or a temporary file; nothing removed them. The hourly
    upkeep frees those a day old, and keeps the parts of direct uploads still open."""
    from datetime import timedelta

    from media.records import utcnow

    stack = make_stack(None, storage, s3_endpoint if storage == "s3" else None, queues=())
    client, key = stack.client(), stack.create_key("alice")
    services = stack.app.extensions["mediamill"]
    store = services.storage
    open_upload, _ = upload_direct(client, key, padded_jpeg(corpus, 9 * MiB), "open.jpg",
                                   missing=(2,))
    # What a killed POST /api/v1/assets leaves: a multipart upload with a part stored.
    cut = store.create_multipart("assets/0123456789abcdef0123456789abcdef/original",
                                 "application/octet-stream")
    answer = put_part(client, store.presign_part(
        "assets/0123456789abcdef0123456789abcdef/original", cut, 1, 60), b"x" * (5 * MiB))
    assert answer.status_code == 200
    if storage == "file":  # and, on disk, an atomic write's temporary file
        folder = store.root / "assets" / "0123456789abcdef0123456789abcdef"
        folder.mkdir(parents=True)
        (folder / ".upload-k1").write_bytes(b"half a thumbnail")
    celery_app = stack.app.extensions["celery"]
    celery_app.loader.import_default_modules()
    task = celery_app.tasks["upkeep.free_interrupted"]

    if storage == "file":  # moto dates every multipart upload 2010-11-10: S3 is older
        assert task.apply().get() == 0  # a day old first
    with mock.patch("tasks.upkeep.utcnow", return_value=utcnow() + timedelta(days=1, hours=1)):
        freed = task.apply().get()

    assert freed == (2 if storage == "file" else 1)
    with pytest.raises(FileNotFoundError):
        store.list_parts("assets/0123456789abcdef0123456789abcdef/original", cut)
    listed = client.get(f"/api/v1/uploads/{open_upload['id']}", headers=auth(key)).json
    assert [p["part_number"] for p in listed["parts"]] == [1]  # the open one is kept
    if storage == "file":
        assert not list(store.root.glob("assets/*/.upload-*"))
