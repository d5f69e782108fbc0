"""The HTTP API's answers without workers: keys, tenants, refusals, idempotency, paging."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import Settings
from tests.conftest import BIN, ROOT, make_bucket, stack_env, wait_for
from tests.helpers import auth, jpeg, upload

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path, redis_server):
    """The web app on SQLite and file storage, with a real broker but no workers."""
    from web import create_app

    env = stack_env(tmp_path, redis_server, 14, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"file://{tmp_path / 'storage'}")
    app = create_app(Settings.from_env(env))
    app.config["TESTING"] = True
    return app


def new_key(app, name: str) -> str:
    from media.keys import create_api_key

    with app.extensions["mediamill"].db.session() as session:
        return create_api_key(session, name)["api_key"]


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "bearer mm_x"])
def test_bad_keys_get_401(api, header):
    client = api.test_client()
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/assets", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = client.post("/api/v1/assets", headers=headers,
                           data={"file": (io.BytesIO(jpeg()), "a.jpg")})
    assert_problem(response, 401)


def test_revoked_tenant_key_is_refused_and_valid_key_accepted(api):
    key = new_key(api, "alice")
    assert api.test_client().get("/api/v1/assets", headers=auth(key)).status_code == 200


def test_upload_answers_202_with_the_contract_asset(api):
    client, key = api.test_client(), new_key(api, "alice")
    name = "Ünïcødé holiday 🌅 ../../etc/passwd.jpg"
    response = upload(client, key, data=jpeg(), filename=name)
    assert response.status_code == 202
    body = response.json
    assert body["filename"] == name
    assert body["status"] == "queued" and body["kind"] == "image"
    assert body["content_type"] == "image/jpeg"
    assert body["size"] == len(jpeg())
    import hashlib

    assert body["sha256"] == hashlib.sha256(jpeg()).hexdigest()
    assert set(body["jobs"]) == {"metadata", "thumbnails"}
    assert body["jobs"]["metadata"] == {"status": "queued", "progress": 0.0, "error": None}
    assert body["derivatives"] == [] and body["metadata"] == {}
    assert body["created_at"].endswith("Z")
    # The name is data only: the stored object's key is the asset id.
    stored = list((Path(api.extensions["mediamill"].settings.storage_url[7:])).rglob("*"))
    files = [p for p in stored if p.is_file()]
    assert [p.relative_to(files[0].parents[2]).as_posix() for p in files] == [
        f"assets/{body['id']}/original"]
    # The original link serves the bytes as a download with the name intact.
    original = client.get(body["original_url"].split("localhost", 1)[1])
    assert original.status_code == 200 and original.data == jpeg()
    assert original.headers["Content-Disposition"].startswith("attachment")
    assert "filename*=UTF-8''" in original.headers["Content-Disposition"]


def test_signed_links_refuse_tampering_and_expiry(api):
    client, key = api.test_client(), new_key(api, "alice")
    url = upload(client, key, data=jpeg()).json["original_url"].split("localhost", 1)[1]
    assert client.get(url).status_code == 200
    assert_problem(client.get(url.replace("signature=", "signature=x")), 403)
    assert_problem(client.get(url.replace("/original", "/thumb_256.jpg")), 403)
    assert_problem(client.get(url.split("?")[0]), 403)
    expires = url.split("expires=")[1].split("&")[0]
    assert_problem(client.get(url.replace(f"expires={expires}", "expires=1000")), 403)
    assert_problem(client.get("/files/../../etc/passwd?expires=9999999999&signature=x"), 403)
    # Text that is not ASCII, where digits or a hex signature belong: refused, never a 500.
    assert_problem(client.get(url.replace("signature=", "signature=%C3%A9")), 403)
    assert_problem(client.get(url.replace(f"expires={expires}", "expires=%C2%B2")), 403)


@pytest.mark.parametrize("body,name", [
    (b"hello, this is just text\n", "notes.txt"),
    (b"<!doctype html><html><script>alert(1)</script></html>", "page.jpg"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "doc.pdf"),
    (b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10,\nfile:///etc/passwd\n", "clip.mp4"),
])
def test_not_media_is_415(api, body, name):
    client, key = api.test_client(), new_key(api, "alice")
    problem = assert_problem(upload(client, key, data=body, filename=name), 415)
    assert "not an image or video" in problem["detail"]
    assert client.get("/api/v1/assets", headers=auth(key)).json["items"] == []


def test_missing_file_is_400(api):
    client, key = api.test_client(), new_key(api, "alice")
    assert_problem(client.post("/api/v1/assets", headers=auth(key), json={"x": 1}), 400)
    response = client.post("/api/v1/assets", headers=auth(key), data={"webhook_url": "http://x"},
                           content_type="multipart/form-data")
    assert_problem(response, 400)
    assert_problem(upload(client, key, data=b"", filename="empty.jpg"), 400)


def test_oversize_is_413_whether_declared_or_streamed(tmp_path, redis_server):
    from web import create_app

    env = stack_env(tmp_path, redis_server, 14, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"file://{tmp_path / 'storage'}")
    env["MEDIAMILL_MAX_UPLOAD_BYTES"] = "1000"
    app = create_app(Settings.from_env(env))
    client, key = app.test_client(), new_key(app, "alice")
    # Declared: the Content-Length alone is over the limit; refused before reading.
    big = jpeg(size=(64, 48)) + b"\0" * 200_000
    assert "1000 bytes" in assert_problem(upload(client, key, data=big), 413)["detail"]
    # Streamed: within the multipart slack, so only counting the file catches it.
    assert_problem(upload(client, key, data=jpeg() + b"\0" * 5000), 413)
    assert not any(p.is_file() for p in (tmp_path / "storage").rglob("*"))
    assert upload(client, key, data=jpeg(size=(8, 8))).status_code == 202


def test_tenants_are_isolated(api):
    client = api.test_client()
    alice, bob = new_key(api, "alice"), new_key(api, "bob")
    asset_id = upload(client, alice, data=jpeg()).json["id"]
    assert client.get(f"/api/v1/assets/{asset_id}", headers=auth(alice)).status_code == 200
    assert_problem(client.get(f"/api/v1/assets/{asset_id}", headers=auth(bob)), 404)
    assert_problem(client.delete(f"/api/v1/assets/{asset_id}", headers=auth(bob)), 404)
    assert_problem(client.post(f"/api/v1/assets/{asset_id}/reprocess", headers=auth(bob)), 404)
    assert client.get("/api/v1/assets", headers=auth(bob)).json["items"] == []
    assert client.get(f"/api/v1/assets/{asset_id}", headers=auth(alice)).status_code == 200


def test_idempotency_key_replays_the_first_answer(api):
    client, alice, bob = api.test_client(), new_key(api, "alice"), new_key(api, "bob")
    headers = {"Idempotency-Key": "order-42"}
    first = upload(client, alice, data=jpeg(), headers=headers)
    again = upload(client, alice, data=jpeg(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"]
    assert len(client.get("/api/v1/assets", headers=auth(alice)).json["items"]) == 1
    other = upload(client, alice, data=jpeg(color=(0, 0, 255)), headers=headers)
    assert "different file" in assert_problem(other, 422)["detail"]
    # Keys are per tenant: bob's "order-42" is his own.
    assert upload(client, bob, data=jpeg(), headers=headers).json["id"] != first.json["id"]
    storage = Path(api.extensions["mediamill"].settings.storage_url[7:])
    assert len([p for p in storage.rglob("original")]) == 2  # no stray copies


def test_an_idempotency_key_too_long_to_store_is_refused_not_cut(api):
    """Cut to 255 characters, two keys alike in those collided: the second upload was
    answered with the first's asset and never stored."""
    client, key = api.test_client(), new_key(api, "alice")
    first = upload(client, key, data=jpeg(), headers={"Idempotency-Key": "x" * 255})
    assert first.status_code == 202
    refused = upload(client, key, data=jpeg(), headers={"Idempotency-Key": "x" * 255 + "B"})
    assert "at most 255" in assert_problem(refused, 400)["detail"]
    assert len(client.get("/api/v1/assets", headers=auth(key)).json["items"]) == 1


