"""Video with ffmpeg: probe, transcode to a web MP4, extract a poster frame.

Every command is built with ffmpeg-python as an argv list (never a shell string). Inputs
are probed first and accepted only from an allow-list of container formats, and ffmpeg
may only open local files, so a crafted file cannot make it follow playlists or URLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from media.errors import MediaError

# ffprobe's format names (any alias of a demuxer) that we accept as containers.
ALLOWED_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                   "mpegts", "flv", "mpeg"}
PROBE_TIMEOUT = 30
BOX = (1280, 720)
_INPUT_OPTS = {"protocol_whitelist": "file", "probesize": "50M", "analyzeduration": "20M"}


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


def probe(src: Path) -> Probe:
    """Run ffprobe once; MediaError unless it is a video in an allowed container."""
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    args += [arg for k, v in _INPUT_OPTS.items() for arg in (f"-{k}", v)]
    try:
        done = subprocess.run(args + [f"file:{src}"], capture_output=True,
                              timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError("The video could not be read: probing it took too long.") from exc
    if done.returncode != 0:
        raise MediaError(f"The video could not be read ({_tail(done.stderr)}).")
    return _parse_probe(json.loads(done.stdout or b"{}"))


def _parse_probe(raw: dict) -> Probe:
    fmt = raw.get("format", {})
    names = set(fmt.get("format_name", "").split(","))
    if not names & ALLOWED_FORMATS:
        raise MediaError(
            f"The container format {fmt.get('format_name') or 'unknown'!r} is not accepted; "
            "upload MP4, MOV, WebM, MKV, AVI, MPEG-TS or FLV."
        )
    streams = raw.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    if video is None or not video.get("width"):
        raise MediaError("The file has no video stream.")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    rotation = _rotation(video)
    width, height = int(video["width"]), int(video["height"])
    if rotation % 180:
        width, height = height, width
    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    return Probe(raw, fmt.get("format_name", ""), duration, width, height, rotation, video, audio)


def target_size(width: int, height: int) -> tuple[int, int]:
    """Fit 1280x720 in the clip's own orientation, never upscale, both sides even."""
    box_w, box_h = BOX if width >= height else BOX[::-1]
    scale = min(1.0, box_w / width, box_h / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def transcode(src: Path, dst: Path, info: Probe, on_progress: Callable[[float], None] | None = None,
              threads: int = 0, timeout: float | None = None) -> None:
    """Write an H.264/AAC MP4 with +faststart to `dst`. Idempotent (overwrites `dst`)."""
    width, height = target_size(info.width, info.height)
    stream = ffmpeg.input(f"file:{src}", f=_demuxer(info), **_INPUT_OPTS)
    video = stream["v:0"].filter("scale", width, height).filter("format", "yuv420p")
    outputs = [video] + ([stream["a:0"]] if info.audio else [])
    audio_opts = {"c:a": "aac", "b:a": "128k", "ac": 2} if info.audio else {"an": None}
    cmd = (
        ffmpeg.output(
            *outputs, f"file:{dst}", format="mp4", vcodec="libx264", preset="veryfast",
            crf=23, profile="high", movflags="+faststart", threads=threads,
            map_metadata=-1, **audio_opts,
        )
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-progress", "pipe:1",
                     "-nostats")
        .overwrite_output()
    )
    _run_with_progress(cmd.compile(), info.duration, on_progress, timeout)


def poster(src: Path, dst: Path, info: Probe, timeout: float = 120) -> Path:
    """Extract one representative frame (10% in, at most 5 s) as a PNG at display size."""
    at = min(5.0, (info.duration or 0) * 0.1)
    cmd = (
        ffmpeg.input(f"file:{src}", ss=at, f=_demuxer(info), **_INPUT_OPTS)
        .output(f"file:{dst}", vframes=1, format="image2", vcodec="png")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .overwrite_output()
    )
    _run(cmd.compile(), timeout)
    if not dst.exists() or dst.stat().st_size == 0:
        raise MediaError("No frame could be decoded from the video for its poster.")
    return dst


def _demuxer(info: Probe) -> str:
    """The probed, allowed container: ffmpeg must not pick another demuxer on its own (an
    HLS playlist or a concat script would open other files)."""
    names = [name for name in info.format_name.split(",") if name in ALLOWED_FORMATS]
    if not names:
        raise MediaError(f"The container format {info.format_name or 'unknown'!r} is not "
                         "accepted; upload MP4, MOV, WebM, MKV, AVI, MPEG-TS or FLV.")
    return names[0]


def _run(argv: list[str], timeout: float | None) -> None:
    _run_with_progress(argv, None, None, timeout)


def _run_with_progress(argv: list[str], duration: float | None,
                       on_progress: Callable[[float], None] | None,
                       timeout: float | None) -> None:
    """Run ffmpeg, feeding `-progress` lines to `on_progress`; a watchdog kills it at
    `timeout` even if it prints nothing, and any way out of here kills it too."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        expired = threading.Event()
        watchdog = threading.Timer(timeout, _expire, [proc, expired]) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in proc.stdout:
                if on_progress and duration and line.startswith(b"out_time_us="):
                    micros = _float(line.split(b"=", 1)[1].decode())
                    if micros is not None and micros >= 0:
                        on_progress(min(1.0, micros / 1e6 / duration))
            proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            if watchdog:
                watchdog.cancel()
        if expired.is_set():
            raise MediaError("The video took too long to process and was stopped.")
        if proc.returncode != 0:
            errors.seek(0)
            raise MediaError(f"ffmpeg could not convert the video ({_tail(errors.read())}).")


def _expire(proc: subprocess.Popen, expired: threading.Event) -> None:
    expired.set()
    _kill(proc)


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


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a number here


def _tail(stderr: bytes, limit: int = 300) -> str:
    text = stderr.decode("utf-8", "replace").strip().replace("\n", " | ")
    return text[-limit:] or "no error output"
