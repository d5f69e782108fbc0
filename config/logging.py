"""Logging for every process: one JSON object per line (or plain text), carrying the ids
of the task, job and asset being worked on, so one upload can be followed across pools."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

# Set by whoever is working on an asset (tasks/pipeline.py); read by every log line.
context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mediamill_log",
                                                                     default=None)
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "task_id", "task", "asset_id", ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_task(),
            **(context.get() or {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `log_format` ("json" or "text")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _task() -> dict:
    from celery._state import get_current_task

    task = get_current_task()  # None outside a task (web threads, beat)
    if task is None or not task.request.id:
        return {}
    return {"task_id": task.request.id, "task": task.name}
