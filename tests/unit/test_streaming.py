"""Streaming multipart parsing on bodies built by hand: part order, tiny reads, limits,
truncation, and the hash, size and head of the file part."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from media.hashing import HashingStream, TooLarge
from web.streaming import CHUNK, MalformedBody, MultipartReader

BOUNDARY = b"----mediamill-test-7MA4YWxkTrZu0gW"
HEAD = 4096


def body(*parts: tuple[str, str | None, bytes], end: bool = True) -> bytes:
    """A multipart/form-data body: each part is (name, filename or None, content)."""
    out = b"preamble that clients may send and parsers must skip\r\n"
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += b"--" + BOUNDARY + b"\r\n"
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    if end:
        out += b"--" + BOUNDARY + b"--\r\n"
    return out


class Trickle:
    """A request body that answers at most `most` bytes a read, and counts what it gave."""

    def __init__(self, data: bytes, most: int = 7) -> None:
        self._data = io.BytesIO(data)
        self._most = most
        self.given = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(self._most if size < 0 else min(size, self._most))
        self.given += len(chunk)
        return chunk


class Endless:
    """A body whose file part never ends: a client sending more than it may."""

    def __init__(self) -> None:
        self._start = io.BytesIO(body(("file", "huge.bin", b""), end=False)[:-2])
        self.given = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._start.read(size) or b"\x00" * size
        self.given += len(chunk)
        return chunk


def read_in(stream, size: int) -> bytes:
    out = b""
    while chunk := stream.read(size):
        assert len(chunk) <= size
        out += chunk
    return out


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(3 * CHUNK + 12_345)  # several decoder chunks, not a round number


def collect(stream, limit: int = 10**9) -> list[tuple]:
    """Walk the parts as the upload view does: fields as text, the file through a
    HashingStream read to its end."""
    seen = []
    for part in MultipartReader(stream, BOUNDARY).parts():
        if part.filename is None:
            seen.append(("field", part.name, part.text(2048)))
        else:
            hashing = HashingStream(part, limit, HEAD)
            content = read_in(hashing, 65_536)  # what storage receives: the head included
            digest = hashing.finish()
            seen.append(("file", part.name, part.filename, content, hashing.head, digest))
    return seen


def test_fields_before_and_after_the_file(payload):
    data = body(("webhook_url", None, b"https://example.com/hook"),
                ("file", "holiday.jpg", payload), ("note", None, "héllo".encode()))

    seen = collect(io.BytesIO(data))

    assert [s[:2] for s in seen] == [("field", "webhook_url"), ("file", "file"),
                                     ("field", "note")]
    assert seen[0][2] == "https://example.com/hook"
    assert seen[2][2] == "héllo"
    _, _, filename, content, head, digest = seen[1]
    assert filename == "holiday.jpg"
    assert content == payload
    assert head == payload[:HEAD]
    assert digest.size == len(payload)
    assert digest.sha256 == hashlib.sha256(payload).hexdigest()


def test_a_file_split_across_tiny_reads(payload):
    small = payload[:20_000]
    data = body(("a", None, b"1"), ("file", "x.bin", small), ("b", None, b"2"))

    seen = collect(Trickle(data, most=7))

    assert [s[1] for s in seen] == ["a", "file", "b"]
    _, _, _, content, head, digest = seen[1]
    assert content == small
    assert head == small[:HEAD]
    assert (digest.size, digest.sha256) == (len(small), hashlib.sha256(small).hexdigest())


def test_content_that_looks_like_a_boundary_is_kept(payload):
    tricky = b"--" + BOUNDARY[:-1] + b"\r\n--" + BOUNDARY + b"X\r\n\r\n" + payload[:1000]
    data = body(("file", "tricky.bin", tricky))

    [(_, _, _, content, _, digest)] = collect(Trickle(data, most=5))

    assert content == tricky and digest.size == len(tricky)


def test_a_file_shorter_than_the_head(payload):
    [(_, _, _, content, head, digest)] = collect(io.BytesIO(body(("file", "s", b"GIF89a"))))

    assert content == head == b"GIF89a"
    assert digest.size == 6


def test_an_empty_file(payload):
    [(_, _, filename, content, head, digest)] = collect(io.BytesIO(body(("file", "e", b""))))

    assert (filename, content, head) == ("e", b"", b"")
    assert digest.sha256 == hashlib.sha256(b"").hexdigest() and digest.size == 0


def test_a_part_left_unread_is_skipped(payload):
    data = body(("ignored", None, payload), ("file", "f.bin", b"kept"))

    names = []
    for part in MultipartReader(Trickle(data, most=1000), BOUNDARY).parts():
        names.append(part.name)
        if part.name == "file":
            assert part.read() == b"kept"

    assert names == ["ignored", "file"]


def test_hashing_stream_reads_are_no_larger_than_asked(payload):
    part = next(MultipartReader(io.BytesIO(body(("file", "f", payload))), BOUNDARY).parts())
    hashing = HashingStream(part, 10**9, HEAD)

    pieces = [hashing.read(n) for n in (1, 100, 5000, 3)]

    assert [len(p) for p in pieces] == [1, 100, 5000, 3]
    assert b"".join(pieces) == payload[:5104]


def test_hashing_stream_read_without_size_gives_everything(payload):
    part = next(MultipartReader(io.BytesIO(body(("file", "f", payload))), BOUNDARY).parts())
    hashing = HashingStream(part, 10**9, HEAD)

    assert hashing.read() == payload
    assert hashing.read() == b""
    assert hashing.finish().sha256 == hashlib.sha256(payload).hexdigest()


def test_too_large_at_one_byte_over_the_limit(payload):
    data = body(("file", "f", payload))

    [(_, _, _, content, _, digest)] = collect(io.BytesIO(data), limit=len(payload))
    assert digest.size == len(payload)
    with pytest.raises(TooLarge):
        collect(io.BytesIO(data), limit=len(payload) - 1)


def test_too_large_inside_the_head():
    with pytest.raises(TooLarge):
        collect(io.BytesIO(body(("file", "f", b"x" * 100))), limit=10)


def test_too_large_stops_reading_early():
    """Past the limit we stop at once, without reading (or holding) the rest."""
    endless = Endless()
    limit = 1024 * 1024

    with pytest.raises(TooLarge):
        collect(endless, limit=limit)

    assert endless.given < limit + 4 * CHUNK


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated_body_is_malformed(payload, keep):
    data = body(("note", None, b"hello"), ("file", "f.bin", payload))
    cut = data[:int(len(data) * keep)]

    with pytest.raises(MalformedBody):
        collect(Trickle(cut, most=4096))


def test_body_without_the_closing_boundary_is_malformed(payload):
    with pytest.raises(MalformedBody):
        collect(io.BytesIO(body(("file", "f", payload[:100]), end=False)))


def test_not_multipart_at_all():
    with pytest.raises(MalformedBody):
        collect(io.BytesIO(b'{"file": "not multipart"}'))


def test_field_longer_than_its_limit_is_malformed():
    part = next(MultipartReader(io.BytesIO(body(("webhook_url", None, b"h" * 5000))),
                                BOUNDARY).parts())

    with pytest.raises(MalformedBody, match="webhook_url"):
        part.text(2048)


@pytest.mark.parametrize(("sent", "name"), [
    ("C:\\Users\\me\\pic.jpg", "C:\\Users\\me\\pic.jpg"),  # a browser sends \ as it is
    ("..\\..\\win.ini", "..\\..\\win.ini"),
    ('say \\"cheese\\".jpg', 'say "cheese".jpg'),  # curl's escapes
    ("back\\\\slash.jpg", "back\\slash.jpg"),
    ("a%22b%0Ac.jpg", 'a"b\nc.jpg'),  # HTML's escapes for ", LF and CR
    ("Ünïcode фото.jpg", "Ünïcode фото.jpg"),
    ("", ""),
])
def test_filenames_are_kept_as_the_client_named_them(sent, name):
    parts = list(MultipartReader(io.BytesIO(body(("file", sent, b"x"))), BOUNDARY).parts())
    assert parts[0].filename == name


def test_a_field_without_a_filename_has_none():
    parts = list(MultipartReader(io.BytesIO(body(("webhook_url", None, b"x"))), BOUNDARY).parts())
    assert parts[0].filename is None
