"""Video with ffmpeg: probe, transcode to web MP4 renditions, package HLS, extract a poster.

Every ffmpeg command is built with ffmpeg-python as an argv list (never a shell string).
Inputs are probed first and accepted only from an allow-list of containers and codecs, and
ffmpeg itself is held to the same lists (`format_whitelist`, `codec_whitelist`) and may
only open local files, so a crafted file cannot make it follow playlists, concat scripts
or URLs. All renditions come out of one ffmpeg run that decodes the source once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from media import thumbnails
from media.errors import Cancelled, MediaError

log = logging.getLogger(__name__)

# ffprobe's format names (any alias of a demuxer) that we accept as containers.
ALLOWED_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                   "mpegts", "flv", "mpeg"}
# The demuxers behind those names: ffmpeg refuses to even probe with any other, so a
# playlist (hls), a concat script or an image sequence never gets a chance to open files.
DEMUXERS = "mov,matroska,avi,mpegts,flv,mpeg"
VIDEO_CODECS = {"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "vp8", "vp9", "av1",
                "prores", "mjpeg", "h263", "flv1", "theora", "dnxhd", "msmpeg4v3", "wmv2"}
AUDIO_CODECS = {"aac", "mp3", "mp2", "mp1", "ac3", "eac3", "opus", "vorbis", "flac", "alac",
                "amr_nb", "amr_wb", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s32le",
                "pcm_f32le", "pcm_u8", "pcm_mulaw", "pcm_alaw", "adpcm_ima_qt"}
# Decoders (by name) ffmpeg may open for those codecs: most carry the codec's name, some
# are named after their implementation (and which one ffmpeg picks depends on the build).
_DECODER_ALIASES = {"mp3float", "mp2float", "mp1float", "aac_fixed", "ac3_fixed", "libdav1d",
                    "libaom-av1", "libvpx", "libvpx-vp9", "libopus", "libvorbis", "flv",
                    "mpegvideo", "msmpeg4", "amrnb", "amrwb"}
_DECODERS = ",".join(sorted(VIDEO_CODECS | AUDIO_CODECS | _DECODER_ALIASES))
PROBE_TIMEOUT = 30
DEFAULT_HEIGHTS = (1080, 720, 480)
CONTRACT_HEIGHT = 720  # `mp4_720p` is in the contract: always made
MAX_FPS = 60  # slow-motion phone clips (120-240 fps) are kept to this: 2-4x less to encode
_INPUT_OPTS = {"protocol_whitelist": "file", "format_whitelist": DEMUXERS,
               "probesize": "50M", "analyzeduration": "20M"}
_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
# Seconds of ffmpeg allowed per second of source, on top of a fixed allowance: ~25x the
# 1080p+720p+480p ladder's measured cost on a busy 2-core machine (bench/video.py).
BUDGET_BASE, BUDGET_PER_SECOND = 120.0, 20.0
# High dynamic range transfers (ffprobe's names): iPhones record HLG by default. Shown as
# they are, 8-bit, their pictures are grey and flat, so they are tone-mapped to SDR.
HDR_TRANSFERS = {"smpte2084": "PQ", "arib-std-b67": "HLG"}
# Frames larger than this are refused before decoding: 8K (7680x4320) is 33 MP, and ffmpeg
# holds several frames of any size at once (16000x16000 took 1.15 GB per process).
MAX_FRAME_PIXELS = 40_000_000


@dataclass(frozen=True)
class Probe:
    """What ffprobe says about a file, with the display geometry worked out."""

    raw: dict
    format_name: str
    duration: float | None
    width: int  # as displayed, after rotation
    height: int
    rotation: int
    video: dict
    audio: dict | None


@dataclass(frozen=True)
class Rendition:
    """One MP4 to make: its derivative name, its display size, and where it goes."""

    name: str
    width: int
    height: int
    path: Path


def probe(src: Path | str) -> Probe:
    """Run ffprobe once on a local file or a storage URL (`Storage.source`); MediaError
    unless it is a video in allowed containers and codecs. Idempotent (reads only)."""
    location, options = _input(src)
    remote = not isinstance(src, Path)
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    args += [arg for k, v in options.items() for arg in (f"-{k}", v)]
    try:
        done = subprocess.run(args + [location], capture_output=True,
                              timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        if remote:  # storage too slow to answer, most likely
            raise SourceUnreadable("The video could not be read from storage in time.") from exc
        raise MediaError("The video could not be read: probing it took too long.") from exc
    if done.returncode != 0 and remote and _TRANSPORT.search(done.stderr):
        log.info("ffprobe could not read the original from storage: %s", _tail(done.stderr))
        raise SourceUnreadable("The video could not be read from storage.")
    if b"not on whitelist" in done.stderr:  # ffmpeg's wording for a refused demuxer
        raise MediaError("The file is not a video container we accept (playlists and scripts "
                         "that refer to other files are refused); upload MP4, MOV, WebM, MKV, "
                         "AVI, MPEG-TS or FLV.")
    if done.returncode != 0:
        raise MediaError(_unreadable(done.stderr))
    return _parse_probe(json.loads(done.stdout or b"{}"))


def _parse_probe(raw: dict) -> Probe:
    fmt = raw.get("format", {})
    if not set(fmt.get("format_name", "").split(",")) & ALLOWED_FORMATS:
        raise MediaError(_refused_format(fmt.get("format_name")))
    streams = raw.get("streams", [])
    # The picture: not a cover image (flagged as one, or a single frame), and of several
    # streams the one ffmpeg itself would choose: the default one, else the largest.
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not s.get("disposition", {}).get("attached_pic")]
    total = _float(fmt.get("duration"))
    moving = [s for s in videos if not _still(s, total)] or videos
    sized = [s for s in moving if _pixels(s)] or moving
    video = max(sized, key=_score, default=None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None or not video.get("width"):
        if audio is not None:
            raise MediaError("The file holds only audio, no video; this service processes "
                             "photos and videos.")
        raise MediaError("The file has no readable video stream; it may be incomplete or "
                         "damaged.")
    _check_codecs(video, audio)
    _check_dolby_vision(video)
    stored_width, height = int(video["width"]), int(video["height"])
    if stored_width * height > MAX_FRAME_PIXELS:
        raise MediaError(f"The video's frames are {stored_width}x{height} pixels "
                         f"({stored_width * height / 1e6:.0f} MP), above the limit of "
                         f"{MAX_FRAME_PIXELS / 1e6:.0f} MP; it was refused to protect the "
                         "service.")
    width = _display_width(stored_width, video.get("sample_aspect_ratio"))
    rotation = _rotation(video)
    if rotation % 180:
        width, height = height, width
    return Probe(raw, fmt.get("format_name", ""), _duration(fmt, video), width, height,
                 rotation, video, audio)


def _score(stream: dict) -> int:
    """ffmpeg's own choice of video stream (fftools): pixels, plus 5 M for the default."""
    return _pixels(stream) + 5_000_000 * bool(stream.get("disposition", {}).get("default"))


