"""One contract, every backend: FileStorage on a directory and S3Storage on moto_server.

Each test in the first part runs against both backends through the `storage` fixture;
what only one backend can show (signed local links, presigned S3 links, bucket checks)
follows in its own section.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from media.storage import BadParts, FileStorage, S3Storage, Storage, _transfer_config

SECRET = "contract-test-secret-0123456789"
MiB = 1024 * 1024
BIG = 17 * MiB + 123  # above the multipart threshold, not a whole number of parts
UNSAFE_KEYS = ["../escape", "a/../../escape", "a/..", "/etc/passwd", "/abs/key", "", "a//b",
               ".hidden", "a/\x00b"]


@pytest.fixture(scope="module")
def s3_client(s3_endpoint):
    """One client made the way S3Storage makes it, shared to keep the suite fast (making a
    boto3 client costs a few hundred milliseconds)."""
    return S3Storage("unused", "", s3_endpoint).client


@pytest.fixture
def new_s3(s3_endpoint, s3_client):
    """Make an S3Storage on a fresh bucket (or on `bucket`), reusing the shared client."""

    def make(prefix: str = "prefix", bucket: str | None = None) -> S3Storage:
        if bucket is None:
            bucket = f"contract-{uuid.uuid4().hex[:12]}"
            s3_client.create_bucket(Bucket=bucket)
        store = S3Storage(bucket, prefix, s3_endpoint)
        store._client, store._pid = s3_client, os.getpid()
        return store

    return make


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path) -> Storage:
    """A fresh, empty store of each kind."""
    if request.param == "file":
        return FileStorage(tmp_path / "storage", SECRET)
    return request.getfixturevalue("new_s3")()


@pytest.fixture(scope="module")
def big_bytes() -> bytes:
    return os.urandom(BIG)


class ReadOnly:
    """A stream with only read(): a sized read answers at most `most` bytes, like a socket
    or a request body; read() with no size answers all that is left."""

    def __init__(self, data: bytes, most: int = 64 * 1024) -> None:
        self._data = io.BytesIO(data)
        self._most = most

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._data.read()
        return self._data.read(min(size, self._most))


class Exploding(ReadOnly):
    """A stream that fails after `after` bytes, like a client that hangs up."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self._left = after

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        self._left -= len(chunk)
        if self._left < 0:
            raise ConnectionResetError("client went away")
        return chunk


def read_all(storage: Storage, key: str) -> bytes:
    with contextlib.closing(storage.open(key)) as fh:
        return fh.read()


def fetch(storage: Storage, key: str, url: str, filename: str = "") -> bytes:
    """What following `url` gives: S3 over HTTP; a local link is checked as the app does."""
    if isinstance(storage, S3Storage):
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, response.text[:300]
        return response.content
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert unquote(parts.path) == f"/files/{key}"
    assert query.get("filename", "") == filename
    assert storage.verify(key, query["expires"], query["signature"], query.get("filename", ""))
    return read_all(storage, key)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the shared contract -------------------------------------------------------------------


def test_upload_stream_then_open_and_download(storage, tmp_path):
    storage.upload("assets/a1/original", io.BytesIO(b"hello world"), "text/plain")

    assert read_all(storage, "assets/a1/original") == b"hello world"
    target = tmp_path / "copy.bin"
    storage.download("assets/a1/original", target)
    assert target.read_bytes() == b"hello world"


def test_open_streams_in_pieces(storage):
    storage.upload("k/stream", io.BytesIO(b"0123456789"), "application/octet-stream")

    with contextlib.closing(storage.open("k/stream")) as fh:
        assert fh.read(3) == b"012"
        assert fh.read(4) == b"3456"
        assert fh.read() == b"789"


def test_upload_from_a_stream_with_only_read(storage):
    data = os.urandom(300_000)
    storage.upload("assets/a2/original", ReadOnly(data, most=7_000), "image/jpeg")

    assert read_all(storage, "assets/a2/original") == data


def test_upload_file(storage, tmp_path):
    source = tmp_path / "thumb.webp"
    source.write_bytes(b"RIFF....WEBP" * 100)
    storage.upload_file("assets/a3/thumb_256.webp", source, "image/webp")

    assert read_all(storage, "assets/a3/thumb_256.webp") == source.read_bytes()


def test_empty_object_round_trips(storage, tmp_path):
    storage.upload("k/empty", io.BytesIO(b""), "application/octet-stream")

    assert storage.exists("k/empty")
    assert read_all(storage, "k/empty") == b""


def test_upload_overwrites(storage):
    storage.upload("k/v", io.BytesIO(b"first version"), "text/plain")
    storage.upload("k/v", io.BytesIO(b"second"), "text/plain")

    assert read_all(storage, "k/v") == b"second"