def test_list_is_newest_first_with_cursor_and_status_filter(api):
    client, key = api.test_client(), new_key(api, "alice")
    ids = [upload(client, key, data=jpeg(color=(i, i, i))).json["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/assets?{query}", headers=auth(key)).json
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert len(client.get("/api/v1/assets?status=queued", headers=auth(key)).json["items"]) == 5
    assert client.get("/api/v1/assets?status=completed", headers=auth(key)).json["items"] == []
    assert_problem(client.get("/api/v1/assets?status=weird", headers=auth(key)), 400)
    assert_problem(client.get("/api/v1/assets?cursor=%%%", headers=auth(key)), 400)
    assert_problem(client.get("/api/v1/assets?limit=0", headers=auth(key)), 400)


def test_delete_hides_at_once(api):
    client, key = api.test_client(), new_key(api, "alice")
    asset_id = upload(client, key, data=jpeg()).json["id"]
    assert client.delete(f"/api/v1/assets/{asset_id}", headers=auth(key)).status_code == 204
    assert_problem(client.get(f"/api/v1/assets/{asset_id}", headers=auth(key)), 404)
    assert_problem(client.delete(f"/api/v1/assets/{asset_id}", headers=auth(key)), 404)


def test_unknown_routes_and_methods_are_problems(api):
    client = api.test_client()
    assert_problem(client.get("/api/v1/nothing"), 404)
    assert_problem(client.put("/healthz"), 405)


def test_health_and_readiness(api, tmp_path):
    client = api.test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    from web import create_app

    settings = replace(api.extensions["mediamill"].settings, broker_url="redis://127.0.0.1:1/0")
    down = create_app(settings).test_client().get("/readyz")
    assert "broker unreachable" in assert_problem(down, 503)["detail"]


def test_create_api_key_command_on_an_empty_database(tmp_path):
    env = stack_env(tmp_path, "redis://127.0.0.1:6379", 0, f"sqlite:///{tmp_path / 'new.db'}",
                    f"file://{tmp_path / 'storage'}")
    out = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "web",
                          "create-api-key", "acme"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout.strip().splitlines()[-1])
    assert issued["tenant"] == "acme"
    assert issued["api_key"] and issued["webhook_secret"].startswith("whsec_")


