"""Content sniffing: what the first bytes of an upload say it is, never its name or header."""

from __future__ import annotations

from typing import NamedTuple

from media.errors import UnsupportedMedia

SNIFF_BYTES = 4096  # enough for every signature below

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
                b"mif1", b"msf1"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_BMP_HEADERS = {12, 40, 52, 56, 64, 108, 124}


class Sniffed(NamedTuple):
    kind: str  # "image" or "video"
    content_type: str


def sniff(head: bytes) -> Sniffed:
    """Classify an upload from its first bytes; UnsupportedMedia for anything else."""
    found = _image(head) or _video(head)
    if found is None:
        raise UnsupportedMedia(
            "The file is not an image or video this service can process "
            "(accepted: JPEG, PNG, GIF, WebP, TIFF, BMP, AVIF, HEIC, MP4, MOV, WebM, MKV, "
            "AVI, MPEG-TS, FLV)."
        )
    return found


def _image(head: bytes) -> Sniffed | None:
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "image/gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "image/webp")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed("image", "image/tiff")
    dib_header = int.from_bytes(head[14:18], "little") if len(head) >= 18 else 0
    if head[:2] == b"BM" and dib_header in _BMP_HEADERS:
        return Sniffed("image", "image/bmp")
    if head[4:8] == b"ftyp":
        brands = _ftyp_brands(head)
        if b"avif" in brands or b"avis" in brands:
            return Sniffed("image", "image/avif")
        if brands and brands[0] in _HEIF_BRANDS:
            return Sniffed("image", "image/heic")
    return None


def _video(head: bytes) -> Sniffed | None:
    if head[4:8] == b"ftyp":
        brands = _ftyp_brands(head)
        if not brands or brands[0] in _AUDIO_BRANDS:
            return None
        if brands[0] == b"qt  ":
            return Sniffed("video", "video/quicktime")
        if brands[0].startswith(b"3g2"):
            return Sniffed("video", "video/3gpp2")
        if brands[0].startswith(b"3gp"):
            return Sniffed("video", "video/3gpp")
        return Sniffed("video", "video/mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return Sniffed("video", "video/quicktime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        if b"webm" in head[:64]:
            return Sniffed("video", "video/webm")
        if b"matroska" in head[:64]:
            return Sniffed("video", "video/x-matroska")
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "video/x-msvideo")
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return Sniffed("video", "video/mp2t")
    if len(head) > 388 and head[4] == head[196] == head[388] == 0x47:  # M2TS/AVCHD (.MTS):
        return Sniffed("video", "video/mp2t")  # 192-byte packets, a 4-byte timecode first
    if head.startswith(b"\x00\x00\x01\xba"):
        return Sniffed("video", "video/mpeg")
    if head.startswith(b"FLV\x01"):
        return Sniffed("video", "video/x-flv")
    return None


def _ftyp_brands(head: bytes) -> list[bytes]:
    """Major brand then compatible brands of an ISO-BMFF `ftyp` box."""
    size = int.from_bytes(head[0:4], "big")
    end = min(size, len(head)) if size >= 16 else min(len(head), 16)
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, end - 3, 4)]
    return [b for b in brands if len(b) == 4]
