"""Video with real ffmpeg on small files: probe, renditions, transcode, HLS, poster, refusals,
and ffmpeg killed whatever happens to the process that runs it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from media import video
from media.errors import Cancelled, MediaError
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
    # 1080p with audio, so that every default rendition is made.
    clips["hd"] = folder / "hd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=10", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "1", "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(clips["hd"]))
    # Variable frame rate: 25 fps with frames dropped unevenly, timestamps kept.
    clips["vfr"] = folder / "vfr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2", "-vf",
           "select='lt(mod(n,10),3)+lt(n,5)'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(clips["vfr"]))
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


def one_720p(src: Path, dst: Path, info: video.Probe, on_progress=None) -> Path:
    """Transcode just `mp4_720p` (the contract's rendition) to `dst`."""
    video.transcode(src, [video.Rendition("mp4_720p", *video.target_size(info.width,
                                                                         info.height), dst)],
                    info, on_progress)
    return dst


def ffprobe_json(path: Path) -> dict:
    """An independent look at an output: ffprobe run directly, not through media.video."""
    done = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of",
                           "json", str(path)], capture_output=True, check=True, timeout=30)
    return json.loads(done.stdout)


def assert_plays(path: Path, size: tuple[int, int], duration: float | None, audio: bool) -> None:
    """h264 (+ aac when the source has audio), moov before mdat, the size, the duration."""
    raw = ffprobe_json(path)
    codecs = {s["codec_type"]: s["codec_name"] for s in raw["streams"]}
    assert codecs == ({"video": "h264", "audio": "aac"} if audio else {"video": "h264"})
    picture = next(s for s in raw["streams"] if s["codec_type"] == "video")
    assert (picture["width"], picture["height"]) == size
    assert picture["pix_fmt"] == "yuv420p"
    assert not any("rotation" in d for d in picture.get("side_data_list", []))
    data = path.read_bytes()
    assert atom_offset(data, b"moov") < atom_offset(data, b"mdat")
    if duration is not None:
        assert abs(float(raw["format"]["duration"]) - duration) <= 0.1


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
    ("echo-hereweare.webm", (480, 270)),
    ("video_with_failing_audio.mp4", (640, 360)),
])
def test_probe_corpus(name, size):
    info = video.probe(VIDEOS / name)

    assert (info.width, info.height) == size


def test_probe_without_a_duration():
    info = video.probe(VIDEOS / "no_duration.webm")

    assert info.duration is None
    assert (info.width, info.height) == (1280, 720)


def test_of_two_video_streams_the_larger_is_the_video(tmp_path):
    """Neither marked default (as some cameras write a preview stream first): the larger,
    as ffmpeg itself chooses, not the first."""
    source = tmp_path / "two.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-f", "lavfi", "-i",
           "testsrc2=size=320x240:rate=10", "-t", "1", "-map", "0", "-map", "1", "-c:v",
           "libx264", "-pix_fmt", "yuv420p", "-disposition:v:0", "0", str(source))
    info = video.probe(source)
    assert (info.width, info.height, info.video["index"]) == (320, 240, 1)
    out = one_720p(source, tmp_path / "out.mp4", info)
    assert [(s["width"], s["height"]) for s in ffprobe_json(out)["streams"]] == [(320, 240)]
    with Image.open(video.poster(source, tmp_path / "poster.png", info)) as image:
        assert image.size == (320, 240)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_cover_picture_not_flagged_as_one_is_not_the_video(tmp_path, container):
    """A 1000x1000 JPEG muxed in beside a 320x240 clip without the attached_pic flag."""
    cover, clip = tmp_path / "cover.jpg", tmp_path / f"clip.{container}"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1000x1000", "-frames:v", "1", str(cover))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-i", str(cover), "-t", "1",
           "-map", "0", "-map", "1", "-c:v:0", "libx264", "-pix_fmt:v:0", "yuv420p",
           "-c:v:1", "copy", str(clip))
    info = video.probe(clip)
    assert (info.video["codec_name"], info.width, info.height) == ("h264", 320, 240)


def test_a_one_frame_stream_larger_than_the_video_is_not_the_video(tmp_path):
    """MKV gives no frame count: a 3000x2000 still muxed in, neither stream marked default,
    is told from the video by its length (0.04 s in a 3 s file)."""
    still, clip = tmp_path / "still.jpg", tmp_path / "clip.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=3000x2000", "-frames:v", "1", str(still))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=640x360:rate=10", "-i", str(still), "-t", "3",
           "-map", "0", "-map", "1", "-c:v:0", "libx264", "-pix_fmt:v:0", "yuv420p",
           "-c:v:1", "copy", "-disposition:v:0", "0", "-disposition:v:1", "0", str(clip))
    info = video.probe(clip)
    assert (info.video["codec_name"], info.width, info.height) == ("h264", 640, 360)


def test_a_stream_of_unknown_size_is_not_chosen_over_a_picture():
    streams = [{"index": 0, "codec_type": "video", "codec_name": "h264",
                "disposition": {"default": 1}},
               {"index": 1, "codec_type": "video", "codec_name": "h264", "width": 1920,
                "height": 1080, "disposition": {"default": 0}}]
    info = video._parse_probe({"format": {"format_name": "matroska,webm"}, "streams": streams})
    assert info.video["index"] == 1


