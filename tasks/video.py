"""The `video` queue: transcode to the web MP4 (`mp4_720p`)."""

from celery import shared_task

from config.celery import TIME_LIMITS
from media import video
from tasks.pipeline import Context, JobTask, Result, run_job

SOFT, HARD = TIME_LIMITS["video.transcode"]


@shared_task(name="video.transcode", base=JobTask, bind=True, soft_time_limit=SOFT,
             time_limit=HARD)
def transcode(self, job_id: str) -> str:
    """Convert the job's video to H.264/AAC MP4 fitting 1280x720 and store it. Idempotent."""
    return run_job(self, job_id, make_mp4)


def make_mp4(ctx: Context) -> Result:
    """Probe, then transcode with progress reported to the job."""
    info = video.probe(ctx.src)
    dst = ctx.out_dir / "mp4_720p.mp4"
    video.transcode(ctx.src, dst, info, on_progress=ctx.report, timeout=SOFT)
    width, height = video.target_size(info.width, info.height)
    extra = {"kind": "video", "width": width, "height": height, "duration": info.duration}
    return Result(files=[("mp4_720p", dst, "video/mp4", extra)])
