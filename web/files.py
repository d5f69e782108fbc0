"""Signed links for `file://` storage: the app serves objects only with a valid signature."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, request, send_file

from media.storage import FileStorage, content_disposition
from web.errors import Problem
from web.extensions import services

bp = Blueprint("files", __name__)

# What each stored name may be served as; anything else is a download, never rendered.
_SAFE_TYPES = {".webp": "image/webp", ".jpg": "image/jpeg", ".png": "image/png",
               ".mp4": "video/mp4"}


def signed_storage(verify: Callable[[FileStorage, str, str], bool], elsewhere: str,
                   refused: str) -> FileStorage:
    """The `file://` storage, once `verify(storage, expires, signature)` accepts this
    request's link: 404 (saying `elsewhere`) under other storage, 403 (saying `refused`)
    for a link that is not ours, has expired, or names nothing valid."""
    storage = services().storage
    if not isinstance(storage, FileStorage):
        raise Problem(404, "Not Found", elsewhere)
    try:
        ok = verify(storage, request.args.get("expires", ""), request.args.get("signature", ""))
    except ValueError:
        ok = False
    if not ok:
        raise Problem(403, "Forbidden", refused)
    return storage


@bp.get("/files/<path:key>")
def serve(key: str):
    """Serve one object if the link's signature is valid and unexpired, else 403."""
    filename = request.args.get("filename", "")
    storage = signed_storage(
        lambda store, expires, signature: store.verify(key, expires, signature, filename),
        "Objects are served by the storage service.",
        "This link is invalid or has expired; fetch the asset again for fresh links.")
    path = storage.path(key)
    if not path.is_file():
        raise Problem(404, "Not Found", "The object no longer exists.")
    suffix = path.suffix.lower()
    mimetype = _SAFE_TYPES.get(suffix) if not filename else None
    response = send_file(path, mimetype=mimetype or "application/octet-stream",
                         conditional=True, max_age=300)
    if filename or mimetype is None:
        response.headers["Content-Disposition"] = content_disposition(
            filename or path.name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response

