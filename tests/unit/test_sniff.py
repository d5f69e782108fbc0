"""Content sniffing: real corpus files are classified by their bytes; look-alikes refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from media.errors import MediaError, UnsupportedMedia
from media.sniff import SNIFF_BYTES, sniff
from tests.conftest import CORPUS


def corpus_files(folder: str) -> list[Path]:
    return sorted(p for p in (CORPUS / folder).rglob("*") if p.is_file())


def head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(SNIFF_BYTES)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08free"


def test_the_corpus_is_there(corpus):
    assert len(corpus_files("images")) >= 40 and len(corpus_files("video")) >= 9


@pytest.mark.parametrize("path", corpus_files("images"), ids=lambda p: p.name)
def test_every_corpus_image_is_an_image(path):
    assert sniff(head(path)).kind == "image"


@pytest.mark.parametrize("path", corpus_files("video"), ids=lambda p: p.name)
def test_every_corpus_video_is_a_video(path):
    assert sniff(head(path)).kind == "video"


@pytest.mark.parametrize(("name", "content_type"), [
    ("images/camera/DSCN0010.jpg", "image/jpeg"),
    ("images/misc/python_logo.png", "image/png"),
    ("images/misc/pigs_in_a_polka.gif", "image/gif"),
    ("images/pillow/hopper_orientation_6.webp", "image/webp"),
    ("images/camera/BSG1.tiff", "image/tiff"),
    ("images/pillow/icc_profile.avif", "image/avif"),
    ("images/camera/IMG_5195.HEIC", "image/heic"),
    ("video/fire2.mp4", "video/mp4"),
    ("video/transparent.webm", "video/webm"),
])
def test_content_types(name, content_type):
    assert sniff(head(CORPUS / name)).content_type == content_type


@pytest.mark.parametrize(("data", "content_type"), [
    (ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    (ftyp(b"isom", b"isom", b"avc1"), "video/mp4"),
    (ftyp(b"3gp4", b"3gp4"), "video/3gpp"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "video/x-matroska"),
    (b"RIFF\x00\x10\x00\x00AVI LIST", "video/x-msvideo"),
    ((b"\x47" + b"\x00" * 187) * 3, "video/mp2t"),
    ((b"\x00\x00\x00\x00\x47" + b"\x00" * 187) * 3, "video/mp2t"),  # M2TS (AVCHD .MTS)
    (b"FLV\x01\x05\x00\x00\x00\x09", "video/x-flv"),
    (b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little") + b"\x00" * 40, "image/bmp"),
])
def test_synthetic_headers(data, content_type):
    assert sniff(data).content_type == content_type


REFUSED = {
    "text": b"Hello, this is a plain text file.\n",
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
           b"<script>alert(1)</script></svg>",
    "svg-with-xml-declaration": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "hls": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    "empty": b"",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40,
    "m4a": ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"),
    "wav": b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00",
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00",
    "ebml-without-doctype": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "ftyp-without-brand": b"\x00\x00\x00\x08ftyp",
    "bmp-like-text": b"BMW is a car maker, not a bitmap header at all....",
    "one-byte": b"\xff",
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_refused(data):
    with pytest.raises(UnsupportedMedia) as caught:
        sniff(data)

    assert isinstance(caught.value, MediaError)  # a permanent failure, shown to the person
    assert "not an image or video" in str(caught.value)
