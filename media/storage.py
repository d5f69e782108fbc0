"""Object storage: one small interface, an S3 backend (boto3) and a local-directory backend.

Views and tasks never import boto3; they ask `from_settings()` for a Storage. Keys are
built by the service (`assets/{id}/original`), never from user input, and are checked
anyway. Deleting what is not there is not an error.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlencode, urlsplit

from config.settings import Settings
from media.errors import StorageUnavailable

MiB = 1024 * 1024
MAX_PARTS = 10_000
SOURCE_EXPIRES = 600  # seconds a worker's link to an original is valid (a poster job's)
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class Storage(Protocol):
    """What web and workers need from a store of objects."""

    def upload(self, key: str, fileobj: BinaryIO, content_type: str) -> None: ...
    def upload_file(self, key: str, path: Path, content_type: str) -> None: ...
    def download(self, key: str, path: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def source(self, key: str) -> Path | str: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def url(self, key: str, expires_in: int, filename: str | None = None) -> str: ...
    def check(self) -> None: ...
    # Direct uploads: one multipart upload, its parts PUT by the client to presigned URLs.
    def create_multipart(self, key: str, content_type: str) -> str: ...
    def presign_part(self, key: str, upload_id: str, part_number: int,
                     expires_in: int) -> str: ...
    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]: ...
    def complete_multipart(self, key: str, upload_id: str,
                           parts: list[tuple[int, str]]) -> None: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...
    def free_interrupted(self, before: datetime, keep: set[str]) -> int: ...


@dataclass(frozen=True)
class StoredPart:
    """One part of a multipart upload that storage already holds."""

    part_number: int
    etag: str
    size: int


class BadParts(ValueError):
    """The parts named to complete an upload are missing or do not match what is stored."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to free


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"unsafe storage key: {key!r}")
    return key


def from_settings(settings: Settings) -> Storage:
    """The backend MEDIAMILL_STORAGE_URL names."""
    parts = urlsplit(settings.storage_url)
    if parts.scheme == "s3":
        return S3Storage(parts.netloc, parts.path.strip("/"), settings.s3_endpoint_url)
    root = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)
    return FileStorage(root, settings.secret_key)


