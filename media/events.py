"""The outbox: every change of an asset is recorded in the same transaction as the change.

A state or progress event gets the asset's next sequence number and a snapshot of its JSON
(the live stream replays these); an event with a webhook type also gets one delivery row
per target. After the commit, listeners are woken through Redis pub/sub and the
deliveries are handed to the webhooks queue; if either is lost, the stream polls and
beat's dispatcher sends due deliveries, so nothing recorded is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from media.records import Asset, AssetEvent, Delivery, Tenant, Webhook, after_commit, utcnow
from media.webhooks import body_for

CHANNEL = "mediamill:asset:{}"


@dataclass
class Outbox:
    """Records events; `render` makes the asset JSON, `publish` and `send` run after commit."""

    render: Callable[[Asset], dict]
    publish: Callable[[str, int], None] | None = None  # (asset_id, seq)
    send: Callable[[list[str]], None] | None = None  # delivery ids

    def state(self, session: Session, asset: Asset, *event_types: str | None) -> None:
        """Record the asset's current state: one event per webhook type given (each also
        delivered), or one plain event if none is. The asset JSON is rendered once."""
        data = None
        for event_type in event_types or (None,):
            event = self._record(session, asset, "state", event_type, data)
            data = event.data
            ids = _deliveries(session, asset, event_type, event) if event_type else []
            if ids and self.send:
                after_commit(session, lambda ids=ids: self.send(ids))

    def progress(self, session: Session, asset: Asset) -> None:
        """Record a progress change (no webhook)."""
        self._record(session, asset, "progress", None)

    def _record(self, session: Session, asset: Asset, kind: str, event_type: str | None,
                data: dict | None = None) -> AssetEvent:
        """One event with the next sequence number; `data` is the asset JSON when the
        caller has just rendered it, else it is rendered here."""
        session.flush()
        session.refresh(asset, ["jobs"])
        asset.seq += 1
        event = AssetEvent(asset_id=asset.id, seq=asset.seq, kind=kind, type=event_type,
                           data=self.render(asset) if data is None else data,
                           created_at=utcnow())
        session.add(event)
        session.flush()
        if self.publish:
            asset_id, seq = asset.id, asset.seq
            after_commit(session, lambda: self.publish(asset_id, seq))
        return event


def _deliveries(session: Session, asset: Asset, event_type: str, event: AssetEvent) -> list[str]:
    """One delivery per target: the asset's webhook_url and each matching subscription."""
    targets: list[tuple[str | None, str]] = []
    if asset.webhook_url:
        targets.append((None, asset.webhook_url))
    for hook in session.scalars(select(Webhook).where(Webhook.tenant_id == asset.tenant_id)):
        if event_type in hook.events:
            targets.append((hook.id, hook.url))
    body = body_for(event_type, event.created_at, event.data)
    deliveries = [
        Delivery(message_id=f"msg_{asset.id}_{event.seq}", tenant_id=asset.tenant_id,
                 asset_id=asset.id, webhook_id=hook_id, url=url, event_type=event_type,
                 body=body, status="pending", attempts=[], next_attempt_at=utcnow(),
                 dispatched_at=utcnow())
        for hook_id, url in targets
    ]
    session.add_all(deliveries)
    session.flush()
    return [d.id for d in deliveries]


def secret_for(session: Session, tenant_id: str) -> str:
    """The tenant's whsec_ signing secret."""
    return session.get(Tenant, tenant_id).webhook_secret
