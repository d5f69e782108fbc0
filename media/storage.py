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
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlencode, urlsplit

from config.settings import Settings
from media.errors import StorageUnavailable

MiB = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class Storage(Protocol):
    """What web and workers need from a store of objects."""

    def upload(self, key: str, fileobj: BinaryIO, content_type: str) -> None: ...
    def upload_file(self, key: str, path: Path, content_type: str) -> None: ...
    def download(self, key: str, path: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def url(self, key: str, expires_in: int, filename: str | None = None) -> str: ...
    def check(self) -> None: ...


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

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`; return how many there were."""
        folder = self.path(prefix.rstrip("/"))
        count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def url(self, key: str, expires_in: int, filename: str | None = None) -> str:
        """A path on this service, signed and expiring, that serves `key`."""
        expires = int(time.time()) + expires_in
        params = {"expires": expires, "filename": filename} if filename else {"expires": expires}
        params["signature"] = sign(self.secret, key, expires, filename or "")
        return f"/files/{quote(check_key(key))}?{urlencode(params)}"

    def verify(self, key: str, expires: str, signature: str, filename: str = "") -> bool:
        """True when `signature` is ours for this link and `expires` has not passed."""
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(sign(self.secret, key, int(expires), filename), signature)

    def check(self) -> None:
        """Raise StorageUnavailable unless the root is a writable directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"storage directory {self.root} is not writable")

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

    @property
    def client(self):
        """One boto3 client per process, made after fork (boto3 clients are thread-safe)."""
        if self._client is None or self._pid != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                signature_version="s3v4",
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                max_pool_connections=16,
                connect_timeout=5,
                read_timeout=60,
            )
            session = boto3.session.Session()
            self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            self._pid = os.getpid()
        return self._client

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
        with _translated(key):
            self.client.download_file(self.bucket, self._key(key), str(path),
                                      Config=_transfer_config())

    def open(self, key: str) -> BinaryIO:
        """A streaming body for `key`; FileNotFoundError if absent."""
        with _translated(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

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

    def check(self) -> None:
        """FileNotFoundError if the bucket is missing; StorageUnavailable if S3 is down."""
        with _translated(self.bucket):
            self.client.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing (local MinIO or moto); True if created."""
        try:
            self.check()
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
        if error.get("Code") in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            raise FileNotFoundError(key) from exc
        if status >= 500 or error.get("Code") in ("SlowDown", "RequestTimeout", "Throttling"):
            raise StorageUnavailable(f"storage answered {error.get('Code')}") from exc
        raise
    except S3UploadFailedError as exc:
        raise StorageUnavailable(f"upload of {key} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"storage unreachable: {exc}") from exc
