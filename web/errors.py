"""RFC 9457 problem details for every error the API and site answer with."""

from __future__ import annotations

import logging

from flask import Flask, Response, json
from sqlalchemy.exc import OperationalError as DBAPIOperationalError
from werkzeug.exceptions import HTTPException

from media.errors import TransientError

log = logging.getLogger(__name__)


class Problem(HTTPException):
    """An HTTP error with a title and a sentence of detail, answered as problem+json."""

    def __init__(self, status: int, title: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(description=detail)
        self.code = status
        self.title = title
        self.extra_headers = headers or {}

    def get_response(self, environ=None, scope=None) -> Response:
        return problem(self.code, self.title, self.description, self.extra_headers)


def too_large(limit: int) -> Problem:
    """413 for a file over MEDIAMILL_MAX_UPLOAD_BYTES, however it is uploaded."""
    return Problem(413, "Payload Too Large", f"The file is larger than this service's limit "
                   f"of {limit} bytes (MEDIAMILL_MAX_UPLOAD_BYTES).")


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> Response:
    """A problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    response.headers.update(headers or {})
    return response


def register(app: Flask) -> None:
    """Answer every HTTP error, and any unexpected exception, as problem+json."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, Problem):
            return exc.get_response()
        headers = dict(exc.get_headers()) if exc.code == 405 else {}
        headers.pop("Content-Type", None)
        return problem(exc.code or 500, exc.name, exc.description or exc.name, headers)

    @app.errorhandler(TransientError)
    @app.errorhandler(DBAPIOperationalError)
    def unavailable(exc: Exception) -> Response:
        log.warning("dependency unavailable: %s", exc)
        return problem(503, "Service Unavailable", "Storage or the database is unreachable "
                       "right now; nothing was recorded. Try again shortly.",
                       {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal Server Error",
                       "Something went wrong on our side; the error has been logged.")
