"""Settings.from_env: the contract's defaults, one error naming every bad variable, and
`config.load()` stopping a process with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "a-secret-key-of-enough-length"


def test_defaults_match_the_contract(tmp_path):
    settings = Settings.from_env({}, instance_dir=tmp_path)

    assert settings.database_url == "sqlite:///instance/mediamill.db"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.storage_url == "file://instance/storage"
    assert settings.s3_endpoint_url is None
    assert settings.secret_key == ""  # generated later by with_secret()
    assert settings.public_url is None
    assert settings.max_upload_bytes == 5368709120
    assert settings.webhook_allow_private is False
    assert settings.webhook_retry_schedule == (5, 30, 120, 600, 1800, 3600, 7200, 14400,
                                               28800, 28800)
    assert sum(settings.webhook_retry_schedule) == pytest.approx(24 * 3600, rel=0.05)
    assert settings.port == 5000
    assert settings.instance_dir == tmp_path


def test_every_variable_is_read():
    env = {
        "DATABASE_URL": "postgresql://u@db/media",
        "REDIS_URL": "redis://cache:6380/2",
        "MEDIAMILL_BROKER_URL": "amqp://guest@rabbit//",
        "MEDIAMILL_STORAGE_URL": "s3://bucket/prefix",
        "MEDIAMILL_S3_ENDPOINT_URL": "http://minio:9000",
        "MEDIAMILL_SECRET_KEY": GOOD_SECRET,
        "MEDIAMILL_PUBLIC_URL": "https://media.example.com/",
        "MEDIAMILL_MAX_UPLOAD_BYTES": "1000",
        "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1",
        "MEDIAMILL_WEBHOOK_RETRY_SCHEDULE": "1,2,3",
        "PORT": "8080",
        "MEDIAMILL_INSTANCE_DIR": "/srv/instance",
    }
    settings = Settings.from_env(env)

    assert settings.database_url == "postgresql+psycopg://u@db/media"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.broker_url == "amqp://guest@rabbit//"
    assert settings.broker_kind == "amqp"
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.secret_key == GOOD_SECRET
    assert settings.public_url == "https://media.example.com"
    assert settings.max_upload_bytes == 1000
    assert settings.webhook_allow_private is True
    assert settings.webhook_retry_schedule == (1, 2, 3)
    assert settings.port == 8080
    assert settings.instance_dir == Path("/srv/instance")


def test_broker_follows_redis_url_unless_overridden():
    assert Settings.from_env({"REDIS_URL": "redis://r:1/3"}).broker_url == "redis://r:1/3"


def test_empty_values_count_as_unset():
    settings = Settings.from_env({"PORT": "", "MEDIAMILL_S3_ENDPOINT_URL": ""})

    assert settings.port == 5000 and settings.s3_endpoint_url is None


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/media", "postgresql://u:p@db:5432/media"])
def test_postgres_urls_are_rewritten_for_sqlalchemy(url):
    settings = Settings.from_env({"DATABASE_URL": url})

    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/media"


@pytest.mark.parametrize("url", ["file:///srv/media", "file://instance/storage", "s3://b",
                                 "s3://b/some/prefix"])
def test_storage_urls_accepted(url):
    assert Settings.from_env({"MEDIAMILL_STORAGE_URL": url}).storage_url == url


@pytest.mark.parametrize(("name", "value"), [
    ("DATABASE_URL", "mysql://u@h/db"),
    ("DATABASE_URL", "sqlite://"),  # in memory: each process its own empty database
    ("DATABASE_URL", "sqlite:///:memory:"),
    ("REDIS_URL", "http://cache:6379"),
    ("MEDIAMILL_BROKER_URL", "kafka://k:9092"),
    ("MEDIAMILL_STORAGE_URL", "ftp://host/dir"),
    ("MEDIAMILL_STORAGE_URL", "s3://"),
    ("MEDIAMILL_S3_ENDPOINT_URL", "minio:9000"),
    ("MEDIAMILL_SECRET_KEY", "short"),
    ("MEDIAMILL_PUBLIC_URL", "media.example.com"),
    ("MEDIAMILL_MAX_UPLOAD_BYTES", "5GB"),
    ("MEDIAMILL_MAX_UPLOAD_BYTES", "0"),
    ("MEDIAMILL_WEBHOOK_ALLOW_PRIVATE", "maybe"),
    ("MEDIAMILL_WEBHOOK_RETRY_SCHEDULE", "5,soon,30"),
    ("MEDIAMILL_WEBHOOK_RETRY_SCHEDULE", "5,-1"),
    ("PORT", "http"),
    ("PORT", "70000"),
])
def test_a_bad_variable_is_named(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})

    message = str(caught.value)
    assert message.startswith(f"{name} ")
    assert "\n" not in message


def test_all_bad_variables_are_named_at_once():
    env = {"PORT": "0", "REDIS_URL": "nope", "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "2",
           "DATABASE_URL": "postgresql://fine@db/x"}

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    message = str(caught.value)
    for name in ("PORT", "REDIS_URL", "MEDIAMILL_WEBHOOK_ALLOW_PRIVATE"):
        assert name in message
    assert "DATABASE_URL" not in message


def test_errors_do_not_echo_secrets():
    env = {"DATABASE_URL": "mysql://app:hunter2@db/media", "MEDIAMILL_SECRET_KEY": "tooshort42",
           "MEDIAMILL_BROKER_URL": "kafka://:s3cret@broker"}

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    message = str(caught.value)
    assert "DATABASE_URL" in message and "MEDIAMILL_SECRET_KEY" in message
    assert "MEDIAMILL_BROKER_URL" in message
    for secret in ("hunter2", "tooshort42", "s3cret"):
        assert secret not in message


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def run_load(env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python -c 'from config import load; load()'` as a process would start."""
    code = "from config import load; s = load(); print(s.secret_key)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", **env},
    )


