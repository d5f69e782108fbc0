"""One pass over an upload's bytes: keep its head for sniffing, count and hash all of it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

READ_SIZE = 256 * 1024


class TooLarge(Exception):
    """The stream grew past the configured limit."""


@dataclass
class Digest:
    size: int = 0
    sha256: str = ""


class HashingStream:
    """Wraps a readable stream: keeps its first `head_size` bytes for sniffing, hashes and
    counts all of it, and raises TooLarge as soon as it passes `limit` bytes (None: no limit)."""

    def __init__(self, stream: BinaryIO, limit: int | None, head_size: int) -> None:
        self._stream = stream
        self._limit = limit
        self._hash = hashlib.sha256()
        self.digest = Digest()
        self.head = b""
        while len(self.head) < head_size and (more := stream.read(head_size - len(self.head))):
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
            data = self._stream.read(size)
            self._count(data)
            return data
        if 0 <= size < len(self._pending):
            out, self._pending = self._pending[:size], self._pending[size:]
            return out
        out, self._pending = self._pending, b""
        more = self._stream.read(size - len(out) if size >= 0 else -1)
        self._count(more)
        return out + more

    def readable(self) -> bool:
        return True

    def finish(self, read_size: int = READ_SIZE) -> Digest:
        """Read what is left (hashing it) and return the final size and SHA-256."""
        while self.read(read_size):
            pass
        self.digest.sha256 = self._hash.hexdigest()
        return self.digest

    def _count(self, data: bytes) -> None:
        self.digest.size += len(data)
        if self._limit is not None and self.digest.size > self._limit:
            raise TooLarge(self.digest.size)
        self._hash.update(data)
