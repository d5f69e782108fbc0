"""Metadata: what Pillow says of an image and ffprobe of a video, as plain JSON values."""

from __future__ import annotations

import hashlib
import numbers
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image

from media import thumbnails, video

# EXIF tags worth showing, by the name Pillow gives them.
_EXIF_TAGS = ("Make", "Model", "LensModel", "Software", "DateTimeOriginal", "DateTime",
              "ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength", "Orientation",
              "Flash", "WhiteBalance", "Artist", "Copyright")


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """The SHA-256 hex digest and size of a stream, read in 1 MiB pieces."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def image_metadata(src: Path, max_pixels: int = thumbnails.DEFAULT_MAX_PIXELS) -> dict:
    """Dimensions as displayed, format, mode, frames and selected EXIF. Decodes no pixels."""
    with thumbnails.open_image(src, max_pixels) as image:
        width, height = thumbnails.displayed_size(image)
        icc = image.info.get("icc_profile")
        return {
            "width": width,
            "height": height,
            "format": image.format,
            "mode": image.mode,
            "frames": getattr(image, "n_frames", 1),
            "has_icc_profile": bool(icc),
            "exif": _exif(image),
        }


def video_metadata(src: Path) -> dict:
    """Container, duration, geometry after rotation, codecs and rates from one ffprobe."""
    info = video.probe(src)
    v, a = info.video, info.audio or {}
    return {
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
        "rotation": info.rotation,
        "container": info.format_name,
        "bit_rate": _int(info.raw.get("format", {}).get("bit_rate")),
        "video_codec": v.get("codec_name"),
        "frame_rate": _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
        "pixel_format": v.get("pix_fmt"),
        "audio_codec": a.get("codec_name"),
        "audio_channels": a.get("channels"),
        "audio_sample_rate": _int(a.get("sample_rate")),
    }


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
    if position := _gps(gps):
        out["gps"] = {**position, "sensitive": True}
    return out


def _gps(gps: dict) -> dict | None:
    try:
        lat = _degrees(gps[2], gps[1])
        lon = _degrees(gps[4], gps[3])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return {"latitude": round(lat, 7), "longitude": round(lon, 7)}


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


def _rate(value: str | None) -> float | None:
    try:
        rate = float(Fraction(value))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if rate > 0 else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