def test_dolby_vision_without_a_standard_base_layer_is_refused_with_a_reason():
    """Profile 5 decodes as green and purple without Dolby's reshaping: refused; profile 8.4
    (iPhones) has an HLG base layer and is processed as HLG."""
    def probe_with(profile: int, compatibility: int) -> dict:
        stream = {"index": 0, "codec_type": "video", "codec_name": "hevc", "width": 1920,
                  "height": 1080, "side_data_list": [{
                      "side_data_type": "DOVI configuration record", "dv_profile": profile,
                      "bl_present_flag": 1, "dv_bl_signal_compatibility_id": compatibility}]}
        return {"format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2"}, "streams": [stream]}

    with pytest.raises(MediaError, match=r"Dolby Vision \(profile 5\).*Export it as HDR10"):
        video._parse_probe(probe_with(5, 0))
    assert video._parse_probe(probe_with(8, 4)).width == 1920


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


def passwd_playlist(folder: Path, name: str) -> tuple[Path, Path]:
    """An HLS playlist under a video's name, listing /etc/passwd and a readable segment."""
    secret = folder / "secret.ts"
    shutil.copy(VIDEOS / "example.mp4", secret)  # would be a perfectly readable segment
    playlist = folder / name
    playlist.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n"
                        "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/passwd\n"
                        f"#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")
    return playlist, secret


@pytest.mark.parametrize("name", ["upload.mp4", "upload.avi", "upload.ts", "upload"])
def test_a_playlist_is_refused_and_not_followed(tmp_path, name):
    """An HLS playlist must not make ffmpeg open other files or URLs: the hls demuxer is
    not even allowed to look at it."""
    playlist, secret = passwd_playlist(tmp_path, name)
    os.utime(secret, (1_000_000_000, 1_000_000_000))

    with pytest.raises(MediaError) as caught:
        video.probe(playlist)

    assert "playlists and scripts" in str(caught.value)
    assert "root:" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert secret.stat().st_atime == 1_000_000_000  # never opened for reading
    # Even handed a probe that says "hls", ffmpeg is not let loose on the playlist.
    hls = video.Probe({}, "hls", 2.0, 640, 480, 0, {}, None)
    with pytest.raises(MediaError, match="not accepted"):
        video.poster(playlist, tmp_path / "poster.png", hls)
    with pytest.raises(MediaError, match="not accepted"):
        one_720p(playlist, tmp_path / "out.mp4", hls)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["secret.ts", name])


def test_a_playlist_mislabelled_as_mp4_is_not_opened_by_the_transcode(tmp_path):
    """A probe that wrongly says "mp4" (say, for a file changed after probing): the forced
    demuxer and the demuxer allow-list still keep ffmpeg off the playlist."""
    playlist, _ = passwd_playlist(tmp_path, "upload.mp4")
    lying = video.Probe({}, "mov,mp4", 2.0, 640, 480, 0, {"codec_name": "h264"}, None)

    with pytest.raises(MediaError) as caught:
        one_720p(playlist, tmp_path / "out.mp4", lying)

    assert "root:" not in str(caught.value)
    out = tmp_path / "out.mp4"
    assert not out.exists() or b"root:" not in out.read_bytes()


def test_a_concat_script_naming_etc_passwd_is_refused(tmp_path):
    script = tmp_path / "upload.mp4"
    script.write_text("ffconcat version 1.0\nfile 'file:///etc/passwd'\n"
                      f"file '{VIDEOS / 'example.mp4'}'\n")

    with pytest.raises(MediaError) as caught:
        video.probe(script)

    assert "playlists and scripts" in str(caught.value) or "not accepted" in str(caught.value)
    assert "root:" not in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "tables"])
def test_a_corrupt_moov_is_refused_readably(tmp_path, damage):
    data = bytearray((VIDEOS / "example.mp4").read_bytes())
    moov = atom_offset(bytes(data), b"moov")  # at the end of this file
    if damage == "truncated":
        data = data[:moov + 400]
    elif damage == "zeroed":
        data[moov + 8:] = bytes(len(data) - moov - 8)
    else:  # the sample size and chunk offset tables overwritten
        for table in (b"stco", b"stsz"):
            at = data.index(table, moov)
            size = int.from_bytes(data[at - 4:at], "big")
            data[at + 12:at - 4 + size] = b"\xff" * (size - 16)
    source = tmp_path / "broken.mp4"
    source.write_bytes(bytes(data))

    with pytest.raises(MediaError) as caught:
        video.probe(source)

    message = str(caught.value)
    assert message.startswith("The ") and message.endswith(".")
    assert not EXCEPTION_NAME.search(message)
    assert str(tmp_path) not in message and "0x" not in message


def test_a_disallowed_codec_is_refused(tmp_path):
    source = tmp_path / "gif.mkv"  # an accepted container around a codec we do not take
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5", "-t", "0.4", "-c:v", "gif",
           str(source))

    with pytest.raises(MediaError, match="video codec 'gif' is not accepted"):
        video.probe(source)


