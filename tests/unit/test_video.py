"""Video with real ffmpeg on small files: probe, target size, transcode, poster, refusals."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from media import video
from media.errors import MediaError
from tests.conftest import CORPUS

VIDEOS = CORPUS / "video"
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg is not installed (make install provides it)")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Tiny generated clips: a plain landscape one, and the same stored sideways with a
    rotation of 90 degrees (how phones record portrait video)."""
    folder = tmp_path_factory.mktemp("clips")
    clips = {name: folder / f"{name}.mp4" for name in ("plain", "rotated", "big", "big_rotated")}
    clips["with_pcm"] = folder / "with_pcm.mov"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "1", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-c:a", "pcm_s16le", str(clips["with_pcm"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(clips["plain"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=1600x900:rate=5", "-t", "1", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clips["big"]))
    # The rotation goes into the display matrix only when remuxing (ffmpeg 5 and later).
    ffmpeg("-i", str(clips["plain"]), "-c", "copy", "-metadata:s:v", "rotate=90",
           str(clips["rotated"]))
    ffmpeg("-i", str(clips["big"]), "-c", "copy", "-metadata:s:v", "rotate=270",
           str(clips["big_rotated"]))
    return clips


def atom_offset(data: bytes, name: bytes) -> int:
    """Offset of a top-level MP4 box, walking the box headers (not a substring search)."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if data[offset + 4:offset + 8] == name:
            return offset
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        if size < 8:
            break
        offset += size
    raise AssertionError(f"no top-level {name!r} box")


# --- probe ---------------------------------------------------------------------------------


def test_probe_h264_aac():
    info = video.probe(VIDEOS / "fire2.mp4")

    assert (info.width, info.height) == (1280, 720)
    assert info.video["codec_name"] == "h264"
    assert info.audio is not None and info.audio["codec_name"] == "aac"
    assert info.duration == pytest.approx(2.38, abs=0.1)
    assert "mp4" in info.format_name.split(",")


def test_probe_without_audio():
    info = video.probe(VIDEOS / "example.mp4")

    assert info.audio is None
    assert (info.width, info.height) == (640, 480)
    assert info.duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(("name", "size"), [
    ("big_buck_bunny_0_30.webm", (1280, 720)),
    ("chaplin.mp4", (640, 360)),
    ("smpte-2997.mp4", (1920, 1080)),
    ("transparent.webm", (200, 200)),
])
def test_probe_corpus(name, size):
    info = video.probe(VIDEOS / name)

    assert (info.width, info.height) == size


def test_probe_without_a_duration():
    info = video.probe(VIDEOS / "no_duration.webm")

    assert info.duration is None
    assert (info.width, info.height) == (1280, 720)


def test_probe_rotation_swaps_width_and_height(clips):
    plain, rotated = video.probe(clips["plain"]), video.probe(clips["rotated"])

    assert (plain.width, plain.height, plain.rotation) == (320, 240, 0)
    assert rotated.rotation in (90, 270)
    assert (rotated.width, rotated.height) == (240, 320)


def test_a_text_file_named_mp4_is_refused(tmp_path):
    fake = tmp_path / "movie.mp4"
    fake.write_text("this is not a movie, just some words in a file\n" * 20)

    with pytest.raises(MediaError) as caught:
        video.probe(fake)

    assert "could not be read" in str(caught.value)


def test_a_playlist_is_refused_and_not_followed(tmp_path):
    """An HLS playlist must not make ffmpeg open other files or URLs."""
    secret = tmp_path / "secret.ts"
    shutil.copy(VIDEOS / "example.mp4", secret)  # would be a perfectly readable segment
    playlist = tmp_path / "upload.mp4"
    playlist.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
                        "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/passwd\n"
                        f"#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")

    with pytest.raises(MediaError):
        video.probe(playlist)
    # Even handed a probe that says "hls", ffmpeg is not let loose on the playlist.
    hls = video.Probe({}, "hls", 2.0, 640, 480, 0, {}, None)
    with pytest.raises(MediaError, match="not accepted"):
        video.poster(playlist, tmp_path / "poster.png", hls)
    with pytest.raises(MediaError, match="not accepted"):
        video.transcode(playlist, tmp_path / "out.mp4", hls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.ts", "upload.mp4"]


def test_a_concat_script_is_refused(tmp_path):
    script = tmp_path / "upload.mp4"
    script.write_text(f"ffconcat version 1.0\nfile '{VIDEOS / 'example.mp4'}'\n")

    with pytest.raises(MediaError, match="not accepted|could not be read"):
        video.probe(script)


def test_an_image_is_not_a_video(tmp_path):
    still = tmp_path / "still.mp4"
    shutil.copy(CORPUS / "images/camera/DSCN0010.jpg", still)

    with pytest.raises(MediaError) as caught:
        video.probe(still)

    assert not EXCEPTION_NAME.search(str(caught.value))


# --- target size ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [
    ((1920, 1080), (1280, 720)),
    ((1080, 1920), (720, 1280)),
    ((3840, 2160), (1280, 720)),
    ((640, 360), (640, 360)),
    ((1280, 720), (1280, 720)),
    ((641, 361), (640, 360)),
    ((1001, 1001), (720, 720)),
    ((1440, 1080), (960, 720)),
    ((2560, 1080), (1280, 540)),
    ((3, 3), (2, 2)),
])
def test_target_size(size, expected):
    width, height = video.target_size(*size)

    assert (width, height) == expected
    assert width % 2 == 0 and height % 2 == 0


# --- transcode and poster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_mp4(tmp_path_factory):
    """example.mp4 (2 s, no audio) transcoded once, with the progress values seen."""
    out = tmp_path_factory.mktemp("transcode") / "mp4_720p.mp4"
    seen: list[float] = []
    video.transcode(VIDEOS / "example.mp4", out, video.probe(VIDEOS / "example.mp4"),
                    seen.append)
    return out, seen


def test_transcode_h264_without_audio(example_mp4):
    out, _ = example_mp4
    info = video.probe(out)

    assert info.video["codec_name"] == "h264"
    assert info.video["pix_fmt"] == "yuv420p"
    assert info.audio is None
    assert (info.width, info.height) == (640, 480)  # never upscaled
    assert info.duration == pytest.approx(2.0, abs=0.15)


def test_transcode_is_faststart(example_mp4):
    data = example_mp4[0].read_bytes()

    assert atom_offset(data, b"moov") < atom_offset(data, b"mdat")


def test_transcode_reports_rising_progress(example_mp4):
    _, seen = example_mp4

    assert seen, "no progress reported"
    assert all(0.0 <= p <= 1.0 for p in seen)
    assert seen == sorted(seen)
    assert seen[-1] >= 0.9


def test_transcode_converts_audio_to_aac(clips, tmp_path):
    source = clips["with_pcm"]  # a MOV with uncompressed PCM audio
    assert video.probe(source).audio["codec_name"] == "pcm_s16le"
    out = tmp_path / "out.mp4"

    video.transcode(source, out, video.probe(source))
    info = video.probe(out)

    assert info.audio is not None and info.audio["codec_name"] == "aac"
    assert info.audio["channels"] == 2
    assert info.video["codec_name"] == "h264"
    assert (info.width, info.height) == (320, 240)


def test_transcode_portrait_clip_stays_portrait(clips, tmp_path):
    source = clips["big_rotated"]  # stored 1600x900, shown 900x1600
    info = video.probe(source)
    assert (info.width, info.height) == (900, 1600)

    out = tmp_path / "out.mp4"
    video.transcode(source, out, info)
    result = video.probe(out)

    assert (result.width, result.height) == (720, 1280)
    assert result.rotation == 0  # upright pixels, no rotation left for players to apply


@pytest.mark.parametrize(("ext", "codec"), [("mkv", "libx264"), ("avi", "mpeg4"),
                                             ("ts", "libx264"), ("flv", "flv"),
                                             ("mpg", "mpeg2video"), ("mov", "libx264")])
def test_transcode_from_every_accepted_container(tmp_path, ext, codec):
    source = tmp_path / f"clip.{ext}"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "0.4", "-c:v", codec,
           "-pix_fmt", "yuv420p", str(source))
    out = tmp_path / "out.mp4"

    video.transcode(source, out, video.probe(source))
    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    assert video.probe(out).video["codec_name"] == "h264"
    assert poster.stat().st_size > 0


def test_transcode_of_a_webm_with_alpha(tmp_path):
    source = VIDEOS / "transparent.webm"
    out = tmp_path / "out.mp4"

    video.transcode(source, out, video.probe(source))

    info = video.probe(out)
    assert (info.video["codec_name"], info.width, info.height) == ("h264", 200, 200)
    assert info.audio["codec_name"] == "aac"


def test_transcode_overwrites(clips, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"stale bytes from an earlier run")

    video.transcode(clips["plain"], out, video.probe(clips["plain"]))

    assert video.probe(out).video["codec_name"] == "h264"


def test_transcode_failure_is_a_media_error_with_ffmpeg_tail(tmp_path):
    source = tmp_path / "cut.mp4"
    source.write_bytes((VIDEOS / "example.mp4").read_bytes()[:20_000])  # moov is at the end
    info = video.Probe({}, "mov,mp4", 2.0, 640, 480, 0, {"codec_name": "h264"}, None)

    with pytest.raises(MediaError) as caught:
        video.transcode(source, tmp_path / "out.mp4", info)

    assert "ffmpeg could not convert the video" in str(caught.value)
    assert not EXCEPTION_NAME.search(str(caught.value))


def test_poster_is_a_png_at_display_size(tmp_path):
    source = VIDEOS / "example.mp4"
    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    assert poster.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(poster) as image:
        assert image.size == (640, 480)
        assert image.convert("L").getextrema() != (0, 0)  # a picture, not a black frame


def test_poster_of_a_rotated_clip_is_upright(clips, tmp_path):
    source = clips["rotated"]
    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    with Image.open(poster) as image:
        assert image.size == (240, 320)


def test_a_silent_hung_ffmpeg_is_killed_at_its_timeout(tmp_path):
    # ffmpeg reading a FIFO nobody writes to hangs without printing progress.
    import os
    import time

    fifo = tmp_path / "stuck.ts"
    os.mkfifo(fifo)
    argv = ["ffmpeg", "-nostdin", "-f", "mpegts", "-i", f"file:{fifo}", "-f", "null", "-"]
    started = time.monotonic()
    with pytest.raises(MediaError, match="took too long"):
        video._run_with_progress(argv, None, None, timeout=1.0)
    assert time.monotonic() - started < 10
    assert subprocess.run(["pgrep", "-f", str(fifo)], capture_output=True).stdout == b""
