"""Per-app resources, reached from views without importing the app."""

from __future__ import annotations

from flask import current_app, request

from media.services import Services


def services() -> Services:
    return current_app.extensions["mediamill"]


def celery():
    return current_app.extensions["celery"]


def base_url() -> str:
    """Where links in answers point: MEDIAMILL_PUBLIC_URL, else the request's host."""
    return services().settings.public_url or request.host_url.rstrip("/")
