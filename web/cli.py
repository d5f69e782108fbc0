"""Commands: `flask --app web create-api-key NAME` and `flask --app web release`."""

from __future__ import annotations

import json

import click
from flask import Flask

from media.keys import create_api_key
from media.storage import S3Storage
from web.extensions import services


def register(app: Flask) -> None:
    @app.cli.command("create-api-key")
    @click.argument("name")
    def create_api_key_command(name: str) -> None:
        """Issue an API key for tenant NAME (created if new); prints one JSON line."""
        with services().db.session() as session:
            issued = create_api_key(session, name)
        click.echo(json.dumps(issued))

    @app.cli.command("release")
    def release_command() -> None:
        """Bring the schema up to date and make sure the bucket exists (run before deploys)."""
        s = services()
        s.db.upgrade()
        click.echo("database schema is up to date")
        if isinstance(s.storage, S3Storage):
            created = s.storage.ensure_bucket()
            click.echo(f"bucket {s.storage.bucket} {'created' if created else 'exists'}")
        else:
            s.storage.check()
            click.echo("storage directory is ready")
