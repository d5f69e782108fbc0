"""Bearer API keys: every API view but health and docs runs as one tenant."""

from __future__ import annotations

import hmac
from functools import wraps

from flask import g, request, session

from media.keys import tenant_for_key
from web.errors import Problem
from web.extensions import services


def require_tenant(view):
    """Resolve `Authorization: Bearer <key>` to g.tenant_id, or answer 401."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        tenant = None
        if scheme.lower() == "bearer" and key.strip():
            with services().db.session(read_only=True) as db_session:
                tenant = tenant_for_key(db_session, key.strip())
        if not key.strip() and (site_tenant := _site_tenant()):
            g.tenant_id = site_tenant
            return view(*args, **kwargs)
        if tenant is None:
            raise Problem(401, "Unauthorized", "Send a valid API key as 'Authorization: Bearer "
                          "<key>'; create one with `flask --app web create-api-key NAME`.",
                          {"WWW-Authenticate": 'Bearer realm="mediamill"'})
        g.tenant_id = tenant.id
        return view(*args, **kwargs)

    return wrapped


# --- The upload site (web/site.py) signs in with a session cookie instead of a Bearer key.
# EventSource cannot send headers, so GETs take the cookie alone; anything else must also
# carry the session's CSRF token in X-CSRF-Token, which another origin cannot read.
SAFE_METHODS = ("GET", "HEAD")


def _site_tenant() -> str | None:
    """The signed-in site user's tenant id, when this request may act as it."""
    tenant_id = session.get("tenant_id")
    if not tenant_id:
        return None
    if request.method in SAFE_METHODS:
        return tenant_id
    return tenant_id if csrf_matches(request.headers.get("X-CSRF-Token", "")) else None


def csrf_matches(sent: str) -> bool:
    """True when `sent` is this session's CSRF token (compared in constant time)."""
    expected = session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())
