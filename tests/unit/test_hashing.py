"""One pass over a stream: head kept for sniffing, size and SHA-256 of all of it."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from media.hashing import HashingStream, TooLarge


def test_a_stored_object_read_without_a_limit():
    data = os.urandom(3 * 1024 * 1024 + 7)
    hashing = HashingStream(io.BytesIO(data), None, 4096)

    digest = hashing.finish(1024 * 1024)

    assert hashing.head == data[:4096]
    assert (digest.size, digest.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_an_empty_stream():
    hashing = HashingStream(io.BytesIO(b""), None, 4096)

    assert hashing.head == b"" and hashing.finish().size == 0


def test_a_limit_is_enforced_while_reading():
    hashing = HashingStream(io.BytesIO(b"x" * 10_000), 5000, 4096)

    with pytest.raises(TooLarge):
        hashing.finish()
