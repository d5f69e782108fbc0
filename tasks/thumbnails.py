"""The `thumbnails` queue: image thumbnails, or a video's poster frame as thumbnails."""

from celery import shared_task

from config.celery import TIME_LIMITS
from config.settings import Settings
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
    if ctx.kind == "video":  # the poster is made beside the original, not among outputs
        src = video.poster(ctx.src, ctx.src.with_name("poster.png"), video.probe(ctx.src),
                           timeout=SOFT - 30)
    settings = ctx.services.settings
    made = thumbnails.render(src, ctx.out_dir, settings.max_image_pixels, _options(settings))
    return Result(files=[
        (r.name, r.path, r.content_type, {"kind": r.kind, "width": r.width, "height": r.height})
        for r in made
    ])


def _options(settings: Settings) -> thumbnails.Options:
    """The configured boxes, formats, qualities and animation as render's options."""
    quality = dict(settings.thumbnail_quality)
    return thumbnails.Options(
        boxes=settings.thumbnail_boxes, formats=settings.thumbnail_formats,
        webp_quality=quality["webp"], jpeg_quality=quality["jpeg"],
        avif_quality=quality["avif"], animated=settings.thumbnail_animated)
