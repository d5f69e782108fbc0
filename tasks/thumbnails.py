"""The `thumbnails` queue: image thumbnails, or a video's poster frame as thumbnails."""

import logging
from pathlib import Path

from celery import shared_task

from config.celery import TIME_LIMITS
from config.settings import Settings
from media import thumbnails, video
from media.errors import MediaError
from media.records import original_key
from tasks.pipeline import Context, JobTask, Result, run_job

SOFT, HARD = TIME_LIMITS["thumbnails.render"]
log = logging.getLogger(__name__)


@shared_task(name="thumbnails.render", base=JobTask, bind=True, soft_time_limit=SOFT,
             time_limit=HARD)
def render(self, job_id: str) -> str:
    """Make and store thumb_{256,1024,2048}.{webp,jpg} for the job's asset. Idempotent."""
    return run_job(self, job_id, make_thumbnails, fetch=downloads_original)


def downloads_original(kind: str) -> bool:
    """Whether the job downloads the original first: a video's poster needs a few seconds of
    it, which ffmpeg reads from storage (downloading a 2 GB original first took longer
    than this task's time limit)."""
    return kind == "image"


def make_thumbnails(ctx: Context) -> Result:
    """Thumbnails of the image itself, or of a representative frame of a video."""
    src = _poster(ctx) if ctx.kind == "video" else ctx.src
    settings = ctx.services.settings
    made = thumbnails.render(src, ctx.out_dir, settings.max_image_pixels, _options(settings))
    return Result(files=[
        (r.name, r.path, r.content_type, {"kind": r.kind, "width": r.width, "height": r.height})
        for r in made
    ])


def _poster(ctx: Context) -> Path:
    """A video's poster, made beside the original (not among the outputs) from the original
    where storage keeps it. If ffmpeg cannot read it through a URL, from a downloaded copy:
    a storage hiccup then ends in the download's retries (or the job's), and a damaged
    file in the same readable error as ever."""
    key, dst = original_key(ctx.asset_id), ctx.src.with_name("poster.png")
    source = ctx.services.storage.source(key)
    try:
        return video.poster(source, dst, video.probe(source), timeout=SOFT - 30)
    except MediaError:
        if isinstance(source, Path):  # the file itself: the verdict stands
            raise
        log.info("poster of %s from storage failed; trying a downloaded copy", ctx.asset_id)
    ctx.services.storage.download(key, ctx.src)
    return video.poster(ctx.src, dst, video.probe(ctx.src), timeout=SOFT - 30)


def _options(settings: Settings) -> thumbnails.Options:
    """The configured boxes, formats, qualities and animation as render's options."""
    quality = dict(settings.thumbnail_quality)
    return thumbnails.Options(
        boxes=settings.thumbnail_boxes, formats=settings.thumbnail_formats,
        webp_quality=quality["webp"], jpeg_quality=quality["jpeg"],
        avif_quality=quality["avif"], animated=settings.thumbnail_animated)
