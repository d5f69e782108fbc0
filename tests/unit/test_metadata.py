"""Metadata from real files: dimensions as displayed, EXIF as plain JSON, GPS flagged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import pytest

from media import metadata
from media.errors import MediaError
from tests.conftest import CORPUS

IMAGES, VIDEOS = CORPUS / "images", CORPUS / "video"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe missing")


def test_portrait_6_is_displayed_upright_with_exif():
    meta = metadata.image_metadata(IMAGES / "orientation/Portrait_6.jpg")

    assert (meta["width"], meta["height"]) == (1200, 1800)  # stored 1800x1200, orientation 6
    assert meta["format"] == "JPEG"
    assert meta["frames"] == 1
    assert meta["exif"]["Orientation"] == 6


def test_camera_exif_fields():
    exif = metadata.image_metadata(IMAGES / "camera/DSCN0010.jpg")["exif"]

    assert exif["Make"] == "NIKON"
    assert exif["Model"] == "COOLPIX P6000"
    assert exif["DateTimeOriginal"] == "2008:10:22 16:28:39"
    assert exif["ISOSpeedRatings"] == 64
    # rational values (Pillow's IFDRational) come out as plain numbers, not dropped
    assert exif["FNumber"] == pytest.approx(5.9)
    assert exif["ExposureTime"] == pytest.approx(1 / 75, rel=1e-3)
    assert exif["FocalLength"] == pytest.approx(24)


def test_gps_is_numbers_flagged_sensitive():
    gps = metadata.image_metadata(IMAGES / "camera/DSCN0010.jpg")["exif"]["gps"]

    assert gps["sensitive"] is True
    assert gps["latitude"] == pytest.approx(43.4674483, abs=1e-6)  # N
    assert gps["longitude"] == pytest.approx(11.8851267, abs=1e-6)  # E
    assert isinstance(gps["latitude"], float) and isinstance(gps["longitude"], float)


def test_western_longitudes_are_negative():
    gps = metadata.image_metadata(IMAGES / "misc/vacation_2017.jpg")["exif"]["gps"]

    assert gps["latitude"] == pytest.approx(26.12, abs=0.01)
    assert gps["longitude"] == pytest.approx(-80.16, abs=0.01)


@pytest.mark.parametrize("path", sorted(p for p in IMAGES.rglob("*") if p.is_file()
                                        and p.name != "decompression_bomb.gif"),
                         ids=lambda p: p.name)
def test_every_corpus_image_gives_json(path):
    meta = metadata.image_metadata(path)

    assert meta["width"] > 0 and meta["height"] > 0
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta  # plain JSON, no NaN


def test_no_exif_gives_no_gps():
    exif = metadata.image_metadata(IMAGES / "camera/no_exif.jpg")["exif"]

    assert "gps" not in exif


def test_a_bomb_is_refused_before_decoding():
    with pytest.raises(MediaError, match="too many pixels"):
        metadata.image_metadata(IMAGES / "pillow/decompression_bomb.gif")


def test_animated_gif_frames():
    assert metadata.image_metadata(IMAGES / "misc/pigs_in_a_polka.gif")["frames"] > 1


@needs_ffmpeg
def test_video_metadata_h264_aac():
    meta = metadata.video_metadata(VIDEOS / "fire2.mp4")

    assert (meta["width"], meta["height"]) == (1280, 720)
    assert meta["video_codec"] == "h264"
    assert meta["audio_codec"] == "aac"
    assert meta["duration"] == pytest.approx(2.38, abs=0.1)
    assert meta["frame_rate"] > 0
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta


@needs_ffmpeg
def test_video_metadata_without_audio():
    meta = metadata.video_metadata(VIDEOS / "example.mp4")

    assert meta["audio_codec"] is None
    assert meta["audio_channels"] is None
    assert meta["frame_rate"] == pytest.approx(25.0)


@needs_ffmpeg
def test_video_metadata_ntsc_rate():
    assert metadata.video_metadata(VIDEOS / "smpte-2997.mp4")["frame_rate"] > 0


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 17])
def test_sha256_of_matches_hashlib(size):
    data = os.urandom(size)

    assert metadata.sha256_of(io.BytesIO(data)) == (hashlib.sha256(data).hexdigest(), size)


def test_sha256_of_a_corpus_file():
    path = VIDEOS / "fire2.mp4"
    with open(path, "rb") as fh:
        digest, size = metadata.sha256_of(fh)

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert size == path.stat().st_size