def test_an_image_is_not_a_video(tmp_path):
    still = tmp_path / "still.mp4"
    shutil.copy(CORPUS / "images/camera/DSCN0010.jpg", still)

    with pytest.raises(MediaError) as caught:
        video.probe(still)

    assert not EXCEPTION_NAME.search(str(caught.value))


# --- sizes and the rendition plan ------------------------------------------------------------


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


def probe_of(width: int, height: int) -> video.Probe:
    return video.Probe({}, "mov,mp4", 1.0, width, height, 0, {"codec_name": "h264"}, None)


def sizes(width: int, height: int, heights=video.DEFAULT_HEIGHTS) -> dict[str, tuple]:
    return {r.name: (r.width, r.height)
            for r in video.plan(probe_of(width, height), Path("/out"), heights)}


def test_plan_full_hd_gets_the_whole_ladder():
    assert sizes(1920, 1080) == {"mp4_1080p": (1920, 1080), "mp4_720p": (1280, 720),
                                 "mp4_480p": (854, 480)}
    assert [r.path.name for r in video.plan(probe_of(1920, 1080), Path("/out"))] == [
        "mp4_1080p.mp4", "mp4_720p.mp4", "mp4_480p.mp4"]


def test_plan_portrait_uses_portrait_boxes():
    assert sizes(1080, 1920) == {"mp4_1080p": (1080, 1920), "mp4_720p": (720, 1280),
                                 "mp4_480p": (480, 854)}


def test_plan_never_upscales_and_always_has_mp4_720p():
    # 640x360: no box is filled; mp4_720p is the clip at its own size, nothing else.
    assert sizes(640, 360) == {"mp4_720p": (640, 360)}
    assert sizes(1280, 720) == {"mp4_720p": (1280, 720), "mp4_480p": (854, 480)}
    # 640x480 fills the 480 box's height, but that would only repeat mp4_720p.
    assert sizes(640, 480) == {"mp4_720p": (640, 480)}
    assert sizes(3840, 2160, (1080,)) == {"mp4_1080p": (1920, 1080), "mp4_720p": (1280, 720)}


def test_plan_4_3_and_ultrawide_keep_their_aspect():
    assert sizes(1440, 1080) == {"mp4_1080p": (1440, 1080), "mp4_720p": (960, 720),
                                 "mp4_480p": (640, 480)}
    assert sizes(2560, 1080)["mp4_480p"] == (854, 360)


def test_time_budget_is_proportional_and_capped():
    assert video.time_budget(10.0, 10_000) < video.time_budget(100.0, 10_000)
    assert video.time_budget(100_000.0, 3600) == 3600
    assert video.time_budget(None, 3600) == 3600


# --- transcode and poster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_mp4(tmp_path_factory):
    """example.mp4 (2 s, no audio) transcoded once, with the progress values seen."""
    out = tmp_path_factory.mktemp("transcode") / "mp4_720p.mp4"
    seen: list[float] = []
    one_720p(VIDEOS / "example.mp4", out, video.probe(VIDEOS / "example.mp4"), seen.append)
    return out, seen


def test_transcode_h264_without_audio(example_mp4):
    out, _ = example_mp4

    assert_plays(out, (640, 480), 2.0, audio=False)  # never upscaled


def test_transcode_reports_rising_progress(example_mp4):
    _, seen = example_mp4

    assert seen, "no progress reported"
    assert all(0.0 <= p <= 1.0 for p in seen)
    assert seen == sorted(seen)
    assert seen[-1] >= 0.9


def test_the_transcode_runs_at_the_lowest_cpu_priority(clips, tmp_path):
    """A video backlog must not slow thumbnails on a shared machine: ffmpeg runs at nice 19
    and, on Linux, under SCHED_IDLE. Read off the live ffmpeg process, mid-transcode."""
    source = clips["hd"]
    info = video.probe(source)
    seen: dict[int, tuple[int, int]] = {}

    def look(_progress: float) -> None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                name, rest = stat.read_text().split(" (", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue
            fields, pid = rest.split(), int(stat.parent.name)
            if name == "ffmpeg" and int(fields[1]) == os.getpid() and pid not in seen:
                with contextlib.suppress(OSError):
                    seen[pid] = (int(fields[16]), os.sched_getscheduler(pid))

    video.transcode(source, video.plan(info, tmp_path), info, look, threads=1)

    assert seen, "ffmpeg was never seen running"
    for nice, policy in seen.values():
        assert nice == 19
        if sys.platform == "linux":
            assert policy == os.SCHED_IDLE


def test_the_whole_ladder_in_one_run(clips, tmp_path):
    source = clips["hd"]
    info = video.probe(source)
    renditions = video.plan(info, tmp_path)
    seen: list[float] = []

    video.transcode(source, renditions, info, seen.append, threads=1)

    assert [r.name for r in renditions] == ["mp4_1080p", "mp4_720p", "mp4_480p"]
    for rendition in renditions:
        assert_plays(rendition.path, (rendition.width, rendition.height), info.duration,
                     audio=True)
    assert seen and seen == sorted(seen) and seen[-1] >= 0.9


@pytest.mark.parametrize(("name", "size", "audio"), [
    ("fire2.mp4", (1280, 720), True),  # a phone clip: rotation 180, variable frame rate
    ("chaplin.mp4", (640, 360), True),  # 640x360: mp4_720p at its own size, no upscale
    ("transparent.webm", (200, 200), True),  # VP9 with alpha, Vorbis
    ("example.mp4", (640, 480), False),
    ("video_with_failing_audio.mp4", (640, 360), True),
])
def test_corpus_clips_convert(tmp_path, name, size, audio):
    source = VIDEOS / name
    info = video.probe(source)
    renditions = video.plan(info, tmp_path)

    video.transcode(source, renditions, info)

    assert [(r.width, r.height) for r in renditions if r.name == "mp4_720p"] == [size]
    for rendition in renditions:
        assert_plays(rendition.path, (rendition.width, rendition.height), info.duration, audio)


def test_transcode_of_a_clip_without_a_duration(tmp_path):
    source = VIDEOS / "no_duration.webm"
    info = video.probe(source)
    out = tmp_path / "mp4_720p.mp4"

    one_720p(source, out, info)

    assert_plays(out, (1280, 720), None, audio=True)


def test_variable_frame_rate_keeps_timing_without_duplicating_frames(clips, tmp_path):
    source = clips["vfr"]
    info = video.probe(source)
    out = one_720p(source, tmp_path / "out.mp4", info)

    assert_plays(out, (320, 240), info.duration, audio=False)
    count = lambda path: int(ffprobe_json_frames(path))  # noqa: E731
    assert count(out) == count(source)


def test_slow_motion_is_capped_at_60_fps(tmp_path):
    source = tmp_path / "slowmo.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=240", "-t", "0.5", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(source))
    info = video.probe(source)

    out = one_720p(source, tmp_path / "out.mp4", info)

    assert_plays(out, (160, 120), info.duration, audio=False)
    assert int(ffprobe_json_frames(out)) == pytest.approx(30, abs=1)  # 0.5 s at 60 fps


