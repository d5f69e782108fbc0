"""The `thumbnails` queue: image thumbnails, or a video's poster frame as thumbnails."""

import logging
from pathlib import Path

from celery import shared_task

from config.celery import TIME_LIMITS
from config.settings import Settings
from media import thumbnails, video
from media.errors import StorageUnavailable
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
    settings = ctx.services.settings
    options = _options(settings)
    src, shows = ctx.src, None
    if ctx.kind == "video":  # a poster at the largest box; the sizes are the video's own
        src, info = _poster(ctx, max(options.boxes))
        shows = (info.width, info.height)
    made = thumbnails.render(src, ctx.out_dir, settings.max_image_pixels, options, shows)
    return Result(files=[
        (r.name, r.path, r.content_type, {"kind": r.kind, "width": r.width, "height": r.height})
        for r in made
    ])


def _poster(ctx: Context, box: int) -> tuple[Path, video.Probe]:
    """A video's poster fitting `box`, and its probe, made beside the original (not among
    the outputs) from the original where storage keeps it, of which ffmpeg reads only what
    it needs. If storage cannot serve those reads in time (down, or busy serving the same
    2 GB to the other jobs), the job is tried again later (StorageUnavailable), as for any
    storage fault; a damaged file fails at once with its reason."""
    key, dst = original_key(ctx.asset_id), ctx.src.with_name("poster.png")
    source = ctx.services.storage.source(key)
    # Reads over the network get a share of the task's limit, so that a slow store ends in
    # a retry before the soft limit ends the job for good.
    timeout = SOFT - 30 if isinstance(source, Path) else REMOTE_POSTER_SECONDS
    try:
        info = video.probe(source)
        return video.poster(source, dst, info, timeout=timeout, box_side=box), info
    except video.SourceUnreadable as exc:
        log.info("poster of %s: %s; trying again later", ctx.asset_id, exc)
        raise StorageUnavailable(f"the original could not be read from storage: {exc}") \
            from exc


REMOTE_POSTER_SECONDS = 60  # with ffprobe's 30 s, under the task's 120 s soft limit


def _options(settings: Settings) -> thumbnails.Options:
    """The configured boxes, formats, qualities and animation as render's options."""
    quality = dict(settings.thumbnail_quality)
    return thumbnails.Options(
        boxes=settings.thumbnail_boxes, formats=settings.thumbnail_formats,
        webp_quality=quality["webp"], jpeg_quality=quality["jpeg"],
        avif_quality=quality["avif"], animated=settings.thumbnail_animated)
