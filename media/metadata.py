"""Metadata: what Pillow says of an image and ffprobe of a video, as plain JSON values."""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image

from media import thumbnails, video
from media.errors import MediaError


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """The SHA-256 hex digest and size of a stream, read in 1 MiB pieces."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def image_metadata(src: Path, max_pixels: int = thumbnails.DEFAULT_MAX_PIXELS) -> dict:
    """Dimensions as displayed, format, mode, bit depth, ICC profile name, frames, selected
    EXIF and a perceptual hash. Idempotent (reads only); the hash decodes a small draft."""
    with thumbnails.open_image(src, max_pixels) as image:
        width, height = thumbnails.displayed_size(image)
        icc = image.info.get("icc_profile")
        meta = {
            "width": width,
            "height": height,
            "format": image.format,
            "mode": image.mode,
            "bit_depth": _bit_depth(image, src),
            "frames": thumbnails.frame_count(image),
            "has_icc_profile": bool(icc),
            "icc_profile": thumbnails.profile_name(icc),
            "exif": _exif(image),
        }
        meta["phash"] = _phash(image)
        return meta


def phash_distance(a: str, b: str) -> int:
    """Bits that differ between two `phash` values: 0-10 near-duplicates, ~32 unrelated."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def video_metadata(src: Path) -> dict:
    """Container, duration, geometry after rotation, codecs, rates and creation time, from
    one ffprobe run. Idempotent (reads only)."""
    info = video.probe(src)
    v, a, fmt = info.video, info.audio or {}, info.raw.get("format", {})
    return {
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
        "rotation": info.rotation,
        "container": info.format_name,
        "bit_rate": _int(fmt.get("bit_rate")),
        "video_codec": v.get("codec_name"),
        "video_profile": _known(v.get("profile")),
        "video_bit_rate": _int(v.get("bit_rate")),
        "frame_rate": (video.frame_rate(v.get("avg_frame_rate"))
                       or video.frame_rate(v.get("r_frame_rate"))),
        "pixel_format": v.get("pix_fmt"),
        # "HLG" or "PQ" for high dynamic range (tone-mapped to SDR in the renditions)
        "hdr": video.HDR_TRANSFERS.get(v.get("color_transfer")),
        "audio_codec": a.get("codec_name"),
        "audio_profile": _known(a.get("profile")),
        "audio_channels": a.get("channels"),
        "audio_sample_rate": _int(a.get("sample_rate")),
        "creation_time": _creation_time(fmt, v),
    }


def _known(value: str | None) -> str | None:
    return None if value in (None, "", "unknown") else str(value)


def _creation_time(fmt: dict, stream: dict) -> str | None:
    # Cameras write it on the container, some muxers only on the stream; the Unix epoch
    # (0) is what a muxer writes when it had no clock, not a date anybody recorded.
    for tags in (fmt.get("tags", {}), stream.get("tags", {})):
        value = str(tags.get("creation_time") or "").strip()
        if value and not value.startswith(("1970-01-01", "1904-01-01")):
            return value[:40]
    return None


def _bit_depth(image: Image.Image, src: Path) -> int | None:
    """Bits per channel as stored, which Pillow's mode hides for 16-bit PNG and TIFF."""
    try:
        if image.format == "PNG":
            with open(src, "rb") as fh:
                return fh.read(25)[24]  # IHDR's bit depth byte
        if image.format == "TIFF":
            bits = image.tag_v2.get(258, 8)
            return int(max(bits) if isinstance(bits, tuple) else bits)
    except (OSError, IndexError, TypeError, ValueError):
        return None
    if isinstance(depth := image.info.get("bit_depth"), int):  # HEIF and AVIF
        return depth
    return _MODE_BITS.get(image.mode)


_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_MODE_BITS.update(dict.fromkeys(("L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La", "CMYK",
                                 "YCbCr", "LAB", "HSV"), 8))


def _phash(image: Image.Image) -> str | None:
    """64-bit DCT hash of the upright image (as imagehash's phash): 16 hex digits."""
    try:
        small = thumbnails.decode(image, 64)
    except MediaError:
        return None  # truncated or corrupt pixels: no hash, the rest still stands
    grey = small.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    rows = [list(grey.crop((0, y, 32, y + 1)).tobytes()) for y in range(32)]
    low = [[sum(row[x] * _COS[u][x] for x in range(32)) for u in range(8)] for row in rows]
    dct = [[sum(low[y][u] * _COS[v][y] for y in range(32)) for u in range(8)]
           for v in range(8)]
    values = [value for line in dct for value in line]
    median = sorted(values)[32]
    bits = "".join("1" if value > median else "0" for value in values)
    return f"{int(bits, 2):016x}"


_COS = [[math.cos(math.pi * u * (2 * x + 1) / 64) for x in range(32)] for u in range(8)]

# EXIF tags worth showing, by the name Pillow gives them.
_EXIF_TAGS = ("Make", "Model", "LensMake", "LensModel", "Software", "DateTimeOriginal",
              "OffsetTimeOriginal", "DateTime", "ExposureTime", "FNumber", "ISOSpeedRatings",
              "ExposureBiasValue", "ExposureProgram", "FocalLength", "FocalLengthIn35mmFilm",
              "Orientation", "Flash", "WhiteBalance", "Artist", "Copyright")


def _exif(image: Image.Image) -> dict:
    try:
        exif = image.getexif()
        merged = {**exif, **exif.get_ifd(ExifTags.IFD.Exif)}
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for tag_id, value in merged.items():
        name = ExifTags.TAGS.get(tag_id)
        if name in _EXIF_TAGS and (clean := _json_value(value)) is not None:
            out[name] = clean
    if taken := _taken_at(out.get("DateTimeOriginal"), out.get("OffsetTimeOriginal")):
        out["taken_at"] = taken
    if position := _gps(gps):
        out["gps"] = {**position, "sensitive": True}
    return out


def _taken_at(stamp, offset) -> str | None:
    """EXIF's "2008:10:22 16:28:39" (and "+01:00") as ISO 8601, or None if malformed."""
    try:
        when = datetime.strptime(str(stamp)[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    text = when.isoformat()
    return text + offset if isinstance(offset, str) and _OFFSET.fullmatch(offset) else text


_OFFSET = re.compile(r"[+-]\d\d:\d\d")


def _gps(gps: dict) -> dict | None:
    try:
        lat = _degrees(gps[2], gps[1])
        lon = _degrees(gps[4], gps[3])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    position = {"latitude": round(lat, 7), "longitude": round(lon, 7)}
    try:  # altitude below sea level when AltitudeRef (5) is 1
        altitude = float(gps[6])
        position["altitude"] = round(-altitude if gps.get(5) in (1, b"\x01") else altitude, 2)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return position


def _degrees(dms, ref) -> float:
    d, m, s = (float(x) for x in dms)
    value = d + m / 60 + s / 3600
    return -value if str(ref).strip("\x00").upper() in ("S", "W") else value


def _json_value(value):
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value.strip("\x00").strip()[:200] or None
    if isinstance(value, numbers.Real):  # int, float and Pillow's IFDRational
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            return None
        return int(number) if number.is_integer() else round(number, 6)
    if isinstance(value, tuple) and len(value) <= 4:
        return [v for v in (_json_value(x) for x in value) if v is not None] or None
    return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

