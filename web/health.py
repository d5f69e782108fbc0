"""Liveness and readiness probes, open to load balancers without a key."""

from __future__ import annotations

from flask import Blueprint, jsonify

from web.errors import problem
from web.extensions import services
from web.metrics import queue_depths

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and serving."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Database, broker and storage all answer; 503 names the ones that do not."""
    s = services()
    checks = {"database": s.db.check, "broker": lambda: queue_depths(s.settings),
              "storage": s.storage.check}
    failed = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # any failure of a dependency means "not ready"
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]
    if failed:
        detail = "; ".join(f"{k} unreachable ({v})" for k, v in failed.items())
        return problem(503, "Service Unavailable", detail)
    return jsonify({"status": "ready", "checks": {k: "ok" for k in checks}})
