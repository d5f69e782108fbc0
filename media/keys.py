"""API keys and webhook secrets: made here, stored hashed (keys) or as-is (secrets)."""

from __future__ import annotations

import base64
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from media.records import ApiKey, Tenant

KEY_PREFIX = "mm_"


def hash_key(api_key: str) -> str:
    """The stored form of an API key. Keys carry 256 random bits, so one SHA-256 suffices."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_api_key(session: Session, tenant_name: str) -> dict[str, str]:
    """Issue a new key for `tenant_name`, creating the tenant on first use. Not idempotent:
    each call adds a key; the tenant's webhook secret stays the same."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        secret = base64.b64encode(secrets.token_bytes(24)).decode()
        tenant = Tenant(name=tenant_name, webhook_secret=f"whsec_{secret}")
        session.add(tenant)
        session.flush()
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(api_key), prefix=api_key[:10]))
    return {"tenant": tenant.name, "api_key": api_key, "webhook_secret": tenant.webhook_secret}


def tenant_for_key(session: Session, api_key: str) -> Tenant | None:
    """The tenant an unrevoked `api_key` belongs to, or None."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(api_key), ApiKey.revoked_at.is_(None))
    )