def test_load_stops_with_one_line_naming_the_variable(tmp_path):
    done = run_load({"PORT": "eighty", "MEDIAMILL_INSTANCE_DIR": str(tmp_path)}, tmp_path)

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PORT" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_load_names_several_bad_variables_in_one_line(tmp_path):
    env = {"PORT": "eighty", "MEDIAMILL_STORAGE_URL": "gopher://x", "DATABASE_URL": "nope"}
    done = run_load({**env, "MEDIAMILL_INSTANCE_DIR": str(tmp_path)}, tmp_path)

    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert all(name in line for name in env)


def test_secret_key_generated_once_and_stable(tmp_path):
    instance = tmp_path / "instance"
    env = {"MEDIAMILL_INSTANCE_DIR": str(instance)}

    first = run_load(env, tmp_path)
    second = run_load(env, tmp_path)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    key = first.stdout.strip()
    assert len(key) >= 32
    assert second.stdout.strip() == key
    assert (instance / "secret_key").read_text().strip() == key
    assert (instance / "secret_key").stat().st_mode & 0o077 == 0  # readable by owner only
    assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temporary left over


def test_explicit_secret_key_wins_and_writes_nothing(tmp_path):
    settings = Settings.from_env({"MEDIAMILL_SECRET_KEY": GOOD_SECRET}, instance_dir=tmp_path)

    assert settings.with_secret().secret_key == GOOD_SECRET
    assert list(tmp_path.iterdir()) == []


def test_with_secret_keeps_an_existing_key(tmp_path):
    (tmp_path / "secret_key").write_text("kept-from-an-earlier-start-0123\n")
    settings = Settings.from_env({}, instance_dir=tmp_path).with_secret()

    assert settings.secret_key == "kept-from-an-earlier-start-0123"


def test_processes_starting_together_share_one_key(tmp_path):
    """web and every worker start at once on a fresh machine: all must agree on the key."""
    instance = tmp_path / "instance"
    code = "from config import load; print(load().secret_key)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MEDIAMILL_INSTANCE_DIR":
           str(instance)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(6)]
    results = [(p.communicate(timeout=30), p.returncode) for p in procs]

    assert all(code == 0 for _, code in results), results
    keys = {out.strip() for (out, _), _ in results}
    assert keys == {(instance / "secret_key").read_text().strip()}
