"""Live status: `GET /api/v1/assets/{id}/events` as server-sent events.

The stream replays recorded events (media/events.py) after the client's Last-Event-ID, or
the current state first; Redis pub/sub only wakes it (on each event, and when the asset is
deleted), so a lost notification delays an event by at most one heartbeat and never loses
it. It ends after a final state, with the rest of the change that made it final; a resume
with nothing left to send on a final asset is 204, which tells an EventSource to stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, g, request
from redis import RedisError
from sqlalchemy import select

from media import assets
from media.events import CHANNEL
from media.records import Asset, AssetEvent
from media.services import Services
from web.api.assets import asset_json
from web.auth import require_tenant
from web.errors import Problem
from web.extensions import services

bp = Blueprint("events", __name__, url_prefix="/api/v1/assets")
HEARTBEAT = 15.0
BATCH = 200


@bp.get("/<asset_id>/events")
@require_tenant
def stream(asset_id: str):
    """Server-sent events of one asset: `id` is its sequence number, `event` is `state` or
    `progress`, `data` the asset JSON."""
    s = services()
    last = (request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "")
    last = last.strip()
    if last and not (last.isascii() and last.isdigit() and len(last) <= 18):
        raise Problem(400, "Bad Last-Event-ID", "Last-Event-ID must be the id of an event "
                      "this stream sent (a whole number).")
    with s.db.session(read_only=True) as session:
        asset = assets.get(session, g.tenant_id, asset_id)
        if asset is None:
            raise Problem(404, "Not Found", f"No asset {asset_id!r} for this API key.")
        if last and int(last) > asset.seq:
            last = ""  # never sent by this stream (another database, a guess): start afresh
        final = asset.status in assets.FINAL
        if last and final and int(last) == asset.seq:
            return Response(status=204)  # seen to the end: an EventSource stops reconnecting
        # Without Last-Event-ID: the current state first, as an answer to this request
        # (its links point at the host asked), under the id of the latest event.
        first = None if last else _event(asset.seq, "state", asset_json(asset))
        after = int(last) if last else asset.seq
    events = _events(s, asset_id, after, first, final)
    return Response(events, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(seq: int, kind: str, data: dict) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


def _events(s: Services, asset_id: str, after: int, first: str | None,
            final: bool) -> Iterator[str]:
    yield "retry: 2000\n\n"
    if first is not None:
        yield first
        if final:
            return
    pubsub = _subscribe(s, asset_id)
    ending = None  # the final state's snapshot, once sent
    try:
        while True:
            rows, gone, final = _after(s, asset_id, after)
            for row in rows:
                if ending is not None and not _same_change(row, ending):
                    return
                yield _event(row.seq, row.kind, row.data)
                after = row.seq
                if row.kind == "state" and row.data.get("status") in assets.FINAL:
                    ending = row.data
            if gone or (not rows and (final or ending is not None)):
                return  # the final change is all sent, or nothing will come after the id
            if not rows and not _wait(pubsub, HEARTBEAT):
                yield ": keep-alive\n\n"
    finally:
        if pubsub is not None:
            pubsub.close()


def _same_change(row: AssetEvent, final: dict) -> bool:
    """Whether `row` belongs to the change that sent the final state: one change recorded
    under several webhook types (asset.video.completed, then asset.completed) is several
    state events sharing one snapshot, and the client's last id must be the last of them."""
    return row.kind == "state" and row.data == final


def _after(s: Services, asset_id: str, after: int) -> tuple[list[AssetEvent], bool, bool]:
    """The events after `after`; whether the asset is gone; whether it is final."""
    with s.db.session(read_only=True) as session:
        rows = list(session.scalars(
            select(AssetEvent).where(AssetEvent.asset_id == asset_id, AssetEvent.seq > after)
            .order_by(AssetEvent.seq).limit(BATCH)
        ))
        asset = session.get(Asset, asset_id)
        gone = asset is None or asset.deleted_at is not None
        return rows, gone, not gone and asset.status in assets.FINAL


def _subscribe(s: Services, asset_id: str):
    try:
        pubsub = s.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL.format(asset_id))
        return pubsub
    except RedisError:
        return None  # no wake-ups: the stream polls the database instead


def _wait(pubsub, timeout: float) -> bool:
    """True once a notification arrives, False after `timeout` (or at once, on a poll)."""
    if pubsub is None:
        time.sleep(2.0)
        return True
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if pubsub.get_message(timeout=left) is not None:
                return True
    except RedisError:
        time.sleep(2.0)
        return True
    return False
