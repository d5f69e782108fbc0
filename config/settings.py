"""Settings from the environment: the only place that reads os.environ.

Every variable the contract names is parsed and validated here, once, at start. A bad or
missing value raises ConfigError naming every offending variable, and `load()` turns that
into one line on stderr and exit status 3, never a traceback deep in a request.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

DEFAULT_RETRY_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800,28800"


class ConfigError(ValueError):
    """One or more settings are missing or malformed; the message names each variable."""


@dataclass(frozen=True)
class Settings:
    """Validated, immutable configuration shared by web, workers and commands."""

    database_url: str = "sqlite:///instance/mediamill.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = "file://instance/storage"
    s3_endpoint_url: str | None = None
    secret_key: str = field(default="", repr=False)
    public_url: str | None = None
    max_upload_bytes: int = 5 * 1024**3
    webhook_allow_private: bool = False
    webhook_retry_schedule: tuple[int, ...] = tuple(
        int(s) for s in DEFAULT_RETRY_SCHEDULE.split(",")
    )
    port: int = 5000
    instance_dir: Path = Path("instance")
    # Not in the contract's table: tuning knobs with safe defaults.
    max_image_pixels: int = 100_000_000
    job_stale_seconds: int = 120  # a running job silent this long is taken as dead
    log_format: str = "json"
    signed_url_ttl: int = 3600
    request_body_timeout: int = 60  # seconds a request body may stall before a 408
    request_header_timeout: int = 30  # seconds for a request's line and headers, all told
    thumbnail_boxes: tuple[int, ...] = (2048, 1024, 256)
    thumbnail_formats: tuple[str, ...] = ("webp", "jpeg")
    thumbnail_quality: tuple[tuple[str, int], ...] = (("webp", 80), ("jpeg", 85), ("avif", 60))
    thumbnail_animated: bool = False
    video_renditions: tuple[int, ...] = (1080, 720, 480)  # heights; 720 is always made
    video_hls: bool = False
    ffmpeg_threads: int = 0  # 0: ffmpeg decides for a lone process, else cores / processes
    sqs_queue_prefix: str = "mediamill-"  # SQS queues are per account: keep ours apart

    @classmethod
    def from_env(cls, environ: Mapping[str, str], instance_dir: Path | None = None) -> Settings:
        """Parse and validate `environ`; raise ConfigError naming every bad variable."""
        env = {k: v for k, v in environ.items() if v != ""}
        instance = Path(instance_dir or env.get("MEDIAMILL_INSTANCE_DIR", "instance"))
        errors: list[str] = []
        values: dict[str, object] = {"instance_dir": instance}

        def take(name: str, attr: str, parse: Callable[[str], object], default=None) -> None:
            raw = env.get(name, default)
            if raw is None:
                return
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                errors.append(f"{name} {exc} (got {_shown(name, raw)})")

        take("DATABASE_URL", "database_url", _database_url)
        take("REDIS_URL", "redis_url", _redis_url)
        values.setdefault("redis_url", cls.redis_url)
        take("MEDIAMILL_BROKER_URL", "broker_url", _broker_url, values["redis_url"])
        take("MEDIAMILL_STORAGE_URL", "storage_url", _storage_url)
        take("MEDIAMILL_S3_ENDPOINT_URL", "s3_endpoint_url", _http_url)
        take("MEDIAMILL_SECRET_KEY", "secret_key", _secret_key)
        take("MEDIAMILL_PUBLIC_URL", "public_url", lambda v: _http_url(v).rstrip("/"))
        take("MEDIAMILL_MAX_UPLOAD_BYTES", "max_upload_bytes", _positive_int)
        take("MEDIAMILL_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", _flag)
        take("MEDIAMILL_WEBHOOK_RETRY_SCHEDULE", "webhook_retry_schedule", _schedule)
        take("PORT", "port", _port)
        take("MEDIAMILL_MAX_IMAGE_PIXELS", "max_image_pixels", _positive_int)
        take("MEDIAMILL_JOB_STALE_SECONDS", "job_stale_seconds", _positive_int)
        take("MEDIAMILL_LOG_FORMAT", "log_format", _log_format)
        take("MEDIAMILL_REQUEST_BODY_TIMEOUT", "request_body_timeout", _positive_int)
        take("MEDIAMILL_REQUEST_HEADER_TIMEOUT", "request_header_timeout", _positive_int)
        take("MEDIAMILL_THUMBNAIL_BOXES", "thumbnail_boxes", _boxes)
        take("MEDIAMILL_THUMBNAIL_FORMATS", "thumbnail_formats", _formats)
        take("MEDIAMILL_THUMBNAIL_QUALITY", "thumbnail_quality", _qualities)
        take("MEDIAMILL_THUMBNAIL_ANIMATED", "thumbnail_animated", _flag)
        take("MEDIAMILL_VIDEO_RENDITIONS", "video_renditions", _renditions)
        take("MEDIAMILL_VIDEO_HLS", "video_hls", _flag)
        take("MEDIAMILL_FFMPEG_THREADS", "ffmpeg_threads", _threads)
        take("MEDIAMILL_SQS_QUEUE_PREFIX", "sqs_queue_prefix", _queue_prefix)
        if errors:
            raise ConfigError("; ".join(errors))
        return cls(**values)

    def with_secret(self) -> Settings:
        """Return settings whose secret key is set, generating one into instance/ once."""
        if self.secret_key:
            return self
        path = self.instance_dir / "secret_key"
        if not path.exists():
            _create_secret(path)
        return replace(self, secret_key=path.read_text().strip())

    @property
    def broker_kind(self) -> str:
        """The broker transport: 'redis', 'amqp' or 'sqs'."""
        scheme = urlsplit(self.broker_url).scheme
        return {"rediss": "redis", "pyamqp": "amqp", "amqps": "amqp"}.get(scheme, scheme)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a process that is starting: exit with one line if they are bad."""
    try:
        return Settings.from_env(os.environ if environ is None else environ).with_secret()
    except ConfigError as exc:
        stop(f"mediamill: configuration error: {exc}")
    except OSError as exc:
        stop(f"mediamill: configuration error: MEDIAMILL_SECRET_KEY unset and {exc}")


