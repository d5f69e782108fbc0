"""docker/: compose.yaml validates with Docker Compose and runs what the Procfile runs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker/compose.yaml"


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) when it works, else the standalone `docker-compose`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed "
                "(apt-get install docker-compose)")


def procfile() -> dict[str, list[str]]:
    """Each Procfile process as argv, with `${VAR:-default}` replaced by its default."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = dict(line.split(": ", 1) for line in lines if line.strip())
    return {name: shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command))
            for name, command in entries.items()}


def test_compose_file_validates():
    result = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config",
                               "--services"], capture_output=True, text=True, timeout=60)
    assert set(procfile()) | {"postgres", "redis", "minio"} <= set(services.stdout.split())


def test_compose_runs_the_procfile_commands():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    processes = procfile()
    for name in ("thumbnails", "video", "metadata", "webhooks", "beat", "release"):
        assert services[name]["command"] == processes[name], name
    assert "--appendonly" in services["redis"]["command"]  # queued work survives a restart
    # Every app service waits for release (migrations, bucket and CORS) to finish first.
    app = [name for name in processes if name != "release"]
    for name in app:
        assert services[name]["depends_on"]["release"] == {
            "condition": "service_completed_successfully"}, name
    # Flower is opt-in (a profile) and never open without a password.
    assert services["flower"]["profiles"] == ["flower"]
    assert "FLOWER_BASIC_AUTH:?" in " ".join(services["flower"]["command"])


def test_dockerfile_is_slim_non_root_with_ffmpeg():
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.M)
    assert re.search(r"apt-get install .*--no-install-recommends ffmpeg", dockerfile)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    # the web command in the image is the Procfile's, its worker class (gthread with a
    # deadline for headers) included
    procfile = (ROOT / "Procfile").read_text()
    worker = "--worker-class config.gunicorn.ThreadWorker"
    assert worker in dockerfile and worker in procfile
