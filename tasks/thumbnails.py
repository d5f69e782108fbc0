"""The `thumbnails` queue: image thumbnails, or a video's poster frame as thumbnails."""

from celery import shared_task

from config.celery import TIME_LIMITS
from media import thumbnails, video
from tasks.pipeline import Context, JobTask, Result, run_job

SOFT, HARD = TIME_LIMITS["thumbnails.render"]


@shared_task(name="thumbnails.render", base=JobTask, bind=True, soft_time_limit=SOFT,
             time_limit=HARD)
def render(self, job_id: str) -> str:
    """Make and store thumb_{256,1024,2048}.{webp,jpg} for the job's asset. Idempotent."""
    return run_job(self, job_id, make_thumbnails)


def make_thumbnails(ctx: Context) -> Result:
    """Thumbnails of the image itself, or of a representative frame of a video."""
    src = ctx.src
    if ctx.kind == "video":
        src = video.poster(ctx.src, ctx.src.with_name("poster.png"), video.probe(ctx.src))
    made = thumbnails.render(src, ctx.out_dir, ctx.services.settings.max_image_pixels)
    return Result(files=[
        (r.name, r.path, r.content_type, {"kind": r.kind, "width": r.width, "height": r.height})
        for r in made
    ])