def sign(secret: str, key: str, expires: int, filename: str = "") -> str:
    """The signature of a local-storage link to `key` valid until `expires` (Unix time)."""
    message = f"{key}\n{expires}\n{filename}".encode()
    mac = hmac.new(secret.encode(), message, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


class FileStorage:
    """Objects as files under one directory; links are signed URLs served by the web app."""

    def __init__(self, root: Path, secret: str) -> None:
        self.root = root.resolve()
        self.secret = secret

    def path(self, key: str) -> Path:
        """The file that holds `key`."""
        return self.root / check_key(key)

    def upload(self, key: str, fileobj: BinaryIO, content_type: str) -> None:
        """Store the stream under `key`, atomically: readers see all of it or nothing."""
        with self._atomic(key) as fh:
            shutil.copyfileobj(fileobj, fh, MiB)

    def upload_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the local file `path` under `key`."""
        with open(path, "rb") as src:
            self.upload(key, src, content_type)

    def download(self, key: str, path: Path) -> None:
        """Copy `key` to the local file `path`."""
        shutil.copyfile(self.path(key), path)

    def open(self, key: str) -> BinaryIO:
        """A binary stream of `key`; FileNotFoundError if absent."""
        return open(self.path(key), "rb")

    def source(self, key: str) -> Path:
        """Where a reader that seeks (ffmpeg) finds `key`: the file itself. FileNotFoundError
        if absent."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`; return how many there were."""
        folder = self.path(prefix.rstrip("/"))
        count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def url(self, key: str, expires_in: int, filename: str | None = None) -> str:
        """A path on this service, signed and expiring, that serves `key` (GET)."""
        return self._signed_link(check_key(key), expires_in, filename or "")

    def verify(self, key: str, expires: str, signature: str, filename: str = "") -> bool:
        """True when a GET link to `key` is ours and unexpired; ValueError for an unsafe key."""
        return self._signature_ok(check_key(key), expires, signature, filename)

    def check(self) -> None:
        """Raise StorageUnavailable unless the root is a writable directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"storage directory {self.root} is not writable")

    def create_multipart(self, key: str, content_type: str) -> str:
        """Start a multipart upload to `key`; its parts wait in a private folder."""
        check_key(key)
        upload_id = uuid.uuid4().hex
        self._parts_dir(upload_id).mkdir(parents=True)
        return upload_id

    def presign_part(self, key: str, upload_id: str, part_number: int,
                     expires_in: int) -> str:
        """A signed, expiring PUT link on this service for one part."""
        check_key(key)
        self._parts_dir(upload_id)
        return self._signed_link(_part_resource(upload_id, part_number), expires_in)

    def verify_part(self, upload_id: str, part_number: int, expires: str,
                    signature: str) -> bool:
        """True when a part link is ours, unexpired, and its upload is still open."""
        return (self._signature_ok(_part_resource(upload_id, part_number), expires, signature)
                and self._parts_dir(upload_id).is_dir())

    def _signed_link(self, resource: str, expires_in: int, filename: str = "") -> str:
        """`/files/{resource}` signed until `expires_in` seconds from now. The resource says
        what the link is for: an object key to GET, or `uploads/{id}/{n}` to PUT a part."""
        expires = int(time.time()) + expires_in
        params = {"expires": expires, "filename": filename} if filename else {"expires": expires}
        params["signature"] = sign(self.secret, resource, expires, filename)
        return f"/files/{quote(resource)}?{urlencode(params)}"

    def _signature_ok(self, resource: str, expires: str, signature: str,
                      filename: str = "") -> bool:
        """True when `signature` is ours for `resource` and `expires` has not passed."""
        if not (expires.isascii() and expires.isdigit()) or int(expires) < time.time():
            return False
        expected = sign(self.secret, resource, int(expires), filename)
        return hmac.compare_digest(expected.encode(), signature.encode())  # any text: no raise

    def write_part(self, upload_id: str, part_number: int, stream: BinaryIO,
                   limit: int) -> str:
        """Store one part's bytes (at most `limit`, else ValueError); return its ETag.
        Idempotent: a part sent again replaces the earlier one."""
        folder = self._parts_dir(upload_id)
        digest, size = hashlib.md5(usedforsecurity=False), 0
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(MiB):
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(f"part larger than {limit} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
            etag = f'"{digest.hexdigest()}"'
            os.replace(tmp, folder / f"{part_number:05d}-{etag.strip(chr(34))}")
            for old in folder.glob(f"{part_number:05d}-*"):
                if old.name != f"{part_number:05d}-{etag.strip(chr(34))}":
                    old.unlink(missing_ok=True)
            return etag
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts stored so far, by part number; FileNotFoundError if no such upload."""
        folder = self._parts_dir(upload_id)
        if not folder.is_dir():
            raise FileNotFoundError(upload_id)
        parts = []
        for path in sorted(folder.glob("[0-9]*-*")):
            number, _, md5 = path.name.partition("-")
            parts.append(StoredPart(int(number), f'"{md5}"', path.stat().st_size))
        return parts

    def complete_multipart(self, key: str, upload_id: str,
                           parts: list[tuple[int, str]]) -> None:
        """Join the named parts, in order, into `key`; BadParts if any does not match."""
        stored = {p.part_number: p for p in self.list_parts(key, upload_id)}
        folder = self._parts_dir(upload_id)
        _check_parts(parts, stored)
        with self._atomic(key) as out:
            for number, _etag in parts:
                md5 = stored[number].etag.strip('"')
                with open(folder / f"{number:05d}-{md5}", "rb") as src:
                    shutil.copyfileobj(src, out, MiB)
        shutil.rmtree(folder, ignore_errors=True)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload's parts; aborting a finished or unknown upload is not an error."""
        shutil.rmtree(self._parts_dir(upload_id), ignore_errors=True)

    def free_interrupted(self, before: datetime, keep: set[str]) -> int:
        """Free what writes cut off before `before` left (their process was killed): part
        folders of multipart uploads other than `keep` (upload ids), and temporary files.
        Return how many."""
        cutoff = before.timestamp()
        stale = [p for p in (self.root / ".multipart").glob("*")
                 if p.name not in keep and _mtime(p) < cutoff]
        stale += [p for p in self.root.glob("assets/*/.upload-*") if _mtime(p) < cutoff]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(stale)

    def _parts_dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise ValueError(f"bad upload id: {upload_id!r}")
        return self.root / ".multipart" / upload_id

    @contextlib.contextmanager
    def _atomic(self, key: str) -> Iterator[BinaryIO]:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class S3Storage:
    """Objects in an S3-compatible bucket, optionally under a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self._pid = 0
        self._client = None
        self._probe = None

    @property
    def client(self):
        """One boto3 client per process, made after fork (boto3 clients are thread-safe)."""
        if self._client is None or self._pid != os.getpid():
            self._client = self._new_client(max_attempts=5, connect_timeout=5, read_timeout=60)
            self._probe = None
            self._pid = os.getpid()
        return self._client

    @property
    def probe(self):
        """A client for health checks: one attempt, soon given up. Through `client`'s
        retries and timeouts, a store that accepted connections but did not answer held
        /readyz for six minutes before its 503."""
        self.client  # noqa: B018 - (re)made after fork first, which drops the parent's probe
        if self._probe is None:
            self._probe = self._new_client(max_attempts=1, connect_timeout=2, read_timeout=3)
        return self._probe

    def _new_client(self, max_attempts: int, connect_timeout: float, read_timeout: float):
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            max_pool_connections=16,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def upload(self, key: str, fileobj: BinaryIO, content_type: str) -> None:
        """Stream `fileobj` to `key`, in parts when large; memory stays bounded."""
        if not _seekable(fileobj):
            fileobj = _FullReads(fileobj)
        with _translated(key):
            self.client.upload_fileobj(
                fileobj, self.bucket, self._key(key),
                ExtraArgs={"ContentType": content_type}, Config=_transfer_config(),
            )

    def upload_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload the local file `path` to `key`, in parallel parts when large."""
        with _translated(key):
            self.client.upload_file(
                str(path), self.bucket, self._key(key),
                ExtraArgs={"ContentType": content_type}, Config=_transfer_config(),
            )

    def download(self, key: str, path: Path) -> None:
        """Download `key` to the local file `path`."""
        with self._headed(key):
            self.client.download_file(self.bucket, self._key(key), str(path),
                                      Config=_download_config())

    def open(self, key: str) -> BinaryIO:
        """A streaming body for `key`; FileNotFoundError if absent."""
        with _translated(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def source(self, key: str) -> str:
        """Where a reader that seeks (ffmpeg) finds `key`: a presigned GET URL, from which it
        fetches only the byte ranges it needs. FileNotFoundError if absent."""
        if not self.exists(key):
            raise FileNotFoundError(key)
        return self.url(key, SOURCE_EXPIRES)

    def exists(self, key: str) -> bool:
        try:
            with self._headed(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def _headed(self, key: str) -> Iterator[None]:
        """`_translated` for calls that begin with a HEAD, whose 404 has no body to say what
        is missing: when the bucket is, that is storage unavailable (retried), not an object
        gone (a job failed for good with "the original is missing")."""
        try:
            with _translated(key):
                yield
        except FileNotFoundError:
            try:
                self.check()
            except FileNotFoundError:
                raise StorageUnavailable("the bucket of MEDIAMILL_STORAGE_URL does not "
                                         "exist") from None
            except StorageUnavailable:
                pass  # cannot tell: the object's 404 stands
            raise

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`, a thousand per request."""
        full = self._key(prefix.rstrip("/")) + "/"
        count = 0
        with _translated(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    answer = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                    )
                    _raise_for_errors(prefix, answer.get("Errors", []))
                    count += len(objects)
        return count

    def url(self, key: str, expires_in: int, filename: str | None = None) -> str:
        """A presigned GET URL, served as an attachment when `filename` is given."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.client.generate_presigned_url("get_object", Params=params,
                                                  ExpiresIn=expires_in)

    def check(self, quick: bool = True) -> None:
        """FileNotFoundError if the bucket is missing; StorageUnavailable if S3 is down or
        (`quick`, for health checks) does not answer within a few seconds at the first try."""
        try:
            with _translated(self.bucket):
                client = self.probe if quick else self.client
                client.head_bucket(Bucket=self.bucket)  # a HEAD: a missing bucket is "404"
        except FileNotFoundError:
            raise FileNotFoundError(f"bucket {self.bucket} does not exist") from None

    def create_multipart(self, key: str, content_type: str) -> str:
        """Start an S3 multipart upload to `key`; returns S3's UploadId."""
        with _translated(key):
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), ContentType=content_type)
        return answer["UploadId"]

    def presign_part(self, key: str, upload_id: str, part_number: int,
                     expires_in: int) -> str:
        """A presigned UploadPart URL: the client PUTs the part's bytes straight to S3."""
        params = {"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id,
                  "PartNumber": part_number}
        return self.client.generate_presigned_url("upload_part", Params=params,
                                                  ExpiresIn=expires_in)

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts S3 holds so far; FileNotFoundError if the upload is gone."""
        parts: list[StoredPart] = []
        with _translated(key):
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            for page in pages:
                parts += [StoredPart(p["PartNumber"], p["ETag"], p["Size"])
                          for p in page.get("Parts", [])]
        return parts

    def complete_multipart(self, key: str, upload_id: str,
                           parts: list[tuple[int, str]]) -> None:
        """Join the named parts into `key`; BadParts if S3 refuses them."""
        from botocore.exceptions import ClientError

        body = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}
        try:
            with _translated(key):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                    MultipartUpload=body)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"):
                raise BadParts(exc.response["Error"].get("Message") or code) from exc
            raise

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort the upload and free its parts; an unknown upload is not an error."""
        with contextlib.suppress(FileNotFoundError), _translated(key):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key),
                                               UploadId=upload_id)

    def free_interrupted(self, before: datetime, keep: set[str]) -> int:
        """Abort the multipart uploads under assets/ started before `before`, other than
        `keep` (upload ids): those of uploads cut off by a killed process, whose parts S3
        keeps, and bills, until aborted. Return how many."""
        aborted = 0
        with _translated("assets"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "assets/")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["UploadId"] in keep or upload["Initiated"] >= before:
                        continue
                    with contextlib.suppress(FileNotFoundError), _translated(upload["Key"]):
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    def set_cors(self, origins: list[str]) -> bool:
        """Let browsers on `origins` PUT parts and read their ETag (the upload site).
        Idempotent; False when the store has no bucket CORS API (it must be set there)."""
        from botocore.exceptions import ClientError

        rule = {"AllowedOrigins": origins, "AllowedMethods": ["GET", "PUT", "HEAD"],
                "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3600}
        try:
            with _translated(self.bucket):
                self.client.put_bucket_cors(Bucket=self.bucket,
                                            CORSConfiguration={"CORSRules": [rule]})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NotImplemented",
                                                             "MethodNotAllowed"):
                return False
            raise
        return True

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing (local MinIO or moto); True if created."""
        try:
            self.check(quick=False)  # release: a slow answer or a 503 is retried, not fatal
            return False
        except FileNotFoundError:
            with _translated(self.bucket):
                self.client.create_bucket(Bucket=self.bucket)
            return True


class _FullReads:
    """A read-only stream that fills each `read(size)` unless the end is reached.

    boto3 decides between one PUT and a multipart upload from a single `read` of
    `multipart_threshold` bytes, and after a short read it reads *everything else* into
    memory for one PUT. Sockets and request bodies return short reads, so we top them up.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None else size
        if want >= 0 and not self._buffer and not self._eof:
            chunk = self._stream.read(want)  # the common case: a full read, passed as is
            if len(chunk) == want or not chunk:
                self._eof = not chunk
                return chunk
            self._buffer += chunk
        while not self._eof and (want < 0 or len(self._buffer) < want):
            chunk = self._stream.read(MiB if want < 0 else want - len(self._buffer))
            self._eof = not chunk
            self._buffer += chunk or b""
        cut = len(self._buffer) if want < 0 else min(want, len(self._buffer))
        out = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return out

    def readable(self) -> bool:
        return True


def _seekable(fileobj: BinaryIO) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _raise_for_errors(prefix: str, errors: list[dict]) -> None:
    """DeleteObjects answers 200 even when some keys could not be deleted: say so."""
    if errors:
        first = errors[0]
        raise StorageUnavailable(
            f"{len(errors)} objects under {prefix!r} could not be deleted "
            f"({first.get('Code')}: {first.get('Message')})"
        )


def _part_resource(upload_id: str, part_number: int) -> str:
    return f"uploads/{upload_id}/{part_number}"


def _check_parts(parts: list[tuple[int, str]], stored: dict[int, StoredPart]) -> None:
    """The parts to join must be ascending, stored, and carry the stored ETags."""
    numbers = [n for n, _ in parts]
    if not parts or numbers != sorted(set(numbers)):
        raise BadParts("parts must be listed once each, in ascending order")
    for number, etag in parts:
        if number not in stored or stored[number].etag.strip('"') != etag.strip('"'):
            raise BadParts(f"part {number} is not stored with ETag {etag}")


def content_disposition(filename: str) -> str:
    """An attachment Content-Disposition that carries any unicode name safely."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    ascii_name = re.sub(r"[\\\r\n?]", "_", ascii_name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    # Parts of 5 MiB, the smallest S3 accepts: an upload arriving over HTTP (a non-seekable
    # stream) is buffered in memory part by part, and while one part is read the web
    # process holds a few transient copies of it besides the parts being sent. With at most
    # two parts in flight, a 1 GiB upload raises the web worker's RSS by ~45-57 MiB
    # (bench/upload.py; target < 64 MiB); a third in flight was up to ~10% faster but
    # measured 62-67 MiB. Seekable sources (upload_file) and downloads are not held in
    # memory and use all four threads.
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4,
        use_threads=True,
    )
    config.max_in_memory_upload_chunks = 2
    return config


def _download_config():
    from boto3.s3.transfer import TransferConfig

    # Downloads go to a file, never through memory: each ranged GET is a request (and, on
    # moto, a pass over the object), so originals up to 64 MiB come in one GET and larger
    # ones in 64 MiB ranges four at a time. A 52 MB original: 0.14-0.19 s, against
    # 0.60-0.75 s in 5 MiB ranges (bench/video.py's fetch).
    return TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB,
                          max_concurrency=4, use_threads=True)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """Turn SDK errors into domain errors: absent -> FileNotFoundError, 5xx -> transient."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if error.get("Code") == "NoSuchBucket":  # not an object that is gone: every one is
            raise StorageUnavailable("the bucket of MEDIAMILL_STORAGE_URL does not exist") from exc
        if error.get("Code") in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
            raise FileNotFoundError(key) from exc
        if status >= 500 or error.get("Code") in ("SlowDown", "RequestTimeout", "Throttling"):
            raise StorageUnavailable(f"storage answered {error.get('Code')}") from exc
        raise
    except S3UploadFailedError as exc:
        raise StorageUnavailable(f"upload of {key} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"storage unreachable: {exc}") from exc
