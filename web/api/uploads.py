"""Direct uploads: the client PUTs parts straight to storage, then completes into an asset.

Each call maps onto one step of an S3 multipart upload (and of Uppy's `@uppy/aws-s3`
multipart hooks): create, sign parts, list parts (resume), complete, abort. With `file://`
storage the part links point at `PUT /files/uploads/...` on this service instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
from datetime import datetime

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import select

from media import assets
from media.errors import UnsupportedMedia
from media.hashing import HashingStream
from media.records import DirectUpload, after_commit, asset_prefix, new_id
from media.sniff import SNIFF_BYTES, sniff
from media.storage import MAX_PARTS, BadParts
from tasks.pipeline import enqueue
from web.api import json_object, text
from web.api.assets import asset_json
from web.api.webhooks import upload_target
from web.auth import require_tenant
from web.errors import Problem, too_large
from web.extensions import base_url, celery, services
from web.files import signed_storage

bp = Blueprint("uploads", __name__, url_prefix="/api/v1/uploads")
log = logging.getLogger(__name__)
parts_bp = Blueprint("upload_parts", __name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 8 * MiB  # S3 needs >= 5 MiB; 8 MiB keeps requests few and retries cheap
PART_URL_TTL = 3600
SIGN_BATCH = 100


def part_size_for(size: int) -> int:
    """The part size for a file of `size` bytes: 8 MiB, or more (whole MiB) to stay within
    S3's 10 000 parts. The site's uploader computes the same (static/upload.js)."""
    return max(MIN_PART_SIZE, math.ceil(size / MAX_PARTS / MiB) * MiB)


@bp.post("")
@require_tenant
def create():
    """Start a multipart upload for a file of the given size: 201 with its part layout."""
    body = json_object()
    filename, size = text(body.get("filename"), "filename"), body.get("size")
    content_type = text(body.get("content_type") or "application/octet-stream", "content_type")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise Problem(400, "Bad upload", "size must be the file's size in bytes (at least 1).")
    limit = services().settings.max_upload_bytes
    if size > limit:
        raise too_large(limit)
    part_size = part_size_for(size)
    upload = DirectUpload(id=new_id(), asset_id=new_id(), tenant_id=g.tenant_id,
                          filename=filename, content_type=content_type[:255],
                          size=size, part_size=part_size,
                          part_count=math.ceil(size / part_size), storage_upload_id="")
    upload.storage_upload_id = services().storage.create_multipart(upload.key, "application/"
                                                                    "octet-stream")
    with services().db.session() as session:
        session.add(upload)
    return jsonify(_upload_json(upload)), 201


@bp.get("/<upload_id>")
@require_tenant
def show(upload_id: str):
    """The upload and the parts storage already holds, to resume after an interruption."""
    upload = _get_or_404(upload_id)
    parts = []
    if upload.status == "open":
        # gone once a complete has joined them (and then failed to record the asset)
        with contextlib.suppress(FileNotFoundError):
            parts = services().storage.list_parts(upload.key, upload.storage_upload_id)
    return jsonify({**_upload_json(upload), "parts": [
        {"part_number": p.part_number, "etag": p.etag, "size": p.size} for p in parts]})


@bp.post("/<upload_id>/parts")
@require_tenant
def sign_parts(upload_id: str):
    """Presigned PUT URLs for the requested part numbers, signed now, valid for an hour."""
    upload = _get_or_404(upload_id)
    if upload.status != "open":
        return _closed(upload_id, "sign")
    numbers = json_object().get("part_numbers")
    if (not isinstance(numbers, list) or not 1 <= len(numbers) <= SIGN_BATCH
            or not all(type(n) is int and 1 <= n <= upload.part_count for n in numbers)):
        raise Problem(400, "Bad part numbers", f"part_numbers must list 1 to {SIGN_BATCH} "
                      f"part numbers from 1 to {upload.part_count}.")
    storage = services().storage
    urls = {str(n): _absolute(storage.presign_part(upload.key, upload.storage_upload_id, n,
                                                   PART_URL_TTL)) for n in sorted(set(numbers))}
    return jsonify({"urls": urls, "expires_in": PART_URL_TTL})


@bp.post("/<upload_id>/complete")
@require_tenant
def complete(upload_id: str):
    """Join the parts, check the bytes (type, size, sha256) and record the asset: 202."""
    upload = _get_or_404(upload_id)
    if upload.status == "completed":  # a retried complete: the same asset again
        return _asset_answer(upload.asset_id)
    body = json_object()
    parts = _parts(body.get("parts"))
    webhook_url = upload_target(body.get("webhook_url"))
    # One complete or abort at a time: raced, both answered success (204 and 202, and the
    # asset was processed), or the complete a false 503.
    claimed = _move(upload.id, ("open",), "completing", or_stale=True)
    if claimed is None:
        return _closed(upload_id, "complete")
    storage = services().storage
    try:
        if not storage.exists(upload.key):  # else joined by a complete that did not record it
            _join(upload, parts)
    except FileNotFoundError:  # aborted in storage, or expired by a lifecycle rule
        _release(upload.id, claimed, "aborted")
        raise Problem(409, "Upload closed", "Storage no longer holds this upload's parts; "
                      "start a new one.") from None
    except BaseException:
        _release(upload.id, claimed, "open")  # fixed parts may complete it yet
        raise
    try:
        found, size, sha256 = _inspect(upload)
    except Problem:  # empty, or not media we can process: refused for good
        if _release(upload.id, claimed, "aborted"):
            storage.delete_prefix(asset_prefix(upload.asset_id))
        raise
    except BaseException:  # storage failed while reading it back: a retry reads it again
        _release(upload.id, claimed, "open")
        raise
    stored = assets.Upload(upload.asset_id, found.kind, found.content_type, upload.filename,
                           size, sha256)
    try:
        with services().db.session() as session:
            # Still ours: a complete silent too long (a slow read) was taken over.
            if not assets.release_upload(session, upload.id, claimed, "completed"):
                raise _Overtaken
            asset = assets.create(session, g.tenant_id, stored, webhook_url,
                                  services().outbox, public_url=base_url())
            jobs = list(asset.jobs)
            after_commit(session, lambda: enqueue(celery(), jobs))
    except _Overtaken:
        return _closed(upload_id, "complete")
    except BaseException:
        _release(upload.id, claimed, "open")  # the object is stored: a retry records it
        raise
    return _asset_answer(upload.asset_id)


@bp.delete("/<upload_id>")
@require_tenant
def abort(upload_id: str):
    """Abort the upload and free its parts: 204 (again for an upload already aborted)."""
    upload = _get_or_404(upload_id)
    if _move(upload.id, ("open", "aborted"), "aborted", or_stale=True) is None:
        return _closed(upload_id, "abort")
    storage = services().storage
    storage.abort_multipart(upload.key, upload.storage_upload_id)
    storage.delete_prefix(asset_prefix(upload.asset_id))  # joined by a complete, unrecorded
    return Response(status=204)


@parts_bp.put("/files/uploads/<upload_id>/<int:part_number>")
def put_part(upload_id: str, part_number: int):
    """`file://` storage only: receive one part through a signed, expiring link."""
    storage = signed_storage(
        lambda store, expires, signature: store.verify_part(upload_id, part_number, expires,
                                                            signature),
        "Parts go straight to the storage service.",
        "This part link is invalid or has expired; ask for a new one with "
        "POST /api/v1/uploads/{id}/parts.")
    with services().db.session(read_only=True) as session:
        part_size = session.scalar(select(DirectUpload.part_size).where(
            DirectUpload.storage_upload_id == upload_id)) or MIN_PART_SIZE
    try:
        etag = storage.write_part(upload_id, part_number, request.stream, part_size)
    except ValueError:
        raise Problem(413, "Payload Too Large", f"A part is at most {part_size} bytes.") from None
    return Response(status=200, headers={"ETag": etag})


def _join(upload: DirectUpload, parts: list[tuple[int, str]]) -> None:
    """Join the named parts into the original, once they add up to the declared size."""
    storage = services().storage
    _check_sizes(upload, parts, storage.list_parts(upload.key, upload.storage_upload_id))
    try:
        storage.complete_multipart(upload.key, upload.storage_upload_id, parts)
    except BadParts as exc:
        raise Problem(400, "Bad parts", f"The parts do not match what was uploaded ({exc}); "
                      "list them with GET /api/v1/uploads/{id} and send their ETags.") from None


def _inspect(upload: DirectUpload):
    """Stream the joined object once: sniff its first bytes, count and hash all of it."""
    with services().storage.open(upload.key) as stream:
        hashing = HashingStream(stream, None, SNIFF_BYTES)
        digest = hashing.finish(MiB)
    if not digest.size:
        raise Problem(400, "Empty file", "The uploaded file is empty.")
    try:
        return sniff(hashing.head), digest.size, digest.sha256
    except UnsupportedMedia as exc:
        raise Problem(415, "Unsupported Media Type", str(exc)) from None


def _check_sizes(upload: DirectUpload, parts: list[tuple[int, str]], stored) -> None:
    """The named parts must add up to the declared size, none above the part size."""
    sizes = {p.part_number: p.size for p in stored}
    if any(sizes.get(n, 0) > upload.part_size for n, _ in parts):
        raise Problem(413, "Payload Too Large", f"A part is larger than {upload.part_size} "
                      "bytes.")
    total = sum(sizes.get(n, 0) for n, _ in parts)
    if total != upload.size:
        if total > upload.size:
            raise Problem(413, "Payload Too Large", f"The parts hold {total} bytes, more than "
                          f"the {upload.size} declared when the upload was created.")
        raise Problem(400, "Incomplete upload", f"The parts hold {total} of the {upload.size} "
                      "bytes declared; upload the missing parts first.")


def _parts(value) -> list[tuple[int, str]]:
    try:
        parts = [(p["part_number"], text(p["etag"], "etag")) for p in value]
    except (TypeError, KeyError):
        parts = []
    if not all(type(n) is int and 1 <= n <= MAX_PARTS for n, _ in parts):
        parts = []
    if not parts:
        raise Problem(400, "Bad parts", 'parts must be a list of {"part_number", "etag"}.')
    if len({n for n, _ in parts}) != len(parts):
        raise Problem(400, "Bad parts", "Each part_number may be named only once.")
    return sorted(parts)


def _upload_json(upload: DirectUpload) -> dict:
    return {"id": upload.id, "filename": upload.filename, "size": upload.size,
            "part_size": upload.part_size, "part_count": upload.part_count,
            "status": upload.status}


def _get_or_404(upload_id: str) -> DirectUpload:
    with services().db.session(read_only=True) as session:
        upload = session.scalar(select(DirectUpload).where(
            DirectUpload.id == upload_id, DirectUpload.tenant_id == g.tenant_id))
    if upload is None:
        raise Problem(404, "Not Found", f"No upload {upload_id!r} for this API key.")
    return upload


class _Overtaken(Exception):
    """This complete's claim on the upload was taken over while it ran."""


