"""Upkeep run by beat: purge deleted assets' objects; bounded work per run."""

from datetime import timedelta

from celery import shared_task
from sqlalchemy import delete, select

from media.records import Asset, utcnow
from media.services import Services

PURGE_BATCH = 100


@shared_task(name="upkeep.purge", bind=True, acks_late=True, autoretry_for=(OSError,),
             retry_backoff=2, max_retries=5)
def purge(self, asset_id: str) -> int:
    """Delete a deleted asset's objects, then its row. Idempotent; absent objects are fine."""
    return purge_asset(self.app.services, asset_id)


@shared_task(name="upkeep.sweep", bind=True)
def sweep(self) -> int:
    """Purge assets deleted over 10 s ago whose purge message was lost. Bounded per run."""
    services = self.app.services
    cutoff = utcnow() - timedelta(seconds=10)
    with services.db.session() as session:
        ids = list(session.scalars(
            select(Asset.id).where(Asset.deleted_at < cutoff).limit(PURGE_BATCH)
        ))
    for asset_id in ids:
        purge_asset(services, asset_id)
    return len(ids)


def purge_asset(services: Services, asset_id: str) -> int:
    """Remove the objects of a deleted asset, then its row; return the objects removed."""
    count = services.storage.delete_prefix(f"assets/{asset_id}")
    with services.db.session() as session:
        session.execute(delete(Asset).where(Asset.id == asset_id, Asset.deleted_at.is_not(None)))
    return count