def stop(line: str) -> NoReturn:
    """Stop a starting process with one line. Exit status 3 is gunicorn's "worker failed to
    boot": its master then stops too, instead of booting a new worker forever."""
    print(line, file=sys.stderr)
    sys.exit(3)


def _create_secret(path: Path) -> None:
    """Write a new key to `path` unless another starting process did. The key is written
    aside and then linked into place, so no process ever reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


_SECRETS = {"MEDIAMILL_SECRET_KEY"}
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def _shown(name: str, raw: str) -> str:
    """The value as an error line may show it: secrets withheld, URL passwords masked."""
    if name in _SECRETS:
        return f"a value of {len(raw)} characters"
    return repr(_URL_PASSWORD.sub(r"\1***@", raw))


def _database_url(value: str) -> str:
    scheme = urlsplit(value).scheme.split("+")[0]
    if scheme == "postgres":  # Heroku's spelling, which SQLAlchemy 2 refuses
        value = "postgresql" + value[len("postgres") :]
        scheme = "postgresql"
    if scheme not in ("sqlite", "postgresql"):
        raise ValueError("must be a sqlite:// or postgresql:// URL")
    if scheme == "sqlite" and (urlsplit(value).path[1:] in ("", ":memory:")
                               or "mode=memory" in urlsplit(value).query):
        # each process would have its own empty database: the web's assets unseen by workers
        raise ValueError("must name a database file (sqlite:///instance/mediamill.db), not an "
                         "in-memory one, which every process would have to itself")
    if scheme == "postgresql" and "+" not in value.split("://")[0]:
        value = value.replace("postgresql://", "postgresql+psycopg://", 1)
    return value


def _redis_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _broker_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp", "sqs"):
        raise ValueError("must be a redis://, amqp:// or sqs:// URL")
    return value


def _queue_prefix(value: str) -> str:
    # SQS names: letters, digits, - and _, at most 80 with the longest queue ("thumbnails")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", value):
        raise ValueError("must be up to 60 letters, digits, - or _")
    return value


def _storage_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "s3" and parts.netloc:
        return value
    if parts.scheme == "file" and (parts.netloc or parts.path):
        return value
    raise ValueError("must be file://DIR or s3://BUCKET[/PREFIX]")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _secret_key(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a positive integer") from None
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _port(value: str) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise ValueError("must be a port number (1-65535)")
    return port


def _log_format(value: str) -> str:
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 0 or 1")


_THUMBNAIL_FORMATS = ("webp", "jpeg", "avif")


def _boxes(value: str) -> tuple[int, ...]:
    try:
        boxes = tuple(sorted({int(part) for part in value.split(",")}, reverse=True))
    except ValueError:
        raise ValueError("must be comma-separated sizes in pixels, e.g. 2048,1024,256") from None
    if not boxes or any(not 16 <= box <= 8192 for box in boxes):
        raise ValueError("must be comma-separated sizes from 16 to 8192, e.g. 2048,1024,256")
    return boxes


def _formats(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",")))
    if not names or any(name not in _THUMBNAIL_FORMATS for name in names):
        raise ValueError(f"must be a comma-separated list of {', '.join(_THUMBNAIL_FORMATS)}")
    return names


def _qualities(value: str) -> tuple[tuple[str, int], ...]:
    """`webp=80,jpeg=85`: the named formats' qualities; the others keep their default."""
    given: dict[str, int] = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        name = name.strip().lower()
        if name not in _THUMBNAIL_FORMATS or not number.strip().isdigit() \
                or not 1 <= int(number) <= 100:
            raise ValueError("must be FORMAT=QUALITY pairs (1-100), e.g. webp=80,jpeg=85")
        given[name] = int(number)
    return tuple((name, given.get(name, default)) for name, default in
                 Settings.thumbnail_quality)


def _schedule(value: str) -> tuple[int, ...]:
    try:
        delays = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError("must be comma-separated seconds, e.g. 5,30,120") from None
    if not delays or any(d < 0 for d in delays):
        raise ValueError("must be comma-separated seconds, e.g. 5,30,120")
    return delays


def _renditions(value: str) -> tuple[int, ...]:
    message = "must be comma-separated heights between 144 and 4320, e.g. 1080,720,480"
    try:
        heights = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(message) from None
    if not heights or any(not 144 <= h <= 4320 or h % 2 for h in heights):
        raise ValueError(message)
    return tuple(sorted(set(heights), reverse=True))


def _threads(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be 0 (automatic) or a number of threads up to 64") from None
    if not 0 <= number <= 64:
        raise ValueError("must be 0 (automatic) or a number of threads up to 64")
    return number
