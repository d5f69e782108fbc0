"""Bearer API keys: every API view but health and docs runs as one tenant."""

from __future__ import annotations

from functools import wraps

from flask import g, request

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
            with services().db.session(read_only=True) as session:
                tenant = tenant_for_key(session, key.strip())
        if tenant is None:
            raise Problem(401, "Unauthorized", "Send a valid API key as 'Authorization: Bearer "
                          "<key>'; create one with `flask --app web create-api-key NAME`.",
                          {"WWW-Authenticate": 'Bearer realm="mediamill"'})
        g.tenant_id = tenant.id
        return view(*args, **kwargs)

    return wrapped
