"""Streaming multipart/form-data: file parts are read as streams, never held in memory.

Werkzeug's form parser spools files to temporary storage before the view runs; for uploads
of gigabytes we instead pull-parse the request body with its sans-IO decoder and hand the
file part to storage as a readable stream (media.hashing hashes and counts it on the way).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from web.errors import Problem

CHUNK = 256 * 1024
# What the decoder may hold at once that is not yet a part's data: a preamble, a part's
# headers, the tail it keeps to find the next boundary. Unbounded, a 20 MB preamble was held
# whole (124 MB at peak); a few of our reads leave room for any real client's.
DECODER_BUFFER = 4 * CHUNK


class BodyGuard:
    """WSGI middleware for the request body. gunicorn waits for a body's next bytes for
    ever and lets a malformed chunked body raise its own errors: a client that stalled
    held a web thread for good (a few dozen such clients stopped the service), and a bad
    chunk size was a 500. Here a read that waits `timeout` seconds answers 408, and a body
    that cannot be read answers 400; gunicorn then closes the connection."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    def __call__(self, environ, start_response):
        # under gunicorn: blocking with no timeout but the headers' (config.gunicorn)
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(self.timeout)
        if environ.get("wsgi.input") is not None:
            environ["wsgi.input"] = _GuardedInput(environ["wsgi.input"], self.timeout)
        return self.app(environ, start_response)


class _GuardedInput:
    """wsgi.input whose read errors are problems: 408 for a stall, 400 for the rest."""

    def __init__(self, stream: BinaryIO, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout

    def read(self, size: int = -1) -> bytes:
        return self._guarded(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._guarded(self._stream.readline, size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _guarded(self, read, size: int) -> bytes:
        try:
            return read(size)
        except TimeoutError:
            raise Problem(408, "Request Timeout", f"No part of the request body arrived for "
                          f"{self._timeout:g} s; send the request again.") from None
        except Exception as exc:  # gunicorn's NoMoreData, InvalidChunkSize, ...: the client's
            raise Problem(400, "Malformed body", f"The request body could not be read "
                          f"({exc or type(exc).__name__}).") from None


class MalformedBody(ValueError):
    """The body ended early or is not valid multipart/form-data."""


class MultipartReader:
    """Yields the parts of a multipart body in order; each must be read before the next."""

    def __init__(self, stream: BinaryIO, boundary: bytes) -> None:
        self._stream = stream
        self._decoder = MultipartDecoder(boundary, max_form_memory_size=DECODER_BUFFER)

    def parts(self) -> Iterator[Part]:
        """Each field or file part, in the order the client sent them."""
        while True:
            event = self._next()
            if isinstance(event, Field | File):
                filename = _filename(event.headers, getattr(event, "filename", None))
                part = Part(self, event.name, filename, event.headers)
                yield part
                part.drain()
            elif isinstance(event, Epilogue):
                return

    def _next(self):
        while True:
            try:
                event = self._decoder.next_event()
            except ValueError as exc:
                raise MalformedBody(str(exc)) from exc
            if not isinstance(event, NeedData):
                return event
            chunk = self._stream.read(CHUNK)
            try:
                self._decoder.receive_data(chunk or None)
            except RequestEntityTooLarge:
                raise MalformedBody(f"over {DECODER_BUFFER} bytes arrived outside the parts' "
                                    "bodies (a preamble or part headers)") from None


_QUOTED_FILENAME = re.compile(r'(?:^|;)\s*filename\s*=\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)


def _filename(headers, parsed: str | None) -> str | None:
    """The part's filename exactly as the client named it. Browsers (HTML's multipart/form-
    data) send a backslash as it is and escape only `"`, CR and LF, as %22, %0D and %0A;
    curl escapes `"` and backslash with a backslash. Werkzeug reads every backslash as an
    escape and drops it (C:\\Users\\me.jpg became C:Usersme.jpg), so the quoted value is
    read here: a backslash escapes only `"` or another backslash."""
    disposition = headers.get("Content-Disposition", "")
    match = _QUOTED_FILENAME.search(disposition)
    if parsed is None or match is None or "filename*" in disposition.lower():
        return parsed  # no filename, an unquoted one, or RFC 5987's: Werkzeug's reading
    name = re.sub(r'\\(["\\])', r"\1", match.group(1))
    return name.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


class Part:
    """One part's body as a read-only stream."""

    def __init__(self, reader: MultipartReader, name: str, filename: str | None, headers) -> None:
        self._reader = reader
        self.name = name
        self.filename = filename
        self.headers = headers
        # The decoder's Data chunks, kept as they come: a large read is then one join (a
        # read of exactly one chunk returns it without any copy), never a bytearray that
        # grows and is sliced and copied again.
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all of the part if negative); fewer only at its end."""
        while not self._done and (size < 0 or self._buffered < size):
            event = self._reader._next()
            if not isinstance(event, Data):
                raise MalformedBody("unexpected event inside a part")
            if event.data:
                self._chunks.append(event.data)
                self._buffered += len(event.data)
            self._done = not event.more_data
        if size < 0 or size >= self._buffered:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            return out
        taken: list[bytes] = []
        missing = size
        while missing:
            chunk = self._chunks[0]
            if len(chunk) <= missing:
                taken.append(self._chunks.popleft())
                missing -= len(chunk)
            else:
                taken.append(chunk[:missing])
                self._chunks[0] = chunk[missing:]
                missing = 0
        self._buffered -= size
        return b"".join(taken)

    def readable(self) -> bool:
        return True

    def text(self, limit: int) -> str:
        """The whole part as text; MalformedBody if longer than `limit` bytes."""
        data = self.read(limit + 1)
        if len(data) > limit:
            raise MalformedBody(f"form field {self.name!r} is longer than {limit} bytes")
        return data.decode("utf-8", "replace")

    def drain(self) -> None:
        while not self._done:
            self.read(CHUNK)
        self._chunks.clear()
        self._buffered = 0