def ffprobe_json_frames(path: Path) -> str:
    done = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                           "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
                           str(path)], capture_output=True, check=True, timeout=30, text=True)
    return done.stdout.strip()


def test_transcode_converts_audio_to_aac(clips, tmp_path):
    source = clips["with_pcm"]  # a MOV with uncompressed PCM audio
    assert video.probe(source).audio["codec_name"] == "pcm_s16le"

    out = one_720p(source, tmp_path / "out.mp4", video.probe(source))

    assert_plays(out, (320, 240), video.probe(source).duration, audio=True)
    assert video.probe(out).audio["channels"] == 2


def test_transcode_portrait_clip_stays_portrait(clips, tmp_path):
    source = clips["big_rotated"]  # stored 1600x900, shown 900x1600
    info = video.probe(source)
    assert (info.width, info.height) == (900, 1600)
    renditions = video.plan(info, tmp_path)

    video.transcode(source, renditions, info)

    # 900x1600 fills no 1080x1920 box: no mp4_1080p, which would be the source size again
    assert {r.name: (r.width, r.height) for r in renditions} == {
        "mp4_720p": (720, 1280), "mp4_480p": (480, 854)}
    for rendition in renditions:  # upright pixels, no rotation left for players to apply
        assert_plays(rendition.path, (rendition.width, rendition.height), info.duration, False)


@pytest.mark.parametrize(("ext", "codec"), [("mkv", "libx264"), ("avi", "mpeg4"),
                                             ("ts", "libx264"), ("flv", "flv"),
                                             ("mpg", "mpeg2video"), ("mov", "libx264")])
def test_transcode_from_every_accepted_container(tmp_path, ext, codec):
    source = tmp_path / f"clip.{ext}"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "0.4", "-c:v", codec,
           "-pix_fmt", "yuv420p", str(source))

    out = one_720p(source, tmp_path / "out.mp4", video.probe(source))
    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    assert video.probe(out).video["codec_name"] == "h264"
    assert poster.stat().st_size > 0


def test_transcode_overwrites(clips, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"stale bytes from an earlier run")

    one_720p(clips["plain"], out, video.probe(clips["plain"]))

    assert video.probe(out).video["codec_name"] == "h264"


def test_transcode_failure_is_a_sentence_and_ffmpegs_words_go_to_the_log(tmp_path, caplog):
    source = tmp_path / "cut.mp4"
    source.write_bytes((VIDEOS / "example.mp4").read_bytes()[:20_000])  # moov is at the end
    info = video.Probe({}, "mov,mp4", 2.0, 640, 480, 0, {"codec_name": "h264"}, None)

    with caplog.at_level(logging.INFO, logger="media.video"), \
            pytest.raises(MediaError) as caught:
        one_720p(source, tmp_path / "out.mp4", info)

    message = str(caught.value)
    assert message.startswith("The video could not be converted: its data is damaged")
    assert "moov atom not found" in caplog.text  # ffmpeg's own words, for whoever debugs
    assert not EXCEPTION_NAME.search(message) and str(tmp_path) not in message
    assert str(tmp_path) not in caplog.text


