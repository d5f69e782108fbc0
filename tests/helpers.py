"""Small helpers shared by the tests: upload through the API, wait, fetch a signed link."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import requests


def jpeg(color=(200, 30, 30), size=(64, 48)) -> bytes:
    """A small solid-colour JPEG; different colours give different files."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def upload(client, key: str, path: Path | None = None, data: bytes | None = None,
           filename: str | None = None, headers: dict | None = None, **fields):
    """POST /api/v1/assets through the Flask test client as multipart/form-data."""
    import io

    body = data if data is not None else path.read_bytes()
    form = {"file": (io.BytesIO(body), filename or (path.name if path else "upload.bin")), **fields}
    return client.post("/api/v1/assets", data=form, headers={**auth(key), **(headers or {})},
                       content_type="multipart/form-data")


def wait_final(client, key: str, asset_id: str, timeout: float = 120) -> dict:
    """Poll the asset until it and every one of its jobs are completed or failed (an asset
    is failed as soon as one job fails, while the others may still run); fail the test on
    timeout."""
    final = ("completed", "failed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/assets/{asset_id}", headers=auth(key)).json
        if body["status"] in final and all(j["status"] in final for j in body["jobs"].values()):
            return body
        time.sleep(0.2)
    raise AssertionError(f"asset {asset_id} not final after {timeout}s: {body}")


def fetch(stack, url: str) -> bytes:
    """GET a signed link: presigned S3 over HTTP, or the app's own /files/ route."""
    parts = urlsplit(url)
    if parts.path.startswith("/files/"):
        response = stack.client().get(f"{parts.path}?{parts.query}")
        assert response.status_code == 200, response.status_code
        return response.data
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:200]
    return response.content
