"""The JSON API's request parsing, shared by its blueprints: a 400 for a body or value
that is not what the call takes, before anything is stored."""

from __future__ import annotations

from flask import request

from web.errors import Problem

MAX_TEXT = 4096  # characters: a filename or URL longer than this is not a real one


def json_object() -> dict:
    """The request's JSON body, which must be an object."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Problem(400, "Bad request", "Send a JSON object (Content-Type: "
                      "application/json).")
    return body


def text(value: object, name: str) -> str:
    """`value` as text a database can store: a string of at most MAX_TEXT characters,
    with no NUL and no unpaired surrogate (JSON's "\\ud800" escapes), else 400."""
    if not isinstance(value, str):
        raise Problem(400, "Bad request", f"{name} must be a string.")
    if len(value) > MAX_TEXT or "\0" in value or not _encodable(value):
        raise Problem(400, "Bad request", f"{name} must be at most {MAX_TEXT} characters of "
                      "valid Unicode text, without NUL characters.")
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