def test_exists(storage):
    assert not storage.exists("assets/none/original")
    storage.upload("assets/a4/original", io.BytesIO(b"x"), "text/plain")

    assert storage.exists("assets/a4/original")
    assert not storage.exists("assets/a4")  # a folder of objects is not an object
    assert not storage.exists("assets/a4/orig")


def test_missing_key_is_file_not_found(storage, tmp_path):
    target = tmp_path / "never.bin"
    with pytest.raises(FileNotFoundError):
        storage.open("assets/missing/original")
    with pytest.raises(FileNotFoundError):
        storage.download("assets/missing/original", target)
    assert not target.exists()


def test_delete_prefix_counts_and_spares_neighbours(storage):
    for key in ("assets/a/original", "assets/a/thumb_256.webp", "assets/a/deep/er/x.bin",
                "assets/ab/original", "assets/b/original", "other/a/original"):
        storage.upload(key, io.BytesIO(key.encode()), "text/plain")

    assert storage.delete_prefix("assets/a") == 3

    for key in ("assets/a/original", "assets/a/thumb_256.webp", "assets/a/deep/er/x.bin"):
        assert not storage.exists(key)
    for key in ("assets/ab/original", "assets/b/original", "other/a/original"):
        assert read_all(storage, key) == key.encode()


def test_delete_prefix_accepts_a_trailing_slash(storage):
    storage.upload("assets/c/original", io.BytesIO(b"x"), "text/plain")

    assert storage.delete_prefix("assets/c/") == 1
    assert not storage.exists("assets/c/original")


def test_deleting_what_is_not_there_is_not_an_error(storage):
    assert storage.delete_prefix("assets/never-was") == 0
    storage.upload("assets/d/original", io.BytesIO(b"x"), "text/plain")
    assert storage.delete_prefix("assets/d") == 1
    assert storage.delete_prefix("assets/d") == 0


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_refused(storage, tmp_path, key):
    with pytest.raises(ValueError):
        storage.upload(key, io.BytesIO(b"x"), "text/plain")
    with pytest.raises(ValueError):
        storage.upload_file(key, Path(__file__), "text/plain")
    with pytest.raises(ValueError):
        storage.open(key)
    with pytest.raises(ValueError):
        storage.download(key, tmp_path / "out")
    with pytest.raises(ValueError):
        storage.exists(key)
    with pytest.raises(ValueError):
        storage.url(key, 60)
    with pytest.raises(ValueError):
        storage.delete_prefix(key)


def test_a_failed_upload_leaves_nothing(storage):
    storage.upload("k/keep", io.BytesIO(b"old"), "text/plain")
    with pytest.raises(ConnectionResetError):
        storage.upload("k/new", Exploding(b"x" * 500_000, after=200_000), "text/plain")
    with pytest.raises(ConnectionResetError):
        storage.upload("k/keep", Exploding(b"y" * 500_000, after=200_000), "text/plain")

    assert not storage.exists("k/new")
    assert read_all(storage, "k/keep") == b"old"
    if isinstance(storage, FileStorage):  # no temporary file left behind either
        assert sorted(p.name for p in (storage.root / "k").iterdir()) == ["keep"]


def test_url_serves_the_bytes(storage):
    storage.upload("assets/e/thumb_256.jpg", io.BytesIO(b"\xff\xd8\xffpixels"), "image/jpeg")

    url = storage.url("assets/e/thumb_256.jpg", 300)

    assert fetch(storage, "assets/e/thumb_256.jpg", url) == b"\xff\xd8\xffpixels"


def test_url_with_a_download_name(storage):
    storage.upload("assets/f/original", io.BytesIO(b"payload"), "image/png")
    name = 'Ferien "2024" – Straße.png'

    url = storage.url("assets/f/original", 300, filename=name)

    assert fetch(storage, "assets/f/original", url, filename=name) == b"payload"


def test_source_is_what_ffmpeg_reads_a_video_from(storage, tmp_path):
    """A video's poster is made from its original where it is stored: ffprobe and ffmpeg
    read the file, or seek through the presigned URL (the index is at the end here)."""
    from media import video

    clip = tmp_path / "clip.mp4"  # no +faststart: the index comes after the frames
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25", "-t", "3", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)
    storage.upload_file("assets/v/original", clip, "video/mp4")

    source = storage.source("assets/v/original")
    info = video.probe(source)
    poster = video.poster(source, tmp_path / "poster.png", info)

    assert isinstance(source, Path if isinstance(storage, FileStorage) else str)
    assert (info.width, info.height) == (320, 240) and info.duration == pytest.approx(3, abs=0.1)
    assert poster.stat().st_size > 0
    with pytest.raises(FileNotFoundError):
        storage.source("assets/v/missing")


