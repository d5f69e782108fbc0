"""The JSON API's request parsing, shared by its blueprints: a 400 for a body or value
that is not what the call takes, before anything is stored."""

from __future__ import annotations

from flask import json, request

from web.errors import Problem

MAX_TEXT = 4096  # characters: a filename or URL longer than this is not a real one
# The largest JSON body a call takes is a complete naming all 10,000 parts: 0.7 MB compact,
# 1.13 MB indented by four (json.dumps(indent=4)) with the 34-character ETags S3 answers.
# 2 MiB leaves room for that (and for indent=8) and bounds what a worker holds; unbounded,
# a 100 MB body was read whole before its 400.
MAX_JSON_BYTES = 2 * 1024 * 1024
READ_SIZE = 64 * 1024


def json_object() -> dict:
    """The request's JSON body, which must be an object: 400 if it is not, 413 if it is
    longer than MAX_JSON_BYTES, declared or sent chunked."""
    body = None
    if request.is_json:
        try:
            body = json.loads(_body(MAX_JSON_BYTES))
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
            body = None
    if not isinstance(body, dict):
        raise Problem(400, "Bad request", "Send a JSON object (Content-Type: "
                      "application/json).")
    return body


def _body(limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes. Read here, not
    by request.get_json() under request.max_content_length: Werkzeug (3.1) refuses a declared
    Content-Length over that, but cuts a chunked body at it without a word, and the cut body
    is then taken (`{}` and a megabyte of spaces) or refused as malformed JSON: never a 413."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    while chunk := request.stream.read(READ_SIZE):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "Payload Too Large", f"A JSON request body is at most {limit} bytes.")


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