def test_hls_ladder_from_the_renditions(clips, tmp_path):
    source = clips["hd"]
    info = video.probe(source)
    renditions = video.plan(info, tmp_path, (720, 480))
    video.transcode(source, renditions, info, keyframe_every=0.5)

    files = video.package_hls(renditions, tmp_path, info.duration, segment=0.5)

    assert [f.name for f in files] == ["hls.m3u8", "hls_720p.m3u8", "hls_720p.mp4",
                                       "hls_480p.m3u8", "hls_480p.mp4"]
    master = files[0].read_text().splitlines()
    assert master[0] == "#EXTM3U"
    assert [line for line in master if not line.startswith("#")] == ["hls_720p.m3u8",
                                                                       "hls_480p.m3u8"]
    assert "RESOLUTION=1280x720" in files[0].read_text()
    variant = files[1].read_text()
    assert "#EXT-X-MAP:URI=\"hls_720p.mp4\"" in variant and "#EXT-X-ENDLIST" in variant
    assert variant.count("#EXTINF") >= 2  # segmented at the forced keyframes
    assert str(tmp_path) not in variant
    # The variant plays back through the HLS demuxer as h264 + aac of the right length.
    raw = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of",
                          "json", str(files[1])], capture_output=True, check=True, timeout=30)
    played = json.loads(raw.stdout)
    assert {s["codec_name"] for s in played["streams"]} == {"h264", "aac"}
    assert abs(float(played["format"]["duration"]) - info.duration) <= 0.1


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


def test_poster_skips_a_black_opening(tmp_path):
    """Black for the first 40% of the clip, then a picture: the poster is the picture."""
    source = tmp_path / "fade.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2", "-vf",
           "drawbox=c=black:t=fill:enable='lt(t,0.8)'", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(source))

    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    with Image.open(poster) as image:
        assert image.convert("L").getextrema()[1] > 100


def test_poster_of_a_clip_with_one_keyframe_decodes_up_to_its_moment(tmp_path):
    """No keyframe after 10% in: the poster falls back to decoding every frame."""
    source = tmp_path / "one_gop.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2", "-vf",
           "drawbox=c=black:t=fill:enable='lt(t,0.8)'", "-c:v", "libx264", "-g", "1000",
           "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(source))
    stale = tmp_path / "poster.png"
    stale.write_bytes(b"an earlier run's poster")

    poster = video.poster(source, stale, video.probe(source))

    with Image.open(poster) as image:
        assert image.size == (160, 120)
        assert image.convert("L").getextrema()[1] > 100


def test_poster_of_an_mpegts_segment_with_one_keyframe(tmp_path):
    """MPEG-TS has no index: a seek past its only keyframe (an HLS segment has one) finds
    nothing, so the poster is read from the start."""
    source = tmp_path / "segment.ts"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "4", "-c:v", "libx264",
           "-g", "1000", "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-f", "mpegts",
           str(source))

    poster = video.poster(source, tmp_path / "poster.png", video.probe(source))

    with Image.open(poster) as image:
        assert image.size == (160, 120)


def test_non_square_pixels_are_shown_and_made_at_their_display_size(tmp_path):
    """DV-style 720x480 with 32:27 pixels is 16:9 on screen: metadata, poster and MP4 say so."""
    source = tmp_path / "anamorphic.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=720x480:rate=10", "-t", "1", "-vf",
           "setsar=32/27", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(source))
    info = video.probe(source)
    assert (info.width, info.height) == (853, 480)

    with Image.open(video.poster(source, tmp_path / "poster.png", info)) as image:
        assert image.size == (853, 480)  # a PNG: as wide as shown, odd or not
    out = one_720p(source, tmp_path / "out.mp4", info)
    stream = ffprobe_json(out)["streams"][0]
    assert (stream["width"], stream["height"]) == (852, 480)  # even, never wider than shown
    assert stream.get("sample_aspect_ratio", "1:1") == "1:1"


# sRGB colours well inside SDR, which tone-mapping keeps: a red, and a saturated green (the
# kind a coarse LUT gets wrong by 20 levels).
SDR_PATCHES = {(80, 90): (200, 50, 50), (240, 90): (64, 192, 64)}


