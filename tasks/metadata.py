"""The `metadata` queue: checksum check, then EXIF (Pillow) or ffprobe metadata."""

from celery import shared_task

from config.celery import TIME_LIMITS
from media import metadata
from media.errors import MediaError
from tasks.pipeline import Context, JobTask, Result, run_job

SOFT, HARD = TIME_LIMITS["metadata.extract"]


@shared_task(name="metadata.extract", base=JobTask, bind=True, soft_time_limit=SOFT,
             time_limit=HARD)
def extract(self, job_id: str) -> str:
    """Verify the stored original's checksum and record its metadata. Idempotent."""
    return run_job(self, job_id, read_metadata)


def read_metadata(ctx: Context) -> Result:
    """Metadata of the original, after checking it is the file that was uploaded."""
    with open(ctx.src, "rb") as fh:
        digest, size = metadata.sha256_of(fh)
    if digest != ctx.sha256:
        raise MediaError("The stored original does not match the uploaded file's checksum; "
                         "upload it again.")
    if ctx.kind == "image":
        meta = metadata.image_metadata(ctx.src, ctx.services.settings.max_image_pixels)
    else:
        meta = metadata.video_metadata(ctx.src)
    return Result(meta={**meta, "size": size, "sha256": digest})