def _pixels(stream: dict) -> int:
    width, height = stream.get("width"), stream.get("height")
    return width * height if isinstance(width, int) and isinstance(height, int) else 0


def _still(stream: dict, total: float | None) -> bool:
    """A picture muxed in as a one-frame stream (a cover without its flag): one frame by
    the count MP4 and mkvmerge give, or a tenth of a second long in a longer file (MKV,
    WebM, TS give no count)."""
    tags = stream.get("tags") or {}
    if "1" in (str(stream.get("nb_frames")), tags.get("NUMBER_OF_FRAMES"),
               tags.get("NUMBER_OF_FRAMES-eng")):
        return True
    length = _float(stream.get("duration")) or _clock(tags.get("DURATION")
                                                      or tags.get("DURATION-eng"))
    return length is not None and length <= 0.1 and (total or 0) > 1


def _clock(value) -> float | None:
    """Matroska's "00:00:00.040000000" in seconds."""
    try:
        hours, minutes, seconds = str(value).split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _display_width(width: int, sample_aspect: str | None) -> int:
    """The width as shown: DV and broadcast video store non-square pixels (720x480 with
    32:27 shows as 853x480)."""
    try:
        ratio = Fraction(str(sample_aspect).replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return width
    if not 0.25 <= ratio <= 4 or ratio == 1:  # 0:1 (unknown), absent or absurd: square
        return width
    return max(1, round(width * ratio))


def _duration(fmt: dict, video: dict) -> float | None:
    """Seconds: the longer of the container's and the video stream's figure, unless the
    container's is absurd beside the stream's (a header that claims 49 days for 4 s)."""
    container, stream = _float(fmt.get("duration")), _float(video.get("duration"))
    if container and stream and container > 10 * stream + 60:
        return stream
    return max(filter(None, (container, stream)), default=None)


def _check_codecs(video: dict, audio: dict | None) -> None:
    if video.get("codec_name") not in VIDEO_CODECS:
        raise MediaError(f"The video codec {video.get('codec_name') or 'unknown'!r} is not "
                         "accepted; upload H.264, HEVC, VP8/VP9, AV1, MPEG-4 or ProRes video.")
    if audio is not None and audio.get("codec_name") not in AUDIO_CODECS:
        raise MediaError(f"The audio codec {audio.get('codec_name') or 'unknown'!r} is not "
                         "accepted; upload AAC, MP3, Opus, Vorbis, AC-3, FLAC or PCM audio.")


def _check_dolby_vision(video: dict) -> None:
    """Dolby Vision without a compatible base layer (profile 5) holds colours only a Dolby
    Vision decoder reconstructs; decoded as plain HEVC they are green and purple. Profiles
    8.x (iPhones: 8.4, an HLG base layer) decode as their base layer."""
    for side in video.get("side_data_list", []):
        if (side.get("side_data_type") == "DOVI configuration record"
                and side.get("bl_present_flag", 1)
                and side.get("dv_bl_signal_compatibility_id") == 0):
            raise MediaError(f"The video is Dolby Vision (profile {side.get('dv_profile')}) "
                             "without a standard picture inside, which only a Dolby Vision "
                             "player can show in the right colours. Export it as HDR10, HLG "
                             "or SDR and upload it again.")


def _refused_format(name: str | None) -> str:
    return (f"The container format {name or 'unknown'!r} is not accepted; "
            "upload MP4, MOV, WebM, MKV, AVI, MPEG-TS or FLV.")


def box(height: int, portrait: bool) -> tuple[int, int]:
    """The 16:9 box of a rendition height (1080 -> 1920x1080), turned for portrait."""
    width = (height * 16 + 8) // 9 // 2 * 2
    return (height, width) if portrait else (width, height)


def fit(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """Fit `target` keeping the aspect, never upscale, both sides even (x264 needs that)."""
    scale = min(1.0, target[0] / width, target[1] / height)
    return _even(width * scale, min(width, target[0])), _even(height * scale,
                                                             min(height, target[1]))


def _even(value: float, limit: int) -> int:
    """The nearest even number to `value`, but not past `limit` (the source or the box)."""
    return max(2, min(int(value / 2 + 0.5) * 2, limit // 2 * 2))


def target_size(width: int, height: int) -> tuple[int, int]:
    """The `mp4_720p` size: fit 1280x720 in the clip's own orientation, never upscale."""
    return fit(width, height, box(CONTRACT_HEIGHT, height > width))


def plan(info: Probe, out_dir: Path, heights: Sequence[int] = DEFAULT_HEIGHTS
         ) -> list[Rendition]:
    """The renditions for a clip, largest first. A box the clip does not fill in either
    direction would only upscale and is skipped, except `mp4_720p`, which the contract
    always promises: for a smaller clip it is made at the clip's own (even) size."""
    portrait = info.height > info.width
    out: list[Rendition] = []
    for height in sorted(set(heights) | {CONTRACT_HEIGHT}, reverse=True):
        target = box(height, portrait)
        size = fit(info.width, info.height, target)
        fills = info.width >= target[0] or info.height >= target[1]
        duplicate = size in [(r.width, r.height) for r in out]  # 640x480: 480p == 720p
        if height == CONTRACT_HEIGHT or (fills and not duplicate):
            out.append(Rendition(f"mp4_{height}p", *size, out_dir / f"mp4_{height}p.mp4"))
    return out


def time_budget(duration: float | None, ceiling: float) -> float:
    """Seconds ffmpeg may run for a clip of `duration`: proportional, at most `ceiling`."""
    if not duration:
        return ceiling
    return min(ceiling, BUDGET_BASE + BUDGET_PER_SECOND * duration)


def transcode(src: Path, renditions: Sequence[Rendition], info: Probe,
              on_progress: Callable[[float], None] | None = None, threads: int = 0,
              timeout: float | None = None, keyframe_every: float | None = None,
              cancelled: threading.Event | None = None, ceiling: float | None = None) -> None:
    """Write each rendition as an H.264/AAC MP4 with +faststart, decoding `src` once;
    ffmpeg is stopped (Cancelled) soon after `cancelled` is set. Idempotent (overwrites).
    ffmpeg runs in the background (see `_run_with_progress`): `timeout` counts the time it
    was not starved of CPU by other work, `ceiling` (if larger) all of it."""
    location, options = _input(src)
    stream = ffmpeg.input(location, f=_demuxer(info), codec_whitelist=_DECODERS,
                          threads=threads, **options)
    picture = _frame_rate_capped(stream[_index(info.video, "v:0")], info)
    if is_hdr(info):  # once, at the largest rendition's size, before the renditions split
        largest = max(renditions, key=lambda r: r.width * r.height)
        tags = hdr_tags(info)
        lut = sdr_lut(tags, largest.path.with_name("sdr.cube"))
        picture = _to_sdr_video(picture, tags, (largest.width, largest.height), lut)
    branches = picture.split() if len(renditions) > 1 else None
    outputs = []
    for i, rendition in enumerate(renditions):
        branch = branches[i] if branches is not None else picture
        video = branch.filter("scale", rendition.width, rendition.height).filter(
            "setsar", 1).filter("format", "yuv420p")  # square pixels at the display size
        outputs.append(ffmpeg.output(
            video, *([stream[_index(info.audio, "a:0")]] if info.audio else []),
            f"file:{rendition.path}",
            **_mp4_options(info, threads, keyframe_every)))
    cmd = (ffmpeg.merge_outputs(*outputs)
           .global_args(*_QUIET, "-progress", "pipe:1", "-nostats")
           .overwrite_output())
    _run_with_progress(cmd.compile(), info.duration, on_progress, timeout, background=True,
                       cancelled=cancelled, ceiling=ceiling)


def is_hdr(info: Probe) -> bool:
    """Whether the video is HDR (PQ or HLG), which `transcode` and `poster` tone-map."""
    return info.video.get("color_transfer") in HDR_TRANSFERS


# Primaries zscale converts from; an HDR video tagged otherwise (or not at all) is BT.2020.
_HDR_PRIMARIES = {"bt2020", "bt709", "smpte432", "smpte431"}


def hdr_tags(info: Probe) -> dict[str, str]:
    """The colour tags of an HDR video's frames, as ffmpeg's setparams takes them, with
    BT.2020 and limited range where the file leaves a tag out (zscale cannot convert from
    "unspecified")."""
    v = info.video
    primaries, matrix = v.get("color_primaries"), v.get("color_space")
    return {"color_trc": v["color_transfer"],
            "color_primaries": primaries if primaries in _HDR_PRIMARIES else "bt2020",
            "colorspace": matrix if matrix in ("bt709", "bt2020nc") else "bt2020nc",
            "range": "pc" if v.get("color_range") == "pc" else "tv"}


def _tone_map(picture, tags: dict[str, str], transfer: str, full_range: bool):
    """HDR frames (tagged with `tags`, as `hdr_tags` gives them) to SDR BT.709: to linear
    light with SDR white at 100 nits, to BT.709 primaries, Mobius tone-mapping (colours up
    to SDR white stay as they were, highlights are compressed, not clipped), then the SDR
    `transfer` (bt709 for video, iec61966-2-1 for a still, which is shown as sRGB). Exact,
    in floating point, and slow: ~27 ms a 1080p frame, so video gets it through `sdr_lut`.
    (tonemap desaturates highlights by the luma of the frames' YUV matrix, even for R'G'B'
    frames, and not at all without one.)"""
    return (picture.filter("setparams", **tags)
            .filter("zscale", t="linear", npl=100)
            .filter("format", "gbrpf32le")
            .filter("zscale", p="bt709")
            .filter("tonemap", tonemap="mobius")
            .filter("zscale", t=transfer, m="bt709", r="full" if full_range else "limited"))


# Per axis. HDR coding leaves SDR colours the lower half of the cube, where BT.709's steep
# curve near black magnifies the interpolation error: 65 points halve 33's (a saturated
# green 27 levels off becomes 8), for 0.5 s more once per pool process and kind of HDR.
LUT_POINTS = 65


def sdr_lut(tags: dict[str, str], path: Path) -> Path:
    """Write `_tone_map` from HDR R'G'B' (as `tags` say) to BT.709 R'G'B' as a 3D LUT
    (.cube) at `path`. Applied with lut3d, it costs a third of the floating-point filters
    (bench/video.py)."""
    key = tuple(sorted((k, v) for k, v in tags.items() if k != "range"))  # grid: full range
    path.write_text(_lut_text(key))
    return path


@functools.lru_cache(maxsize=4)  # ~7 MB each; a pool process makes each kind once
def _lut_text(tags: tuple[tuple[str, str], ...]) -> str:
    """The .cube text of `sdr_lut`, made by ffmpeg itself from a grid of every LUT point."""
    n = LUT_POINTS
    grid = array("H", (round(v * 65535 / (n - 1)) for b in range(n) for g in range(n)
                       for r in range(n) for v in (r, g, b)))
    source = (ffmpeg.input("pipe:", f="rawvideo", pix_fmt="rgb48le", s=f"{n * n}x{n}")
              .filter("format", "gbrp16le"))
    argv = (_tone_map(source, {**dict(tags), "range": "pc"}, "bt709", full_range=True)
            .filter("format", "rgb48le").output("pipe:", f="rawvideo").global_args(*_QUIET)
            .compile())
    if sys.byteorder != "little":
        grid.byteswap()
    done = subprocess.run(argv, input=grid.tobytes(), capture_output=True, timeout=60,
                          check=False)
    if done.returncode != 0 or len(done.stdout) != len(grid) * grid.itemsize:
        log.info("ffmpeg failed to tone-map the LUT grid: %s", _tail(done.stderr, 2000))
        raise MediaError("The HDR video could not be converted for the web: this ffmpeg "
                         "cannot tone-map (it needs zscale).")
    values = array("H", done.stdout)
    if sys.byteorder != "little":
        values.byteswap()
    return f"LUT_3D_SIZE {n}\n" + "".join(
        f"{values[i] / 65535:.5f} {values[i + 1] / 65535:.5f} {values[i + 2] / 65535:.5f}\n"
        for i in range(0, len(values), 3))


def _to_sdr_video(picture, tags: dict[str, str], size: tuple[int, int], lut: Path):
    """HDR frames (as `hdr_tags` says they are) to 8-bit SDR BT.709 YUV at `size`: R'G'B'
    in 16 bits, the LUT, back."""
    return (picture.filter("scale", *size, in_range=tags["range"],
                           in_color_matrix="bt709" if tags["colorspace"] == "bt709"
                           else "bt2020")
            .filter("format", "gbrp16le")
            .filter("lut3d", file=str(lut), interp="tetrahedral")
            .filter("scale", out_color_matrix="bt709", out_range="tv")
            .filter("format", "yuv420p"))


def _index(stream: dict | None, default: str) -> str:
    """The probed stream by its index: "v:0" could be a cover picture, not the video."""
    index = (stream or {}).get("index")
    return str(index) if isinstance(index, int) else default


def _frame_rate_capped(picture, info: Probe):
    rate = frame_rate(info.video.get("avg_frame_rate")) or 0.0
    return picture.filter("fps", MAX_FPS) if rate > MAX_FPS else picture


def _mp4_options(info: Probe, threads: int, keyframe_every: float | None) -> dict:
    options = {
        "format": "mp4", "vcodec": "libx264", "preset": "veryfast", "crf": 23,
        "profile:v": "high", "movflags": "+faststart", "threads": threads,
        "map_metadata": -1, "map_chapters": -1,
        # Variable frame rate phone video keeps its own timestamps: no frames duplicated
        # to reach a nominal rate (which can be 90000 fps), none dropped.
        "fps_mode": "vfr",
    }
    if is_hdr(info):  # tone-mapped: tag what the pixels now are
        options.update(color_primaries="bt709", color_trc="bt709", colorspace="bt709",
                       color_range="tv")
    if keyframe_every:  # HLS segments must start on a keyframe
        options["force_key_frames"] = f"expr:gte(t,n_forced*{keyframe_every:g})"
    if info.audio:
        options.update({"c:a": "aac", "b:a": "128k", "ac": 2})
    else:
        options["an"] = None
    return options


def package_hls(renditions: Sequence[Rendition], out_dir: Path, duration: float | None,
                segment: float = 6.0, timeout: float | None = None) -> list[Path]:
    """Repackage finished MP4 renditions as an HLS ladder without re-encoding: one fMP4 file
    and one byte-range playlist per rendition, and `hls.m3u8`, the master playlist.
    Idempotent (overwrites)."""
    files: list[Path] = []
    variants: list[str] = []
    for rendition in renditions:
        stem = f"hls_{rendition.name.removeprefix('mp4_')}"
        playlist, media = out_dir / f"{stem}.m3u8", out_dir / f"{stem}.mp4"
        cmd = (
            ffmpeg.input(f"file:{rendition.path}", f="mov", **_INPUT_OPTS)
            .output(f"file:{playlist}", format="hls", c="copy", hls_time=segment,
                    hls_playlist_type="vod", hls_segment_type="fmp4", hls_flags="single_file",
                    hls_segment_filename=f"file:{media}")
            .global_args(*_QUIET)
            .overwrite_output()
        )
        _run(cmd.compile(), timeout, "packaged for streaming (HLS)")
        files += [playlist, media]
        variants.append(_variant(rendition, playlist, media, duration))
    master = out_dir / "hls.m3u8"
    master.write_text("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"
                      + "".join(variants))
    return [master, *files]


def _variant(rendition: Rendition, playlist: Path, media: Path, duration: float | None) -> str:
    # The average rate stands in for the peak, which HLS wants; players only use it to
    # choose between the variants, so the ordering is what matters.
    bandwidth = int(media.stat().st_size * 8 / duration) if duration else 0
    return (f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},"
            f"RESOLUTION={rendition.width}x{rendition.height}\n{playlist.name}\n")


def poster(src: Path | str, dst: Path, info: Probe, timeout: float = 120,
           box_side: int = 2048) -> Path:
    """Extract a representative frame as a PNG at display size, fitted to `box_side` (the
    largest thumbnail box) as thumbnails are fitted, odd sides and all: the most typical of
    the first keyframes from 10% in (at most 5 s), or, when no keyframe follows, of a dozen
    frames from there, or from the very start. `src` is a local file or a storage URL, of
    which ffmpeg reads only the parts it needs. Idempotent (overwrites `dst`)."""
    at = min(5.0, (info.duration or 0) * 0.1)
    size = thumbnails.fit((info.width, info.height), box_side)
    # Keyframes first: decoding every frame from the previous keyframe up to `at` costs up
    # to a whole GOP (8 s of 1080p for x264's defaults), and keyframes often sit at cuts.
    # MPEG-TS and MPEG-PS have no index: past their only keyframe (an HLS segment has one)
    # or past a lying duration, a seek finds nothing, so the last try reads from the start.
    tries = [(at, True), (at, False)] + ([(0.0, False)] if at > 0 else [])
    for start, keyframes_only in tries:
        dst.unlink(missing_ok=True)
        _run(_poster_command(src, dst, info, start, size, keyframes_only), timeout,
             "made into a poster frame", remote=not isinstance(src, Path))
        if dst.exists() and dst.stat().st_size > 0:
            return dst
    raise MediaError("No frame could be decoded from the video for its poster: the video "
                     "data is damaged. Re-export it and upload it again.")


def _poster_command(src: Path | str, dst: Path, info: Probe, at: float,
                    size: tuple[int, int], keyframes_only: bool) -> list[str]:
    skip = {"skip_frame": "nokey"} if keyframes_only else {}
    seek = {"ss": at} if at > 0 else {}
    location, options = _input(src)
    frame = ffmpeg.input(location, f=_demuxer(info), codec_whitelist=_DECODERS,
                         **seek, **skip, **options)[_index(info.video, "v:0")]
    picks = 3 if keyframes_only else 12
    if is_hdr(info):  # tone-mapped from all its bits first: `thumbnail` takes only 8
        # 4:4:4 (zscale refuses an odd side with subsampled chroma) in 16 bits, in the
        # frames' own range, and R'G'B' frames left R'G'B': swscale would convert them with
        # a matrix of its own choosing, and full range to limited, before setparams says
        # what they are
        tags = hdr_tags(info)
        rgb = str(info.video.get("pix_fmt", "")).startswith("gbr")
        small = (frame.filter("scale", *size, in_range=tags["range"], out_range=tags["range"])
                 .filter("format", "gbrp16le" if rgb else "yuv444p16le"))
        frame = _tone_map(small, tags, "iec61966-2-1",
                          full_range=True).filter("format", "rgb24").filter("thumbnail", picks)
    else:
        frame = frame.filter("thumbnail", picks).filter("scale", *size)
    return (
        frame
        # the PNG is only passed on to the thumbnailer: fast compression, not small files
        .output(f"file:{dst}", vframes=1, format="image2", vcodec="png", update=1,
                compression_level=1)
        .global_args(*_QUIET)
        .overwrite_output()
        .compile()
    )


def _input(src: Path | str) -> tuple[str, dict[str, str]]:
    """ffmpeg's input for a local file or a storage URL, and the options that allow only
    the probed demuxers and that one protocol: a file cannot make ffmpeg fetch a URL, nor
    a URL make it open a local file."""
    if isinstance(src, Path):
        return f"file:{src}", _INPUT_OPTS
    scheme = src.split(":", 1)[0]
    if scheme not in ("http", "https"):
        raise ValueError(f"not a storage URL: {scheme}")
    verify = {}
    if scheme == "https":  # ffmpeg's default is not to verify; boto3's CA bundle, if set
        verify = {"tls_verify": "1", **({"ca_file": os.environ["AWS_CA_BUNDLE"]}
                                        if os.environ.get("AWS_CA_BUNDLE") else {})}
    # rw_timeout (microseconds): a stalled connection fails in 15 s, as a read error
    return src, {**_INPUT_OPTS, "protocol_whitelist": f"{scheme},tcp,tls", "reconnect": "1",
                 "rw_timeout": "15000000", **verify}


def _demuxer(info: Probe) -> str:
    """The probed, allowed container: ffmpeg must not pick another demuxer on its own (an
    HLS playlist or a concat script would open other files)."""
    names = [name for name in info.format_name.split(",") if name in ALLOWED_FORMATS]
    if not names:
        raise MediaError(_refused_format(info.format_name))
    return names[0]


def _run(argv: list[str], timeout: float | None, what: str, remote: bool = False) -> None:
    """Run ffmpeg; `remote`: its input is a storage URL (see SourceUnreadable)."""
    _run_with_progress(argv, None, None, timeout, what=what, remote=remote)


def _run_with_progress(argv: list[str], duration: float | None,
                       on_progress: Callable[[float], None] | None,
                       timeout: float | None, background: bool = False,
                       what: str = "converted", cancelled: threading.Event | None = None,
                       ceiling: float | None = None, remote: bool = False) -> None:
    """Run ffmpeg, feeding `-progress` lines to `on_progress`; a watchdog (`_watch`) kills
    it at `timeout` even if it prints nothing, any way out of here kills it, and so does
    the death of this process (a hard time limit or a cold worker shutdown). A
    `background` run (a transcode) yields the CPU to thumbnails, metadata and the web on a
    shared machine, and alone on its machine loses nothing; the seconds in which it was
    starved of CPU that way are not counted against `timeout`, only against `ceiling`."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_in_background if background else _die_with_parent)
        expired, done = threading.Event(), threading.Event()
        if timeout:
            limits = (timeout, max(timeout, ceiling or 0))
            threading.Thread(target=_watch, args=(proc, *limits, expired, done),
                             daemon=True).start()
        try:
            for line in proc.stdout:  # -progress writes a block twice a second
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled("the asset was deleted")
                if on_progress and duration and line.startswith(b"out_time_us="):
                    micros = _float(line.split(b"=", 1)[1].decode())
                    if micros is not None and micros >= 0:
                        on_progress(min(1.0, micros / 1e6 / duration))
            proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            done.set()
        if expired.is_set():
            if remote:  # reading from storage, most likely, was what took so long
                raise SourceUnreadable(f"The video could not be {what}: reading it from "
                                       "storage took too long.")
            raise MediaError("The video took too long to process and was stopped.")
        if proc.returncode != 0:
            errors.seek(0)
            words = errors.read()
            log.info("ffmpeg failed: %s", _tail(words, 2000))  # for whoever debugs
            if remote and _TRANSPORT.search(words):
                raise SourceUnreadable(f"The video could not be {what}: it could not be "
                                       "read from storage.")
            raise MediaError(f"The video could not be {what}: its data is damaged or in a "
                             "form ffmpeg cannot decode. Re-export it (an H.264 MP4 will do) "
                             "and upload it again.")


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal to ask for
        return None


# Looked up once, here: the child between fork and exec should call, not load libraries.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
BACKGROUND_NICE = 19


def _die_with_parent() -> None:
    """In the forked child before exec: have the kernel SIGKILL ffmpeg when the worker
    process dies. ffmpeg runs in its own session (so a kill reaches all of it), which also
    means Celery's kill of the pool child would otherwise leave it running."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _in_background() -> None:
    """_die_with_parent, at the lowest CPU priority: Linux's SCHED_IDLE (runs only on CPU
    time nothing else wants, below even nice 19), where the platform has it, and nice 19.
    ffmpeg has a session of its own, which on a kernel with autogroup scheduling (Debian's
    and Ubuntu's default) is a scheduling group of its own, weighed against the others by
    the group's nice alone: without nice 19 on the group too, a background transcode took
    half the CPU from busy thumbnail processes (measured: 0.5 s of CPU in 1 s against two
    busy loops on two cores; with it, 27 s)."""
    _die_with_parent()
    os.nice(BACKGROUND_NICE)
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):  # a seccomp'd sandbox may refuse: nice 19 stays
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # no autogroups (not Linux, or turned off): nothing to do
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
        group.write(str(BACKGROUND_NICE))


def _watch(proc: subprocess.Popen, budget: float, ceiling: float, expired: threading.Event,
           done: threading.Event) -> None:
    """Until `done`: kill ffmpeg and set `expired` once it has used up `budget` seconds, or
    once `ceiling` seconds have passed whatever it got. Each second is charged by
    `_charged`: a transcode starved by other work (to which it yields) is not charged for
    it, while one that has the machine, or has hung, is."""
    started = last_look = time.monotonic()
    charged, last = 0.0, _sched_times(proc.pid)
    try:
        cpus = len(os.sched_getaffinity(proc.pid))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    while not done.wait(WATCH_INTERVAL):
        now, times = time.monotonic(), _sched_times(proc.pid)
        share = 1.0
        if times is not None and last is not None:
            share = _charged(times[0] - last[0], times[1] - last[1], now - last_look, cpus)
        charged += share * (now - last_look)
        last_look, last = now, times
        if charged >= budget or now - started >= ceiling:
            expired.set()
            _kill(proc)
            return


WATCH_INTERVAL = 1.0  # seconds between the watchdog's looks at ffmpeg


def _charged(ran: float, waited: float, elapsed: float, cpus: int) -> float:
    """The share of `elapsed` seconds charged to an ffmpeg whose threads together ran `ran`
    seconds and waited, runnable, `waited` seconds for a CPU, on `cpus` CPUs. Fully
    charged when it ran more than it waited, or used every CPU it may (its own threads
    queueing behind each other is not starvation: a ladder of three x264 encoders has
    several threads for each core, which wait more than they run); not charged when it only
    waited (starved by other work); a hung ffmpeg, which neither runs nor waits, in full."""
    ran, waited = max(0.0, ran), max(0.0, waited)
    if ran + waited <= 0.01 * elapsed:
        return 1.0
    return min(1.0, max(ran / (ran + waited), ran / (elapsed * cpus)))


def _sched_times(pid: int) -> tuple[float, float] | None:
    """Seconds the threads of process `pid` have spent on a CPU and waiting, runnable, for
    one (Linux schedstat); None where the kernel does not say, and the watchdog then counts
    every second."""
    ran = waited = 0
    try:
        tasks = list(os.scandir(f"/proc/{pid}/task"))
    except OSError:
        return None
    for task in tasks:
        try:
            with open(os.path.join(task.path, "schedstat")) as fh:  # ns running, ns waiting
                fields = fh.read().split()
            ran, waited = ran + int(fields[0]), waited + int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that has just ended
    return ran / 1e9, waited / 1e9


def _kill(proc: subprocess.Popen) -> None:
    """Kill ffmpeg's whole process group so no child outlives the task."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    rotate = stream.get("tags", {}).get("rotate")
    return int(float(rotate)) % 360 if rotate else 0


def frame_rate(value: str | None) -> float | None:
    """ffprobe's "30000/1001" as 29.97; None for "0/0" or garbage."""
    try:
        rate = float(Fraction(value))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if rate > 0 else None


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a number here


# ffmpeg prefixes lines with "[demuxer @ 0x55d0...]" and names files by their path: neither
# helps the person reading the job's error, and the worker's paths are nobody's business.
_LOG_PREFIX = re.compile(r"\[[^\]]* @ 0x[0-9a-f]+\] ")
_LOCAL_PATH = re.compile(r"(?:https?://\S+|(?:file:)?/[\w.+/-]+)")  # signed links too


class SourceUnreadable(MediaError):
    """ffmpeg could not read the original through its storage URL, or not in time (a
    network or storage fault, not a verdict on the file): worth trying again later."""


# ffmpeg's words for a failed read over the network, as opposed to undecodable data
_TRANSPORT = re.compile(rb"HTTP error|Server returned|Connection (?:refused|reset|timed out)|"
                        rb"timed out|Network is unreachable|Failed to resolve|"
                        rb"Input/output error|error:[0-9A-F]+:SSL|TLS|tls", re.IGNORECASE)


def _unreadable(stderr: bytes) -> str:
    """Why ffprobe could not read a file, as a sentence a person can act on; ffprobe's own
    words go to the log."""
    if b"moov atom not found" in stderr:
        return ("The video could not be read: it is incomplete (its index, the MP4 'moov' "
                "box, is missing), which usually means the upload or the recording was cut "
                "short. Upload the complete file.")
    if b"Invalid data found when processing input" in stderr:
        return ("The video could not be read: the file is corrupt, or not in a format "
                "ffmpeg knows. Upload MP4, MOV, WebM, MKV, AVI, MPEG-TS or FLV.")
    log.info("ffprobe failed: %s", _tail(stderr, 2000))
    return ("The video could not be read: the file is damaged or incomplete. Upload the "
            "complete file, or re-export it as MP4.")


def _tail(stderr: bytes, limit: int = 300) -> str:
    text = stderr.decode("utf-8", "replace").strip().replace("\n", " | ")
    text = _LOCAL_PATH.sub("the file", _LOG_PREFIX.sub("", text))
    return text[-limit:] or "no error output"