def test_multipart_sized_stream_round_trips(storage, big_bytes):
    storage.upload("big/stream", ReadOnly(big_bytes), "video/mp4")

    assert sha256(read_all(storage, "big/stream")) == sha256(big_bytes)
    assert_sent_in_parts(storage, "big/stream")


def test_multipart_sized_file_round_trips(storage, big_bytes, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(big_bytes)
    storage.upload_file("big/file", source, "video/mp4")
    target = tmp_path / "back.bin"
    storage.download("big/file", target)

    assert sha256(target.read_bytes()) == sha256(big_bytes)
    assert_sent_in_parts(storage, "big/file")


def assert_sent_in_parts(storage: Storage, key: str) -> None:
    """On S3, a large upload must be multipart (its ETag ends in -N): memory stays bounded
    and the 5 GiB single-PUT limit does not apply. Even short-reading streams."""
    threshold = _transfer_config().multipart_threshold
    assert threshold < BIG, "make BIG larger than the multipart threshold"
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + key)
        etag = head["ETag"].strip('"')
        assert "-" in etag and etag.rsplit("-", 1)[1].isdigit(), etag


def test_check_passes(storage):
    storage.check()


# --- direct uploads: multipart with presigned part URLs -------------------------------------


def put_part(store, url: str, data: bytes) -> str:
    """What a browser does with a part URL: PUT the bytes, keep the ETag. For FileStorage the
    URL is served by the web app (web/api/uploads.py), which verifies it and writes the part."""
    if isinstance(store, FileStorage):
        parts = urlsplit(url)
        _, _, upload_id, number = parts.path.strip("/").split("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert store.verify_part(upload_id, int(number), query["expires"], query["signature"])
        return store.write_part(upload_id, int(number), io.BytesIO(data), len(data))
    response = requests.put(url, data=data, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def test_multipart_parts_listed_then_completed(storage):
    key = "assets/m/original"
    data = os.urandom(5 * MiB) + b"tail"
    upload_id = storage.create_multipart(key, "application/octet-stream")
    second = put_part(storage, storage.presign_part(key, upload_id, 2, 300), data[5 * MiB:])
    assert not storage.exists(key)
    first = put_part(storage, storage.presign_part(key, upload_id, 1, 300), data[:5 * MiB])

    listed = storage.list_parts(key, upload_id)
    assert [(p.part_number, p.size) for p in listed] == [(1, 5 * MiB), (2, 4)]
    assert [p.etag.strip('"') for p in listed] == [first.strip('"'), second.strip('"')]
    assert first.strip('"') == hashlib.md5(data[:5 * MiB]).hexdigest()

    storage.complete_multipart(key, upload_id, [(1, first), (2, second)])
    with storage.open(key) as stream:
        assert stream.read() == data


def test_multipart_part_sent_again_replaces_it(storage):
    key = "assets/r/original"
    upload_id = storage.create_multipart(key, "application/octet-stream")
    url = storage.presign_part(key, upload_id, 1, 300)
    put_part(storage, url, b"first try")
    etag = put_part(storage, url, b"second")

    assert [(p.part_number, p.size) for p in storage.list_parts(key, upload_id)] == [(1, 6)]
    storage.complete_multipart(key, upload_id, [(1, etag)])
    with storage.open(key) as stream:
        assert stream.read() == b"second"


def test_multipart_complete_with_a_wrong_etag_is_refused(storage):
    key = "assets/w/original"
    upload_id = storage.create_multipart(key, "application/octet-stream")
    put_part(storage, storage.presign_part(key, upload_id, 1, 300), b"abc")

    with pytest.raises(BadParts):
        storage.complete_multipart(key, upload_id, [(1, '"' + "0" * 32 + '"')])
    assert not storage.exists(key)


def test_multipart_abort_frees_the_parts(storage):
    key = "assets/a/original"
    upload_id = storage.create_multipart(key, "application/octet-stream")
    put_part(storage, storage.presign_part(key, upload_id, 1, 300), b"abc")

    storage.abort_multipart(key, upload_id)
    storage.abort_multipart(key, upload_id)  # again: not an error

    with pytest.raises(FileNotFoundError):
        storage.list_parts(key, upload_id)
    assert not storage.exists(key)


# --- local files: signed links -------------------------------------------------------------


def local_link(storage: FileStorage, key: str, expires_in: int = 300, filename: str = ""):
    query = parse_qs(urlsplit(storage.url(key, expires_in, filename or None)).query)
    return query["expires"][0], query["signature"][0]


def test_file_link_verifies(tmp_path):
    store = FileStorage(tmp_path, SECRET)
    expires, signature = local_link(store, "assets/g/original")

    assert store.verify("assets/g/original", expires, signature)
    assert int(expires) == pytest.approx(time.time() + 300, abs=5)


@pytest.mark.parametrize("tamper", ["key", "expires", "signature", "filename", "secret"])
def test_file_link_tampered_is_refused(tmp_path, tamper):
    store = FileStorage(tmp_path, SECRET)
    key, filename = "assets/g/original", "photo.jpg"
    expires, signature = local_link(store, key, filename=filename)
    assert store.verify(key, expires, signature, filename)

    if tamper == "key":
        key = "assets/h/original"
    elif tamper == "expires":
        expires = str(int(expires) + 3600)
    elif tamper == "signature":
        signature = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    elif tamper == "filename":
        filename = "other.jpg"
    else:
        store = FileStorage(tmp_path, "another-secret-0123456789")

    assert not store.verify(key, expires, signature, filename)


@pytest.mark.parametrize("expires", ["", "soon", "-5", "1e12", "9" * 12 + "x"])
def test_file_link_with_malformed_expiry_is_refused(tmp_path, expires):
    store = FileStorage(tmp_path, SECRET)
    _, signature = local_link(store, "k")

    assert not store.verify("k", expires, signature)


def test_file_link_to_an_unsafe_key_is_refused(tmp_path):
    store = FileStorage(tmp_path, SECRET)
    expires, signature = local_link(store, "k")

    with pytest.raises(ValueError):
        store.verify("../k", expires, signature)


def test_file_link_expired_is_refused(tmp_path):
    store = FileStorage(tmp_path, SECRET)
    expires, signature = local_link(store, "k", expires_in=-1)

    assert not store.verify("k", expires, signature)


def test_file_objects_live_under_the_root(tmp_path):
    store = FileStorage(tmp_path / "root", SECRET)
    store.upload("assets/i/original", io.BytesIO(b"x"), "text/plain")

    assert (tmp_path / "root" / "assets" / "i" / "original").read_bytes() == b"x"


def test_file_check_makes_the_root(tmp_path):
    store = FileStorage(tmp_path / "not" / "yet", SECRET)
    store.check()

    assert (tmp_path / "not" / "yet").is_dir()


# --- S3: presigned links, the prefix, the bucket ------------------------------------------


def test_s3_objects_live_under_the_prefix_with_their_type(new_s3, s3_client):
    store = new_s3("media")
    store.upload("assets/j/original", io.BytesIO(b"x"), "image/png")

    listing = s3_client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listing] == ["media/assets/j/original"]
    head = s3_client.head_object(Bucket=store.bucket, Key="media/assets/j/original")
    assert head["ContentType"] == "image/png"


def test_s3_delete_prefix_stays_inside_its_own_prefix(new_s3):
    mine = new_s3("media")
    other = new_s3("", bucket=mine.bucket)
    mine.upload("assets/k/original", io.BytesIO(b"mine"), "text/plain")
    other.upload("assets/k/original", io.BytesIO(b"other"), "text/plain")

    assert mine.delete_prefix("assets/k") == 1
    assert read_all(other, "assets/k/original") == b"other"


def test_s3_presigned_download_name(new_s3):
    store = new_s3("media")
    store.upload("assets/l/original", io.BytesIO(b"x"), "image/jpeg")

    url = store.url("assets/l/original", 300, filename="Straße 1.jpg")
    response = requests.get(url, timeout=10)

    assert response.status_code == 200
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''Stra%C3%9Fe%201.jpg" in disposition


def test_s3_check_on_a_missing_bucket(new_s3):
    store = new_s3(bucket=f"missing-{uuid.uuid4().hex[:12]}")

    with pytest.raises(FileNotFoundError):
        store.check()


def test_s3_ensure_bucket_creates_once(new_s3):
    store = new_s3(bucket=f"made-{uuid.uuid4().hex[:12]}")

    assert store.ensure_bucket() is True
    assert store.ensure_bucket() is False
    store.check()


def test_s3_client_is_made_once_per_process(s3_endpoint):
    store = S3Storage("any-bucket", "", s3_endpoint)

    assert store.client is store.client


def test_a_bucket_gone_is_storage_unavailable_not_a_missing_object(new_s3, s3_client, tmp_path):
    """HeadObject's 404 has no body: with the bucket gone, a job's download and exists()
    answered "no such object", and the job failed for good ("the original is missing")
    instead of being retried until the bucket is back."""
    from media.errors import StorageUnavailable

    store = new_s3()
    store.upload("assets/a/original", io.BytesIO(b"x" * 10), "image/jpeg")
    assert store.exists("assets/a/original") and not store.exists("assets/a/other")
    with pytest.raises(FileNotFoundError):
        store.download("assets/a/other", tmp_path / "other")
    store.delete_prefix("assets")
    s3_client.delete_bucket(Bucket=store.bucket)
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.exists("assets/a/original")
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.download("assets/a/original", tmp_path / "original")
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.open("assets/a/original")
    with pytest.raises(FileNotFoundError):
        store.check()
    assert store.ensure_bucket() is True and store.check() is None
