"""Metadata from real files: dimensions as displayed, EXIF as plain JSON, GPS flagged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import pytest
from PIL import Image

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


@pytest.mark.parametrize(("name", "bits"), [
    ("pillow/mode_16bit.png", 16), ("pillow/tiff_16bit_RGBa.tiff", 16),
    ("camera/DSCN0010.jpg", 8), ("misc/python_logo.png", 8),
])
def test_bit_depth_as_stored(name, bits):
    """Pillow opens these 16-bit files in 8-bit modes; the stored depth is still reported."""
    assert metadata.image_metadata(IMAGES / name)["bit_depth"] == bits


def test_iphone_heic_profile_lens_and_time_taken():
    meta = metadata.image_metadata(IMAGES / "camera/iphone_13_pro_max.HEIC")

    assert (meta["width"], meta["height"]) == (3024, 4032)
    assert meta["icc_profile"] == "Display P3"
    assert meta["exif"]["LensModel"].startswith("iPhone 13 Pro Max")
    assert meta["exif"]["taken_at"] == "2022-02-16T12:55:41+01:00"
    assert meta["exif"]["FNumber"] == pytest.approx(1.5)


def test_no_profile_gives_no_profile_name():
    meta = metadata.image_metadata(IMAGES / "camera/DSCN0010.jpg")

    assert meta["icc_profile"] is None and meta["has_icc_profile"] is False
    assert meta["exif"]["taken_at"] == "2008-10-22T16:28:39"


def test_perceptual_hash_sees_through_orientation_and_recompression(tmp_path):
    def phash(path):
        return metadata.image_metadata(path)["phash"]

    upright = phash(IMAGES / "orientation/Landscape_1.jpg")
    copy = tmp_path / "copy.jpg"
    with Image.open(IMAGES / "camera/jolla.jpg") as photo:
        photo.resize((800, 600)).save(copy, quality=40)

    assert len(upright) == 16
    for n in range(2, 9):  # the same picture stored in each orientation
        stored = phash(IMAGES / f"orientation/Landscape_{n}.jpg")
        assert metadata.phash_distance(upright, stored) <= 4
    assert metadata.phash_distance(phash(IMAGES / "camera/jolla.jpg"), phash(copy)) <= 6
    assert metadata.phash_distance(phash(IMAGES / "camera/jolla.jpg"),
                                   phash(IMAGES / "camera/iphone_hdr_YES.jpg")) >= 16


def test_truncated_image_still_gives_metadata_without_a_hash():
    meta = metadata.image_metadata(IMAGES / "pillow/truncated_jpeg.jpg")

    assert (meta["width"], meta["height"]) == (100, 100)
    assert meta["phash"] is None


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


@needs_ffmpeg
def test_video_metadata_of_a_phone_clip():
    """fire2.mp4: a phone recording, stored upside down (rotation 180), dated."""
    meta = metadata.video_metadata(VIDEOS / "fire2.mp4")

    assert meta["rotation"] == 180
    assert (meta["width"], meta["height"]) == (1280, 720)
    assert meta["container"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert meta["video_profile"] == "Baseline"
    assert meta["pixel_format"] == "yuv420p"
    assert meta["hdr"] is None
    assert meta["audio_profile"] == "LC"
    assert (meta["audio_channels"], meta["audio_sample_rate"]) == (1, 48000)
    assert meta["creation_time"] == "2017-01-05T18:32:43.000000Z"
    assert meta["bit_rate"] > meta["video_bit_rate"] > 0


@needs_ffmpeg
def test_video_metadata_says_hdr(tmp_path):
    import subprocess

    clip = tmp_path / "hlg.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=10", "-t", "1", "-c:v", "libx265",
                    "-x265-params", "log-level=error", "-pix_fmt", "yuv420p10le",
                    "-color_trc", "arib-std-b67", "-color_primaries", "bt2020",
                    "-colorspace", "bt2020nc", str(clip)], check=True, timeout=60)
    meta = metadata.video_metadata(clip)
    assert (meta["hdr"], meta["pixel_format"]) == ("HLG", "yuv420p10le")


@needs_ffmpeg
def test_video_metadata_of_a_rotated_clip(tmp_path):
    import subprocess

    rotated = tmp_path / "portrait.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(VIDEOS / "example.mp4"),
                    "-c", "copy", "-metadata:s:v", "rotate=90", str(rotated)], check=True,
                   timeout=60)

    meta = metadata.video_metadata(rotated)

    assert meta["rotation"] in (90, 270)
    assert (meta["width"], meta["height"]) == (480, 640)  # as displayed


@needs_ffmpeg
@pytest.mark.parametrize("path", sorted(VIDEOS.iterdir()), ids=lambda p: p.name)
def test_every_corpus_video_gives_json(path):
    meta = metadata.video_metadata(path)

    assert meta["width"] > 0 and meta["height"] > 0
    assert meta["video_codec"] in ("h264", "vp8", "vp9")
    assert meta["audio_profile"] != "unknown"  # ffprobe's word for "no profile" is dropped
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta


@needs_ffmpeg
def test_video_metadata_without_a_creation_time_or_duration():
    meta = metadata.video_metadata(VIDEOS / "no_duration.webm")

    assert meta["duration"] is None and meta["bit_rate"] is None
    assert meta["creation_time"] is None
    assert (meta["video_codec"], meta["audio_codec"]) == ("vp9", "opus")


@needs_ffmpeg
def test_video_metadata_of_a_playlist_is_refused(tmp_path):
    playlist = tmp_path / "clip.mp4"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile:///etc/passwd\n"
                        "#EXT-X-ENDLIST\n")

    with pytest.raises(MediaError, match="playlists and scripts"):
        metadata.video_metadata(playlist)


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
