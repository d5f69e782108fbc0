"""Streaming multipart/form-data: file parts are read as streams, never held in memory.

Werkzeug's form parser spools files to temporary storage before the view runs; for uploads
of gigabytes we instead pull-parse the request body with its sans-IO decoder and hand the
file part to storage as a readable stream, hashing and counting it on the way.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

CHUNK = 256 * 1024


class MalformedBody(ValueError):
    """The body ended early or is not valid multipart/form-data."""


class TooLarge(Exception):
    """The file part grew past the configured limit."""


class MultipartReader:
    """Yields the parts of a multipart body in order; each must be read before the next."""

    def __init__(self, stream: BinaryIO, boundary: bytes) -> None:
        self._stream = stream
        self._decoder = MultipartDecoder(boundary)

    def parts(self) -> Iterator[Part]:
        """Each field or file part, in the order the client sent them."""
        while True:
            event = self._next()
            if isinstance(event, Field | File):
                part = Part(self, event.name, getattr(event, "filename", None), event.headers)
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
            self._decoder.receive_data(chunk or None)


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


@dataclass
class Digest:
    size: int = 0
    sha256: str = ""


class HashingStream:
    """Wraps a part: keeps its first bytes for sniffing, hashes and counts all of it, and
    raises TooLarge as soon as it passes `limit` bytes."""

    def __init__(self, part: Part, limit: int, head_size: int) -> None:
        self._part = part
        self._limit = limit
        self._hash = hashlib.sha256()
        self.digest = Digest()
        self.head = b""
        while len(self.head) < head_size and (more := part.read(head_size - len(self.head))):
            self.head += more
        self._pending = self.head
        self._count(self.head)

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left if negative); short only at the end.

        Readers such as boto3's upload_fileobj take a short read of a non-seekable stream
        for its end: answering the first read with only the sniffed head made boto3 judge
        the upload small and buffer all of it in memory for a single PUT.
        """
        if not self._pending:
            data = self._part.read(size)
            self._count(data)
            return data
        if 0 <= size < len(self._pending):
            out, self._pending = self._pending[:size], self._pending[size:]
            return out
        out, self._pending = self._pending, b""
        more = self._part.read(size - len(out) if size >= 0 else -1)
        self._count(more)
        return out + more

    def readable(self) -> bool:
        return True

    def finish(self) -> Digest:
        """Read what is left (hashing it) and return the final size and SHA-256."""
        while self.read(CHUNK):
            pass
        self.digest.sha256 = self._hash.hexdigest()
        return self.digest

    def _count(self, data: bytes) -> None:
        self.digest.size += len(data)
        if self.digest.size > self._limit:
            raise TooLarge(self.digest.size)
        self._hash.update(data)