def near(colour: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return all(abs(a - b) <= 14 for a, b in zip(colour, expected, strict=True))


def rgb_at(path: Path, x: int, y: int) -> tuple[int, ...]:
    """The sRGB colour of the first frame of `path` (a video or a PNG) at (x, y), decoded
    by the colour tags of the file."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-frames:v",
                          "1", "-vf", "zscale=t=iec61966-2-1:p=bt709:r=full,format=rgb24",
                          "-f", "rawvideo", "-"], capture_output=True, check=True, timeout=60)
    width = int(ffprobe_json(path)["streams"][0]["width"])
    offset = (y * width + x) * 3
    return tuple(out.stdout[offset:offset + 3])


@pytest.mark.parametrize(("transfer", "tagged"), [
    ("arib-std-b67", True), ("smpte2084", True),  # HLG (iPhones), PQ
    ("arib-std-b67", False),  # primaries and matrix left out, as some encoders do
])
def test_hdr_video_is_tone_mapped_to_sdr_in_poster_and_renditions(tmp_path, transfer, tagged):
    """10-bit BT.2020 HLG or PQ shown as 8-bit SDR without tone-mapping is grey and flat
    ((112, 55, 44) for this red): the poster, and so the thumbnails, and the MP4s keep
    the colours (within the tone curve's slight darkening), and the MP4s are tagged
    BT.709, what their pixels now are."""
    source = tmp_path / "hdr.mp4"
    tags = ["-color_primaries", "bt2020", "-colorspace", "bt2020nc"] if tagged else []
    ffmpeg("-f", "lavfi", "-i", "color=c=0xC83232:s=160x180:r=10:d=1[a];"
           "color=c=0x40C040:s=160x180:r=10:d=1[b];[a][b]hstack,format=gbrp", "-vf",
           f"zscale=tin=iec61966-2-1:pin=bt709:rin=full:t={transfer}:npl=100"
           ":p=bt2020:m=bt2020nc:r=tv,format=yuv420p10le", "-c:v", "libx265", "-x265-params",
           "log-level=error", "-color_trc", transfer, *tags, str(source))
    info = video.probe(source)
    assert video.is_hdr(info)

    poster = video.poster(source, tmp_path / "poster.png", info)
    out = one_720p(source, tmp_path / "out.mp4", info)

    with Image.open(poster) as image:
        assert (image.mode, image.size) == ("RGB", (320, 180))
        posted = {xy: image.getpixel(xy) for xy in SDR_PATCHES}
    # fitted to a box that gives an odd side, which zscale refuses for 4:2:0 chroma
    with Image.open(video.poster(source, tmp_path / "odd.png", info, box_side=301)) as image:
        assert image.size == (301, 169)
        odd = {(x, y): image.getpixel((x * 301 // 320, y * 301 // 320))
               for x, y in SDR_PATCHES}
    assert all(near(odd[xy], posted[xy]) for xy in SDR_PATCHES), (odd, posted)
    made = {xy: rgb_at(out, *xy) for xy in SDR_PATCHES}
    for xy, expected in SDR_PATCHES.items():
        assert near(posted[xy], expected) and near(made[xy], expected), (posted, made)
        assert near(posted[xy], made[xy])  # the poster's exact filters and the MP4s' LUT agree
    stream = ffprobe_json(out)["streams"][0]
    assert (stream["pix_fmt"], stream["color_transfer"], stream["color_primaries"]) == (
        "yuv420p", "bt709", "bt709")


@pytest.mark.parametrize(("coding", "tags"), [
    (":r=pc:m=bt2020nc,format=yuv420p10le", ["-colorspace", "bt2020nc", "-color_range", "pc"]),
    (",format=gbrp10le", ["-colorspace", "rgb"]),  # R'G'B' HEVC, as some cameras write
], ids=["full-range", "rgb"])
def test_hdr_poster_keeps_colours_whatever_the_range_and_coding(tmp_path, coding, tags):
    """swscale, shrinking to the poster's size, converted full range to limited and R'G'B'
    to YUV by a matrix of its own before setparams said what the frames were: red came
    out (182, 29, 16), washed out."""
    source = tmp_path / "hdr.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=0xC83232:s=160x180:r=10:d=1[a];"
           "color=c=0x40C040:s=160x180:r=10:d=1[b];[a][b]hstack,format=gbrp", "-vf",
           "zscale=tin=iec61966-2-1:pin=bt709:rin=full:t=smpte2084:npl=100:p=bt2020"
           + coding, "-c:v", "libx265", "-x265-params", "log-level=error", "-color_trc",
           "smpte2084", "-color_primaries", "bt2020", *tags, str(source))
    info = video.probe(source)
    assert video.is_hdr(info)

    for box, size in [(2048, (320, 180)), (301, (301, 169))]:
        with Image.open(video.poster(source, tmp_path / f"{box}.png", info,
                                     box_side=box)) as image:
            assert image.size == size
            posted = {(x, y): image.getpixel((x * size[0] // 320, y * size[0] // 320))
                      for x, y in SDR_PATCHES}
        assert all(near(posted[xy], rgb) for xy, rgb in SDR_PATCHES.items()), (box, posted)


def test_sdr_video_is_not_tone_mapped(clips):
    assert not video.is_hdr(video.probe(clips["plain"]))


@pytest.mark.parametrize(("container", "stream", "expected"), [
    ("4294967.295", "4.0", 4.0),  # a header claiming 49 days for 4 s
    ("0.001", "50.0", 50.0),  # a header claiming a millisecond
    ("12.5", "12.4", 12.5),
    (None, "3.0", 3.0),
    ("3.0", None, 3.0),
    (None, None, None),
])
def test_duration_is_not_taken_from_a_lying_header(container, stream, expected):
    assert video._duration({"duration": container}, {"duration": stream}) == expected


def test_audio_only_and_giant_frames_are_refused_with_reasons():
    audio = {"codec_type": "audio", "codec_name": "aac"}
    with pytest.raises(MediaError, match="only audio"):
        video._parse_probe({"format": {"format_name": "mov,mp4"}, "streams": [audio]})
    giant = {"codec_type": "video", "codec_name": "mjpeg", "width": 16000, "height": 16000}
    with pytest.raises(MediaError, match="16000x16000 pixels .256 MP., above the limit"):
        video._parse_probe({"format": {"format_name": "avi"}, "streams": [giant]})


# --- ffmpeg never outlives its job -----------------------------------------------------------


def stuck_argv(fifo: Path) -> list[str]:
    """ffmpeg reading a FIFO nobody writes to: it hangs without printing progress."""
    os.mkfifo(fifo)
    return ["ffmpeg", "-nostdin", "-f", "mpegts", "-i", f"file:{fifo}", "-f", "null", "-"]


def ffmpeg_alive(marker: Path) -> bool:
    return subprocess.run(["pgrep", "-f", str(marker)], capture_output=True).stdout != b""


def test_a_silent_hung_ffmpeg_is_killed_at_its_timeout(tmp_path):
    fifo = tmp_path / "stuck.ts"
    argv = stuck_argv(fifo)
    started = time.monotonic()

    with pytest.raises(MediaError, match="took too long"):
        video._run_with_progress(argv, None, None, timeout=1.0)

    assert time.monotonic() - started < 10
    assert not ffmpeg_alive(fifo)


def _clip(path: Path, seconds: int, size: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-t", str(seconds), "-c:v",
           "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    return path


def test_a_busy_ffmpeg_is_charged_and_killed_past_its_budget(tmp_path):
    """An ffmpeg that runs (at normal priority, so it gets its share even on a busy
    machine) is charged for its running seconds and stopped well before the ceiling."""
    marker = tmp_path / "busy-marker"
    argv = ["ffmpeg", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-c:v", "libx264", "-preset", "medium", "-f", "null", "-metadata",
            f"title={marker}", "-"]
    started = time.monotonic()

    with pytest.raises(MediaError, match="took too long"):
        video._run_with_progress(argv, None, None, timeout=1.0, ceiling=60)

    assert time.monotonic() - started < 30  # charged: the 60 s ceiling was not what ended it
    assert not ffmpeg_alive(marker)


def test_the_watchdog_charges_running_and_hung_seconds_not_starved_ones():
    charged = video._charged
    assert charged(ran=10.0, waited=0.5, elapsed=5.0, cpus=2) == 1.0  # has the machine
    # many threads queueing for the cores among themselves: it still has all of them
    assert charged(ran=10.0, waited=40.0, elapsed=5.0, cpus=2) == 1.0
    assert charged(ran=0.0, waited=0.0, elapsed=5.0, cpus=2) == 1.0  # hung: neither
    assert charged(ran=0.02, waited=9.0, elapsed=5.0, cpus=2) < 0.01  # starved
    assert charged(ran=2.5, waited=7.5, elapsed=5.0, cpus=2) == pytest.approx(0.25)  # a share


def test_a_transcode_starved_by_other_work_is_not_timed_out(tmp_path):
    """A transcode runs at idle priority and waits while thumbnails have the CPU; that wait
    is not counted against its budget, or a burst of photos would fail the videos queued
    with it. Busy loops on every core starve it for 4 s, twice its budget."""
    import threading

    src = _clip(tmp_path / "clip.mp4", 4, "640x360")
    info = video.probe(src)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in os.sched_getaffinity(0)]
    progress: list[float] = []
    stop = threading.Timer(4.0, lambda: [hog.kill() for hog in hogs])
    try:
        time.sleep(0.5)  # the hogs are running before ffmpeg starts
        stop.start()
        started = time.monotonic()
        video.transcode(src, video.plan(info, tmp_path, (720,)), info, threads=1,
                        timeout=2.0, ceiling=60, on_progress=progress.append)
        took = time.monotonic() - started
    finally:
        stop.cancel()
        for hog in hogs:
            hog.kill()
            hog.wait()

    assert took > 3  # it did wait for the hogs, past its 2 s budget
    assert video.probe(tmp_path / "mp4_720p.mp4").duration == pytest.approx(4, abs=0.1)
    assert progress  # it reported progress as it went


def test_a_transcode_stops_soon_after_it_is_cancelled(tmp_path):
    """Deleting the asset sets the event (tasks.pipeline.Heartbeat): ffmpeg is killed at its
    next progress report instead of running to the end."""
    import threading

    marker = tmp_path / "long-source.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "10", "-c:v",
           "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(marker))
    info = video.probe(marker)
    cancelled = threading.Event()
    threading.Timer(0.5, cancelled.set).start()
    started = time.monotonic()

    with pytest.raises(Cancelled):
        video.transcode(marker, video.plan(info, tmp_path, (720,)), info, threads=1,
                        cancelled=cancelled)

    assert time.monotonic() - started < 5  # 10 s of 720p at one thread takes longer
    assert not ffmpeg_alive(marker)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_ffmpeg_dies_with_the_worker_process(tmp_path, how):
    """A hard time limit or a cold shutdown kills the pool process without running any
    Python: the kernel must take ffmpeg down with it."""
    fifo = tmp_path / "stuck.ts"
    argv = stuck_argv(fifo)
    code = ("import sys; from media import video; "
            f"video._run_with_progress({argv!r}, None, None, timeout=None)")
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(video.__file__).parents[1])
    from tests.conftest import wait_for

    wait_for(lambda: ffmpeg_alive(fifo), timeout=20, what="ffmpeg to start")
    worker.send_signal(getattr(__import__("signal"), how))
    worker.wait(10)

    wait_for(lambda: not ffmpeg_alive(fifo), timeout=5, what="ffmpeg to die")


# --- settings and the pool's threads --------------------------------------------------------


def test_video_settings_parse_and_validate():
    from config.settings import ConfigError, Settings

    settings = Settings.from_env({"MEDIAMILL_VIDEO_RENDITIONS": "480,1080,1080",
                                  "MEDIAMILL_VIDEO_HLS": "1", "MEDIAMILL_FFMPEG_THREADS": "3"})
    assert settings.video_renditions == (1080, 480)  # 720 is added by the plan, always
    assert settings.video_hls is True and settings.ffmpeg_threads == 3
    assert Settings().video_renditions == (1080, 720, 480) and Settings().video_hls is False
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MEDIAMILL_VIDEO_RENDITIONS": "720p", "MEDIAMILL_FFMPEG_THREADS": "-1",
                           "MEDIAMILL_VIDEO_HLS": "maybe"})
    for name in ("MEDIAMILL_VIDEO_RENDITIONS", "MEDIAMILL_FFMPEG_THREADS", "MEDIAMILL_VIDEO_HLS"):
        assert name in str(caught.value)
    with pytest.raises(ConfigError, match="MEDIAMILL_VIDEO_RENDITIONS"):
        Settings.from_env({"MEDIAMILL_VIDEO_RENDITIONS": "721"})  # x264 needs even sizes


def test_ffmpeg_threads_share_the_cores_over_the_pool():
    from config.settings import Settings
    from tasks.video import ffmpeg_threads

    cores = len(os.sched_getaffinity(0))
    assert ffmpeg_threads(Settings(), 1) == 0  # a lone ffmpeg sizes itself for the machine
    assert ffmpeg_threads(Settings(), 2) == max(1, cores // 2)
    assert ffmpeg_threads(Settings(), 64) == 1
    assert ffmpeg_threads(Settings(ffmpeg_threads=5), 2) == 5


def test_the_pool_size_is_taken_from_the_worker_at_boot():
    from types import SimpleNamespace

    import tasks.video as task

    before = dict(task._pool)
    try:
        task._remember_concurrency(SimpleNamespace(concurrency=3))
        assert task._pool["concurrency"] == 3
        task._remember_concurrency(SimpleNamespace(concurrency="auto"))  # resolved later
        assert task._pool["concurrency"] == len(os.sched_getaffinity(0))
    finally:
        task._pool.update(before)


def test_the_video_task_work_makes_renditions_and_hls(clips, tmp_path):
    """The task's work function on its own: derivatives as the asset JSON will list them."""
    from types import SimpleNamespace

    from config.settings import Settings
    from tasks.pipeline import Context
    from tasks.video import make_renditions

    out = tmp_path / "out"
    out.mkdir()
    seen: list[float] = []
    services = SimpleNamespace(settings=Settings(video_renditions=(480,), video_hls=True))
    ctx = Context("a1", "video", "", clips["hd"], out, services, seen.append)

    result = make_renditions(ctx)

    derivatives = {name: (path.name, ctype, extra) for name, path, ctype, extra in result.files}
    assert derivatives["mp4_720p"] == ("mp4_720p.mp4", "video/mp4", {
        "kind": "video", "width": 1280, "height": 720, "duration": pytest.approx(1.0, abs=0.1)})
    assert derivatives["mp4_480p"][2]["width"] == 854
    assert derivatives["hls.m3u8"][1] == "application/vnd.apple.mpegurl"
    assert {name for name, (_, _, extra) in derivatives.items() if extra["kind"] == "hls"} == {
        "hls.m3u8", "hls_720p.m3u8", "hls_720p.mp4", "hls_480p.m3u8", "hls_480p.mp4"}
    assert all(path.parent == out and path.stat().st_size > 0 for _, path, _, _ in result.files)
    assert seen and seen[-1] >= 0.9


# --- reading an original from storage --------------------------------------------------------


def test_a_storage_url_is_read_with_its_own_protocol_only():
    """A presigned URL may make ffmpeg speak HTTP(S) and nothing else: no local files, no
    other schemes; anything but an http(s) URL is not a storage URL at all."""
    location, options = video._input("https://s3.example/b/original?X-Amz-Signature=abc")
    assert location.startswith("https://")
    assert options["protocol_whitelist"] == "https,tcp,tls" and options["tls_verify"] == "1"
    assert options["rw_timeout"] == "15000000"  # a stalled read fails in 15 s
    assert options["format_whitelist"] == video._INPUT_OPTS["format_whitelist"]
    location, options = video._input(Path("/tmp/work/original"))
    assert (location, options["protocol_whitelist"]) == ("file:/tmp/work/original", "file")
    for bad in ("file:///etc/passwd", "concat:a|b", "/etc/passwd"):
        with pytest.raises(ValueError):
            video._input(bad)


def test_ffmpeg_words_in_the_log_carry_no_signed_link_or_local_path():
    stderr = (b"[https @ 0x55d0] HTTP error 403 Forbidden\n"
              b"https://s3.example/b/assets/x/original?X-Amz-Signature=deadbeef: "
              b"Server returned 403 Forbidden\n/tmp/mediamill-1/original: Invalid data")
    text = video._tail(stderr, 1000)
    assert "Signature" not in text and "deadbeef" not in text and "/tmp" not in text
    assert "403 Forbidden" in text
