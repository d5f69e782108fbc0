"""The Celery app for `celery -A tasks`: one module per queue, all routed by config/celery.py.

`make_celery(settings)` builds an app (the web uses one to send); the module attribute `app`
is built from the environment on first use, so importing this package reads nothing.
"""

from __future__ import annotations

from celery import Celery, signals

from config.celery import celery_config
from config.settings import Settings
from media.services import Services

TASK_MODULES = ["tasks.thumbnails", "tasks.video", "tasks.metadata", "tasks.webhooks",
                "tasks.upkeep"]


class MediamillCelery(Celery):
    """A Celery app that carries the process's Services (database, storage, settings)."""

    services: Services


def make_celery(settings: Settings) -> MediamillCelery:
    """A configured Celery app for `settings`, with every task registered."""
    app = MediamillCelery("mediamill", include=TASK_MODULES, set_as_current=False)
    app.conf.update(celery_config(settings))
    settings.instance_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule there
    app.services = Services.from_settings(settings)
    app.services.outbox.send = lambda ids: [
        app.send_task("webhooks.deliver", args=[delivery_id]) for delivery_id in ids
    ]
    return app


def __getattr__(name: str):
    # `celery -A tasks` looks up `tasks.app`: build it from the environment then, once.
    if name in ("app", "celery"):
        from config import load

        global app
        app = make_celery(load())
        app.set_current()
        return app
    raise AttributeError(name)


@signals.setup_logging.connect
def _logging(**_) -> None:
    """Workers and beat log like the web process (connecting this stops Celery's own)."""
    from config import load
    from config.logging import configure

    configure(load().log_format)


@signals.worker_init.connect
def _prepare_worker(sender=None, **_) -> None:
    """At worker boot: schema up to date, ffmpeg present, storage reachable."""
    import shutil

    services = sender.app.services
    services.prepare(storage=True)
    services.db.dispose()  # children make their own connections after fork
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise SystemExit(f"mediamill: {tool} not found on PATH; install ffmpeg")
    from tasks.pipeline import remove_orphaned_temp

    remove_orphaned_temp()


@signals.beat_init.connect
def _prepare_beat(sender=None, **_) -> None:
    """At beat's start, as at a worker's: the schema up to date, or one line naming
    DATABASE_URL and exit. Unchecked, beat sent upkeep every few seconds for ever to workers
    that had all stopped on the same setting."""
    sender.app.services.prepare()
    sender.app.services.db.dispose()


@signals.worker_process_init.connect
def _prepare_pool_process(**_) -> None:
    """A new pool process, also the one that replaces a child killed by a hard time limit
    or SIGKILL: the killed child's work folder goes now, not at the next worker start."""
    from tasks.pipeline import remove_orphaned_temp

    remove_orphaned_temp()
