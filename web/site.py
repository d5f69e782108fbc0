"""The upload site: sign in with an API key, upload, watch, browse, inspect.

Pages are server-rendered; the upload page's script (static/upload.js, with Uppy) calls
the uploads API with the session cookie plus the CSRF token (web/auth.py). User files are
only ever linked through signed storage links, never served from this origin inline.
"""

from __future__ import annotations

import secrets
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import select

from media import assets, deliveries
from media.keys import tenant_for_key
from media.records import Delivery
from web.api.assets import asset_json, delete_asset, reprocess_asset
from web.api.uploads import MIN_PART_SIZE
from web.auth import csrf_matches
from web.extensions import services

bp = Blueprint("site", __name__)
PAGE_SIZE = 24


@bp.record_once
def _configure(state) -> None:
    state.app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")


def signed_in(view):
    """Pages for signed-in users; others are sent to /login."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        g.tenant_id = session.get("tenant_id")
        if not g.tenant_id:
            return redirect(url_for("site.login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


@bp.app_context_processor
def _template_globals() -> dict:
    return {"csrf_token": csrf_token, "thumbnail": thumbnail,
            "signed_in": bool(session.get("tenant_id")),
            "tenant_name": session.get("tenant_name", "")}


@bp.app_template_filter("bytes")
def human_bytes(size: int | None) -> str:
    """1258291 -> '1.2 MB' (binary units, as the uploader shows sizes)."""
    value = float(size or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def thumbnail(asset: dict, box: int = 256) -> str | None:
    """The signed link of the asset's best thumbnail of `box` px (WebP first), if made."""
    names = (f"thumb_{box}.webp", f"thumb_{box}.jpg", "thumb_256.webp", "thumb_256.jpg")
    found = {d["name"]: d["url"] for d in asset.get("derivatives", [])}
    return next((found[n] for n in names if n in found), None)


def csrf_token() -> str:
    """This session's CSRF token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@bp.before_app_request
def _check_csrf():
    """Every form the site posts carries the session's token; other origins cannot."""
    if (request.method == "POST" and request.blueprint == "site"
            and not csrf_matches(request.form.get("csrf_token", ""))):
        if request.endpoint == "site.login":
            expired = ("The sign-in form expired (it was opened before another sign-in or "
                       "sign-out); sign in again.")
            return render_template("login.html", error=expired), 400
        return error_page(400, "The form expired", "This page was opened before you signed "
                          "in or out elsewhere; reload it and try again.")
    return None


def error_page(status: int, title: str, message: str):
    """An error as a page of the site, with a way on, instead of the API's problem+json."""
    back = ((url_for("site.gallery"), "Back to the library") if session.get("tenant_id")
            else (url_for("site.login"), "Sign in"))
    return render_template("error.html", title=title, message=message, back_url=back[0],
                           back_label=back[1]), status


@bp.after_app_request
def _security_headers(response):
    """A Content-Security-Policy on every answer: scripts and styles only from here,
    media only from here or the storage service's signed links."""
    response.headers.setdefault("Content-Security-Policy", _policy())
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _policy() -> str:
    store = _storage_origin()
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' data: blob: {store}; media-src 'self' blob: {store}; "
            f"connect-src 'self' {store}; object-src 'none'; base-uri 'none'; "
            f"form-action 'self'; frame-ancestors 'none'").replace("  ", " ")


def _storage_origin() -> str:
    """Where signed links point, e.g. https://bucket.s3.amazonaws.com ('' for file://)."""
    s = services()
    if "storage_origin" not in s.__dict__:
        try:
            parts = urlsplit(s.storage.url("assets/probe/original", 60))
        except Exception:  # storage misconfigured: /readyz says so; pages must still answer
            return ""
        s.__dict__["storage_origin"] = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
    return s.__dict__["storage_origin"]


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with an API key; the session then acts as its tenant."""
    error = None
    if request.method == "POST":
        key = request.form.get("api_key", "").strip()
        with services().db.session(read_only=True) as db:
            tenant = tenant_for_key(db, key) if key else None
            name = tenant.name if tenant else ""
        if tenant is not None:
            # The token stays: pages open in other tabs keep working after this sign-in.
            token = session.get("csrf") or secrets.token_urlsafe(32)
            session.clear()
            session.update(tenant_id=tenant.id, tenant_name=name, csrf=token)
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        error = "That API key is not valid. Check it, or create one with " \
                "`flask --app web create-api-key NAME`."
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout():
    """Forget the session."""
    session.clear()
    return redirect(url_for("site.login"))


@bp.get("/")
@signed_in
def home():
    """The upload page."""
    return render_template("upload.html", min_part_size=MIN_PART_SIZE,
                           max_upload=services().settings.max_upload_bytes)


@bp.get("/assets")
@signed_in
def gallery():
    """The tenant's assets, newest first, a page at a time."""
    try:
        with services().db.session(read_only=True) as db:
            items, cursor = assets.page(db, g.tenant_id, None, PAGE_SIZE,
                                        request.args.get("cursor") or None)
            items = [asset_json(a) for a in items]
    except ValueError:
        return redirect(url_for("site.gallery"))
    return render_template("gallery.html", items=items, next_cursor=cursor,
                           first_page=not request.args.get("cursor"))


@bp.get("/assets/<asset_id>")
@signed_in
def detail(asset_id: str):
    """One asset: preview, player, metadata, jobs, webhook deliveries."""
    with services().db.session(read_only=True) as db:
        asset = assets.get(db, g.tenant_id, asset_id)
        if asset is None:
            return error_page(404, "Not found", "There is no such asset in this account: it "
                              "was deleted, or the link is wrong.")
        item = asset_json(asset)
        rows = db.scalars(select(Delivery).where(
            Delivery.tenant_id == g.tenant_id, Delivery.asset_id == asset_id)
            .order_by(Delivery.created_at.desc()).limit(50))
        log = [deliveries.to_json(d) for d in rows]
    return render_template("detail.html", asset=item, deliveries=log)


@bp.post("/assets/<asset_id>/reprocess")
@signed_in
def reprocess(asset_id: str):
    """Run every job again, then back to the detail page."""
    if not reprocess_asset(g.tenant_id, asset_id):
        return error_page(404, "Not found", "There is no such asset in this account.")
    return redirect(url_for("site.detail", asset_id=asset_id))


@bp.post("/assets/<asset_id>/delete")
@signed_in
def delete(asset_id: str):
    """Delete the asset (its objects are purged shortly), then back to the gallery."""
    if not delete_asset(g.tenant_id, asset_id):
        return error_page(404, "Not found", "There is no such asset in this account: it "
                          "may have been deleted already.")
    return redirect(url_for("site.gallery"))


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never an open redirect to another host."""
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return url_for("site.home")
