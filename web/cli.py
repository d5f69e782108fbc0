"""Commands: `flask --app web create-api-key NAME` and `flask --app web release`."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import click
from botocore.exceptions import ClientError
from flask import Flask

from config import stop
from media.errors import StorageUnavailable
from media.keys import create_api_key
from media.storage import S3Storage
from web.extensions import services


def register(app: Flask) -> None:
    @app.cli.command("create-api-key")
    @click.argument("name")
    def create_api_key_command(name: str) -> None:
        """Issue an API key for tenant NAME (created if new); prints one JSON line."""
        if not name.strip():
            raise click.BadParameter("must not be empty", param_hint="NAME")
        with services().db.session() as session:
            issued = create_api_key(session, name)
        click.echo(json.dumps(issued))

    @app.cli.command("release")
    def release_command() -> None:
        """Bring the schema up to date and make sure the bucket exists (run before deploys)."""
        s = services()  # building the app has already run every pending migration
        click.echo("database schema is up to date")
        # else one line naming the setting, and exit; the bucket is made below if missing
        s.prepare(schema=False, storage=True, bucket=False)
        if isinstance(s.storage, S3Storage):
            try:
                created = s.storage.ensure_bucket()
            except (StorageUnavailable, OSError, ClientError) as exc:
                stop(f"mediamill: cannot reach the bucket of MEDIAMILL_STORAGE_URL="
                     f"{s.settings.storage_url} (MEDIAMILL_S3_ENDPOINT_URL="
                     f"{s.settings.s3_endpoint_url or 'AWS'}): {exc}")
            click.echo(f"bucket {s.storage.bucket} {'created' if created else 'exists'}")
            origins = _site_origins(s.settings.public_url)
            if s.storage.set_cors(origins):
                click.echo(f"bucket CORS lets {', '.join(origins)} PUT upload parts")
            else:  # some S3-compatible stores have no bucket CORS API
                click.echo("bucket CORS not supported here; allow PUT and expose ETag for the "
                           "site's origin in the store's own settings", err=True)
        else:
            click.echo("storage directory is ready")


def _site_origins(public_url: str | None) -> list[str]:
    """The site's origin when MEDIAMILL_PUBLIC_URL names it, else any: the presigned URL,
    not the origin, is what authorises a part upload; CORS only lets the page read ETag."""
    if not public_url:
        return ["*"]
    parts = urlsplit(public_url)
    return [f"{parts.scheme}://{parts.netloc}"]
