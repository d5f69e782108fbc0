"""The web process: the upload API and site. `create_app()` is gunicorn's and flask's entry."""

from __future__ import annotations

from flask import Flask

from config.logging import configure as configure_logging
from config.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for `settings` (default: the environment, validated at start)."""
    if settings is None:
        from config import load

        settings = load()
    from tasks import make_celery
    from web import cli, errors, files, health, metrics, openapi, site
    from web.api import assets, events, uploads, webhooks
    from web.streaming import BodyGuard

    app = Flask(__name__, instance_path=str(settings.instance_dir.resolve()))
    app.config.update(SECRET_KEY=settings.secret_key, MAX_FORM_MEMORY_SIZE=64 * 1024,
                      JSON_SORT_KEYS=False)
    celery_app = make_celery(settings)
    services = celery_app.services
    services.prepare()
    app.extensions["mediamill"] = services
    app.extensions["celery"] = celery_app
    for blueprint in (assets.bp, events.bp, webhooks.bp, uploads.bp, uploads.parts_bp,
                      health.bp, metrics.bp, openapi.bp, files.bp, site.bp):
        app.register_blueprint(blueprint)
    errors.register(app)
    app.wsgi_app = BodyGuard(app.wsgi_app, settings.request_body_timeout)
    cli.register(app)
    configure_logging(settings.log_format)
    return app
