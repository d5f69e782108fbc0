"""The `video` queue: transcode to the web MP4 renditions (`mp4_720p` always), HLS optional."""

from __future__ import annotations

import os

from celery import shared_task, signals

from config.celery import TIME_LIMITS
from config.settings import Settings
from media import video
from tasks.pipeline import Context, JobTask, Result, run_job

SOFT, HARD = TIME_LIMITS["video.transcode"]
HLS_SEGMENT = 6.0
_pool = {"concurrency": 1}  # set at worker boot; forked pool children inherit it


@signals.worker_init.connect
def _remember_concurrency(sender=None, **_) -> None:
    """The pool's process count, so each ffmpeg gets its share of the cores."""
    value = getattr(sender, "concurrency", None)  # "auto" until Celery resolves it later
    _pool["concurrency"] = value if isinstance(value, int) and value > 0 else _cores()


@shared_task(name="video.transcode", base=JobTask, bind=True, soft_time_limit=SOFT,
             time_limit=HARD)
def transcode(self, job_id: str) -> str:
    """Convert the job's video to H.264/AAC MP4 renditions and store them. Idempotent."""
    return run_job(self, job_id, make_renditions)


def make_renditions(ctx: Context) -> Result:
    """Probe, transcode every rendition in one ffmpeg run with progress reported to the
    job, and optionally repackage them as HLS."""
    settings = ctx.services.settings
    info = video.probe(ctx.src)
    renditions = video.plan(info, ctx.out_dir, settings.video_renditions)
    budget = video.time_budget(info.duration, SOFT - 60)
    video.transcode(ctx.src, renditions, info, on_progress=ctx.report,
                    threads=ffmpeg_threads(settings, _pool["concurrency"]), timeout=budget,
                    keyframe_every=HLS_SEGMENT if settings.video_hls else None,
                    cancelled=ctx.cancelled, ceiling=SOFT - 60)
    files = [(r.name, r.path, "video/mp4", {"kind": "video", "width": r.width,
                                            "height": r.height, "duration": info.duration})
             for r in renditions]
    if settings.video_hls:
        files += [_hls_file(path) for path in video.package_hls(
            renditions, ctx.out_dir, info.duration, HLS_SEGMENT, timeout=budget)]
    return Result(files=files)


def ffmpeg_threads(settings: Settings, concurrency: int) -> int:
    """Threads per ffmpeg: the setting, or the cores shared out over the pool's processes
    (ffmpeg's own default sizes itself for the whole machine, oversubscribing a pool)."""
    if settings.ffmpeg_threads:
        return settings.ffmpeg_threads
    if concurrency == 1:
        return 0  # ffmpeg's own sizing (x264: 1.5 threads per core) fits a lone process
    return max(1, _cores() // max(1, concurrency))


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (containers)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _hls_file(path) -> tuple:
    if path.suffix == ".m3u8":
        return (path.name, path, "application/vnd.apple.mpegurl", {"kind": "hls"})
    return (path.name, path, "video/mp4", {"kind": "hls"})