def _move(upload_id: str, sources: tuple[str, ...], status: str,
          or_stale: bool = False) -> datetime | None:
    """`assets.move_upload` in a transaction of its own."""
    with services().db.session() as session:
        return assets.move_upload(session, upload_id, sources, status, or_stale=or_stale)


def _release(upload_id: str, claimed: datetime, status: str) -> bool:
    """Give up this complete's claim, to `status`, if it still holds it. Best effort: if
    the database is what failed, the claim goes stale and the next complete takes over."""
    try:
        with services().db.session() as session:
            return assets.release_upload(session, upload_id, claimed, status)
    except Exception as exc:  # noqa: BLE001 - the error being answered matters more
        log.warning("upload %s: could not release its claim: %s", upload_id, exc)
        return False


def _closed(upload_id: str, action: str):
    """The answer to a complete, abort or part signing ("complete", "abort", "sign") that
    found the upload not open."""
    upload = _get_or_404(upload_id)
    if upload.status == "completed":
        if action == "complete":  # completed by another request: its asset
            return _asset_answer(upload.asset_id)
        raise Problem(409, "Upload completed", f"This upload became the asset "
                      f"{upload.asset_id}" + ("; delete it instead." if action == "abort"
                                              else "."))
    if upload.status == "aborted":
        raise Problem(409, "Upload closed", "This upload was aborted; start a new one.")
    # completing, or open again since (the complete failed): never advise starting over
    if action == "sign":
        raise Problem(409, "Upload completing", "Another request is completing this upload: "
                      "its parts can no longer change. Should that fail, the upload is open "
                      "again.")
    if action == "abort":
        raise Problem(409, "Upload completing", "Another request is completing this upload; "
                      "delete the asset it becomes instead.")
    raise Problem(503, "Upload completing", "Another request is completing this upload; "
                  "ask again in a moment.", {"Retry-After": "5"})


def _asset_answer(asset_id: str):
    with services().db.session(read_only=True) as session:
        asset = assets.get(session, g.tenant_id, asset_id)
        if asset is None:
            raise Problem(404, "Not Found", "The asset made from this upload has been deleted.")
        return jsonify(asset_json(asset)), 202


def _absolute(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else base_url() + url