@pytest.mark.parametrize("command", [
    ["flask", "--app", "web", "create-api-key", "x"],
    ["celery", "-A", "tasks", "worker", "-Q", "metadata"],
])
def test_bad_setting_stops_the_process_with_one_line(tmp_path, command):
    env = stack_env(tmp_path, "redis://127.0.0.1:6379", 0, "mysql://nope",
                    f"file://{tmp_path / 'storage'}")
    argv = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "DATABASE_URL" in lines[0] and "Traceback" not in out.stderr


S3_DOWN = {"MEDIAMILL_STORAGE_URL": "s3://bucket", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "secret", "MEDIAMILL_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
RELEASE = ["flask", "--app", "web", "release"]


@pytest.mark.parametrize(("variable", "value", "command", "extra"), [
    ("DATABASE_URL", "postgresql://u:secret@127.0.0.1:1/db", RELEASE, {}),
    ("DATABASE_URL", "sqlite:////proc/nope/x.db", ["flask", "--app", "web", "create-api-key",
                                                   "x"], {}),
    ("MEDIAMILL_STORAGE_URL", "file:///proc/nope", RELEASE, {}),
    ("MEDIAMILL_STORAGE_URL", "file:///proc/nope", ["celery", "-A", "tasks", "worker", "-Q",
                                                    "metadata", "--pool", "solo"], {}),
    ("DATABASE_URL", "postgresql://u:secret@127.0.0.1:1/db", ["celery", "-A", "tasks", "beat"],
     {}),  # beat too: it sent upkeep for ever to workers that had all stopped
    ("MEDIAMILL_S3_ENDPOINT_URL", "http://127.0.0.1:1", RELEASE, S3_DOWN),  # bucket unreachable
    ("AWS_DEFAULT_REGION", "bad region!", RELEASE, S3_DOWN),
])
def test_unreachable_database_or_storage_stops_with_one_line(tmp_path, variable, value, command,
                                                             extra):
    env = stack_env(tmp_path, "redis://127.0.0.1:6379", 0, f"sqlite:///{tmp_path / 'db'}",
                    f"file://{tmp_path / 'storage'}")
    env.update(extra)
    env[variable] = value
    argv = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    line = [x for x in out.stderr.splitlines() if x.startswith("mediamill: cannot")]
    assert len(line) == 1 and variable in line[0], out.stderr[-2000:]
    assert "secret" not in out.stderr  # the password is not printed


@pytest.mark.parametrize(("variable", "value"), [
    ("MEDIAMILL_MAX_UPLOAD_BYTES", "abc"),
    ("DATABASE_URL", "postgresql://u:secret@127.0.0.1:1/db"),
])
def test_web_with_a_bad_setting_stops_with_one_line(tmp_path, variable, value):
    """The Procfile's gunicorn checks in its master: without that, gunicorn boots a new
    worker each time one exits, or halts with a traceback of its own."""
    env = stack_env(tmp_path, "redis://127.0.0.1:6379", 0, f"sqlite:///{tmp_path / 'db'}",
                    f"file://{tmp_path / 'storage'}")
    env[variable] = value
    procfile = (ROOT / "Procfile").read_text().splitlines()
    web = next(line for line in procfile if line.startswith("web:"))
    assert '--config python:config.gunicorn' in web
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    out = subprocess.run([gunicorn, "web:create_app()", "--config", "python:config.gunicorn",
                          "--bind", "127.0.0.1:0", "--workers", "2"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0, out.stderr[-2000:]  # one line, nothing else
    assert variable in out.stderr and "secret" not in out.stderr


def test_a_missing_bucket_stops_web_and_workers_but_release_makes_it(tmp_path, s3_endpoint):
    """A mistyped bucket started every process and answered each upload 500 with a
    traceback; only /readyz said why. `release` is the step that creates it."""
    bucket = f"missing-{tmp_path.name[-8:].lower().replace('_', '-')}"
    env = stack_env(tmp_path, "redis://127.0.0.1:6379", 0, f"sqlite:///{tmp_path / 'db'}",
                    f"s3://{bucket}", s3_endpoint)
    gunicorn = [str(BIN / "gunicorn"), "web:create_app()", "--config", "python:config.gunicorn",
                "--bind", "127.0.0.1:0"]
    worker = [str(BIN / "celery"), "-A", "tasks", "worker", "-Q", "metadata", "--pool", "solo"]
    for argv in (gunicorn, worker):
        out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 3, out.stderr[-2000:]
        line = [x for x in out.stderr.splitlines() if x.startswith("mediamill:")]
        assert len(line) == 1 and "MEDIAMILL_STORAGE_URL" in line[0] and bucket in line[0]
        assert "does not exist" in line[0] and "Traceback" not in out.stderr
    out = subprocess.run([str(BIN / "flask"), "--app", "web", "release"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"bucket {bucket} created" in out.stdout, out.stderr[-2000:]


def test_a_bucket_gone_after_start_is_503_not_500(tmp_path, redis_server, s3_endpoint):
    from web import create_app

    bucket = make_bucket(s3_endpoint)
    env = stack_env(tmp_path, redis_server, 14, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"s3://{bucket}", s3_endpoint)
    app = create_app(Settings.from_env(env))
    client, key = app.test_client(), new_key(app, "alice")
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).delete_bucket(Bucket=bucket)
    response = upload(client, key, data=jpeg())
    assert assert_problem(response, 503)["detail"].startswith("Storage or the database")
    assert "does not exist" in client.get("/readyz").json["detail"]


def test_storage_down_during_upload_is_503_not_500(tmp_path, redis_server):
    from web import create_app

    # An S3 endpoint where nothing listens: every storage call fails to connect.
    env = stack_env(tmp_path, redis_server, 14, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    "s3://nowhere", "http://127.0.0.1:9")
    app = create_app(Settings.from_env(env))
    client, key = app.test_client(), new_key(app, "alice")
    response = upload(client, key, data=jpeg())
    assert assert_problem(response, 503)["detail"].startswith("Storage or the database")
    assert response.headers["Retry-After"] == "5"
    assert client.get("/api/v1/assets", headers=auth(key)).json["items"] == []


@pytest.mark.parametrize("body", [
    b"not multipart at all",
    b'--B\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n--B--\r\n',
    b'--B\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"x" * 9000 + b"\r\n--B--\r\n",
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n\xff\xd8\xff'
    + b"\0" * 5000,  # cut off before the closing boundary
])
def test_malformed_multipart_is_400(api, body):
    client, key = api.test_client(), new_key(api, "alice")
    response = client.post("/api/v1/assets", data=body, headers={
        **auth(key), "Content-Type": "multipart/form-data; boundary=B"})
    assert_problem(response, 400)
    storage = Path(api.extensions["mediamill"].settings.storage_url[7:])
    assert not any(p.is_file() for p in storage.rglob("*"))


def test_sweep_forgets_old_idempotency_keys_and_delivery_logs(api):
    from datetime import timedelta

    from media.records import Delivery, IdempotencyKey, utcnow

    client, key = api.test_client(), new_key(api, "alice")
    first = upload(client, key, data=jpeg(), headers={"Idempotency-Key": "k1"}).json
    services = api.extensions["mediamill"]
    with services.db.session() as session:
        record = session.query(IdempotencyKey).one()
        record.created_at = utcnow() - timedelta(hours=25)
        tenant_id = record.tenant_id
        for age, status in ((40, "delivered"), (40, "pending"), (5, "failed")):
            session.add(Delivery(message_id="m", tenant_id=tenant_id, asset_id=first["id"],
                                 url="https://example.com", event_type="asset.completed",
                                 body="{}", status=status,
                                 created_at=utcnow() - timedelta(days=age)))
    celery_app = api.extensions["celery"]
    celery_app.loader.import_default_modules()
    swept = celery_app.tasks["upkeep.sweep"].apply().get()
    assert (swept["idempotency_keys"], swept["delivery_logs"]) == (1, 1)
    with services.db.session() as session:
        assert session.query(IdempotencyKey).count() == 0
        assert sorted(d.status for d in session.query(Delivery)) == ["failed", "pending"]
    again = upload(client, key, data=jpeg(), headers={"Idempotency-Key": "k1"}).json
    assert again["id"] != first["id"]  # the key is free again after 24 h


def test_openapi_document_is_valid_and_covers_every_api_route(api):
    from openapi_spec_validator import validate

    answer = api.test_client().get("/api/v1/openapi.json")  # no key needed
    assert answer.status_code == 200
    spec = answer.json
    validate(spec)
    documented = {(path, method.upper()) for path, ops in spec["paths"].items()
                  for method in ops}
    served = set()
    for rule in api.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/healthz", "/readyz", "/metrics")):
            path = rule.rule.replace("<", "{").replace(">", "}")
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


def _json_post(client, key, path, raw: bytes | str):
    return client.post(path, data=raw, headers={**auth(key), "Content-Type": "application/json"})


def test_hostile_json_bodies_get_4xx_problems_not_500(api):
    """Each of these answered 500 once: a value of the wrong type, a number JSON allows but
    int() does not, a lone surrogate the database cannot store, a URL urlsplit rejects."""
    client, key = api.test_client(), new_key(api, "alice")
    assert_problem(_json_post(client, key, "/api/v1/uploads", r'{"filename":"\ud800","size":10}'),
                   400)
    assert_problem(_json_post(client, key, "/api/v1/uploads", '{"filename":"a\\u0000b","size":9}'),
                   400)
    assert_problem(_json_post(client, key, "/api/v1/uploads",
                              '{"filename":"' + "x" * 5000 + '","size":9}'), 400)
    created = _json_post(client, key, "/api/v1/uploads", '{"filename":"a.jpg","size":10}')
    assert created.status_code == 201
    upload_id = created.json["id"]
    for parts in ('[{"part_number":Infinity,"etag":"a"}]', '[{"part_number":1e400,"etag":"a"}]',
                  '[{"part_number":true,"etag":"a"}]', '[{"part_number":1,"etag":5}]', '7'):
        assert_problem(_json_post(client, key, f"/api/v1/uploads/{upload_id}/complete",
                                  '{"parts":' + parts + "}"), 400)
    assert_problem(_json_post(client, key, f"/api/v1/uploads/{upload_id}/complete",
                              '{"parts":[{"part_number":1,"etag":"a"}],"webhook_url":5}'), 400)
    assert_problem(_json_post(client, key, f"/api/v1/uploads/{upload_id}/parts",
                              '{"part_numbers":[true]}'), 400)
    signed = _json_post(client, key, f"/api/v1/uploads/{upload_id}/parts",
                        '{"part_numbers":[1,1,1]}')
    assert list(signed.json["urls"]) == ["1"]
    for body in ("[1]", '"x"', "5"):
        assert_problem(_json_post(client, key, "/api/v1/webhooks", body), 400)
    refused = _json_post(client, key, "/api/v1/webhooks",
                         '{"url":"http://[::1","events":["asset.completed"]}')
    assert "malformed" in assert_problem(refused, 422)["detail"]
    loopback = _json_post(client, key, "/api/v1/webhooks", '{"url":"http://127.0.0.1/"}')
    assert assert_problem(loopback, 422)["detail"].startswith("127.0.0.1 is refused: 127.0.0.1 is")
    assert_problem(upload(client, key, data=jpeg(), filename="a.jpg", webhook_url="http://[zz/"),
                   422)
    assert_problem(client.get("/api/v1/assets?limit=%C2%B2", headers=auth(key)), 400)


def test_a_nul_in_the_uploaded_filename_is_400(api):
    client, key = api.test_client(), new_key(api, "alice")
    assert_problem(upload(client, key, data=jpeg(), filename="a\0b.jpg"), 400)
    storage = Path(api.extensions["mediamill"].settings.storage_url[7:])
    assert not any(p.is_file() for p in storage.rglob("*"))


def test_event_stream_resumed_after_the_final_event_ends_at_once(api):
    """An EventSource reconnects with the last id after the stream closes: with nothing left
    to send for a final asset the answer is 204, which tells it to stop reconnecting (a 200
    that ends at once had it reconnect every 2 s for ever), not a thread held with
    keep-alives."""
    from media.records import Asset

    client, key = api.test_client(), new_key(api, "alice")
    asset_id = upload(client, key, data=jpeg()).json["id"]
    with api.extensions["mediamill"].db.session() as session:
        from media import assets

        asset = session.get(Asset, asset_id)
        for job in asset.jobs:
            assets.fail_job(session, job.id, "The test failed it.", api.extensions[
                "mediamill"].outbox)
    first = client.get(f"/api/v1/assets/{asset_id}/events", headers=auth(key))
    ids = [int(line[4:]) for line in first.get_data(as_text=True).splitlines()
           if line.startswith("id: ")]
    assert ids, first.data
    again = client.get(f"/api/v1/assets/{asset_id}/events", buffered=False,
                       headers={**auth(key), "Last-Event-ID": str(ids[-1])})
    assert (again.status_code, again.get_data()) == (204, b"")
    again.close()
    huge = client.get(f"/api/v1/assets/{asset_id}/events",
                      headers={**auth(key), "Last-Event-ID": "9" * 30})
    assert_problem(huge, 400)
    other = client.get(f"/api/v1/assets/{asset_id}/events",
                       headers={**auth(new_key(api, "bob")), "Last-Event-ID": str(ids[-1])})
    assert_problem(other, 404)


def _run(api, asset_id: str, start: bool = True, complete: int = 0) -> int:
    """Start the asset's jobs and complete the first `complete` of them, through the
    app's outbox as the workers do; the asset's latest sequence number."""
    from media import assets
    from media.records import Asset

    mm = api.extensions["mediamill"]
    with mm.db.session() as session:
        job_ids = sorted(job.id for job in session.get(Asset, asset_id).jobs)
    for job_id in job_ids if start else ():
        with mm.db.session() as session:
            assets.start_job(session, job_id, "w", f"t-{job_id}", outbox=mm.outbox)
    for job_id in job_ids[:complete]:
        with mm.db.session() as session:
            assets.complete_job(session, job_id, [], None, mm.outbox)
    with mm.db.session() as session:
        return session.get(Asset, asset_id).seq


def _sse(chunks) -> list[tuple[int, str, dict]]:
    """The events of an SSE text as (id, event, data)."""
    text = "".join(c.decode() for c in chunks)
    blocks = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
              for block in text.split("\n\n")]
    return [(int(b["id"]), b["event"], json.loads(b["data"])) for b in blocks if "data" in b]


def test_event_stream_ends_after_every_event_of_the_final_change(api):
    """The last job's completion records two state events in one transaction
    (asset.<job>.completed, then asset.completed): a stream open before it sends both, so
    the client's last id is the asset's latest event, not one short of it."""
    client, key = api.test_client(), new_key(api, "alice")
    asset_id = upload(client, key, data=jpeg()).json["id"]
    _run(api, asset_id, complete=1)
    stream = client.get(f"/api/v1/assets/{asset_id}/events", buffered=False,
                        headers=auth(key))
    chunks = iter(stream.response)
    assert [e[2]["status"] for e in _sse(itertools.islice(chunks, 2))] == ["processing"]
    latest = _run(api, asset_id, start=False, complete=2)
    rest = _sse(chunks)  # ends by itself: nothing is waited for after the final change
    stream.close()
    assert [e[2]["status"] for e in rest] == ["completed", "completed"]
    assert rest[-1][0] == latest


def test_deleting_the_asset_ends_its_open_streams_at_once(api):
    """A stream waiting for the next event ends as soon as its asset is deleted, not at its
    next heartbeat 15 s later."""
    import threading

    from media.events import CHANNEL

    client, key = api.test_client(), new_key(api, "alice")
    asset_id = upload(client, key, data=jpeg()).json["id"]
    stream = client.get(f"/api/v1/assets/{asset_id}/events", buffered=False,
                        headers=auth(key))
    ended = threading.Event()
    reader = threading.Thread(target=lambda: (list(stream.response), ended.set()))
    reader.start()
    redis = api.extensions["mediamill"].redis
    wait_for(lambda: redis.pubsub_numsub(CHANNEL.format(asset_id))[0][1], timeout=10,
             what="the stream to listen")
    assert client.delete(f"/api/v1/assets/{asset_id}", headers=auth(key)).status_code == 204
    promptly = ended.wait(5)
    reader.join(30)
    stream.close()
    assert promptly, "the stream outlived its asset"


def test_an_id_the_stream_never_sent_starts_afresh(api):
    """A Last-Event-ID above the asset's latest event (another deployment's, or a guess)
    is taken as none: the current state first, rather than waiting for an event that
    number may never reach."""
    client, key = api.test_client(), new_key(api, "alice")
    asset_id = upload(client, key, data=jpeg()).json["id"]
    seq = _run(api, asset_id)
    stream = client.get(f"/api/v1/assets/{asset_id}/events", buffered=False,
                        headers={**auth(key), "Last-Event-ID": "99999"})
    assert stream.status_code == 200
    # Two chunks: without the current state the second would be a keep-alive 15 s later.
    (first,) = _sse(itertools.islice(stream.response, 2))
    stream.close()
    assert (first[0], first[1], first[2]["status"]) == (seq, "state", "processing")
    latest = _run(api, asset_id, start=False, complete=2)
    done = client.get(f"/api/v1/assets/{asset_id}/events",
                      headers={**auth(key), "Last-Event-ID": "99999"})
    assert [(e[0], e[2]["status"]) for e in _sse([done.data])] == [(latest, "completed")]


def test_deeply_nested_json_is_400_not_500(api):
    """json.loads raises RecursionError, not ValueError, for nesting deeper than the stack:
    get_json(silent=True) let it through as a 500."""
    client, key = api.test_client(), new_key(api, "alice")
    upload_id = _json_post(client, key, "/api/v1/uploads",
                           '{"filename":"a.jpg","size":10}').json["id"]
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/v1/uploads", "/api/v1/webhooks", f"/api/v1/uploads/{upload_id}/parts",
                 f"/api/v1/uploads/{upload_id}/complete"):
        assert_problem(_json_post(client, key, path, deep), 400)
        assert_problem(_json_post(client, key, path, '{"x":' + deep + "}"), 400)


def test_json_bodies_are_capped_above_the_largest_complete(api):
    """A complete naming all 10,000 parts, indented, is under the cap and read (here: its
    parts are not uploaded); a body over the cap is 413 from its Content-Length alone."""
    client, key = api.test_client(), new_key(api, "alice")
    upload_id = _json_post(client, key, "/api/v1/uploads",
                           '{"filename":"a.jpg","size":10}').json["id"]
    parts = [{"part_number": n, "etag": '"' + "0" * 32 + '"'} for n in range(1, 10_001)]
    largest = json.dumps({"parts": parts}, indent=8)
    assert len(largest) > 2**20  # more than the 1 MiB a first guess would allow
    answer = _json_post(client, key, f"/api/v1/uploads/{upload_id}/complete", largest)
    assert "upload the missing parts" in assert_problem(answer, 400)["detail"]
    over = '{"filename":"a.jpg","size":10}' + " " * 2 * 2**20
    problem = assert_problem(_json_post(client, key, "/api/v1/uploads", over), 413)
    assert problem["detail"] == f"A JSON request body is at most {2 * 2**20} bytes."


def test_form_fields_are_few_and_only_those_read_are_kept(api):
    """15,000 fields of 8 KiB before the file were all kept in memory (120 MB)."""
    client, key = api.test_client(), new_key(api, "alice")
    fields = {f"field{n}": "x" * 8192 for n in range(20)}
    problem = assert_problem(upload(client, key, data=jpeg(), **fields), 400)
    assert problem["title"] == "Too many form fields"
    # a few fields the service does not read (Uppy sends its meta fields) are no bother
    taken = upload(client, key, data=jpeg(), name="a.jpg", type="image/jpeg")
    assert taken.status_code == 202, taken.data
    assert len(client.get("/api/v1/assets", headers=auth(key)).json["items"]) == 1


def test_idempotency_key_remembers_only_an_answer_that_made_an_asset(api):
    """A refusal (415, 400, 413) made nothing and is not remembered: the key is free for the
    corrected request, as Stripe does for requests that fail validation. Once a key has
    made an asset, any other file with it is the contract's 422, media or not."""
    client, key = api.test_client(), new_key(api, "alice")
    headers = {"Idempotency-Key": "K"}
    text = b"hello, this is just text\n"
    assert_problem(upload(client, key, data=text, filename="a.txt", headers=headers), 415)
    assert_problem(upload(client, key, data=b"", filename="a.jpg", headers=headers), 400)
    first = upload(client, key, data=jpeg(), headers=headers)
    assert first.status_code == 202
    again = upload(client, key, data=jpeg(), headers=headers)
    assert (again.status_code, again.json["id"]) == (202, first.json["id"])
    for data in (text, b"", jpeg(color=(0, 0, 255))):
        other = upload(client, key, data=data, filename="a.txt", headers=headers)
        assert "different file" in assert_problem(other, 422)["detail"]
    assert len(client.get("/api/v1/assets", headers=auth(key)).json["items"]) == 1


def test_a_preamble_of_megabytes_is_refused_not_held(api):
    """Bytes before the first boundary are not a part: the decoder held them all (a 20 MB
    preamble was 124 MB at peak). Now past a few chunks it is a malformed upload."""
    client, key = api.test_client(), new_key(api, "alice")
    part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + jpeg() + b"\r\n--XyZ--\r\n")
    for preamble, status in ((b"", 202), (b"p" * 100_000 + b"\r\n", 202),
                             (b"p" * 3_000_000 + b"\r\n", 400)):
        answer = client.post("/api/v1/assets", data=preamble + part, headers=auth(key),
                             content_type="multipart/form-data; boundary=XyZ")
        assert answer.status_code == status, answer.data[:300]
    assert "outside the parts" in answer.json["detail"]
