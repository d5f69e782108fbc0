"""Webhook delivery: which targets are allowed, Standard Webhooks signing, one HTTP attempt,
and the retry schedule. No Celery or Flask here; tasks/webhooks.py drives it.

The address check happens on the socket actually connected (after DNS), so a name that
resolves to a public address when subscribed and to 127.0.0.1 when delivered (DNS
rebinding) is still refused. Redirects are never followed; answers are read only so far.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import urllib3
from standardwebhooks import Webhook as Signer
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from media.timefmt import rfc3339

EVENT_TYPES = ("asset.metadata.completed", "asset.thumbnails.completed",
               "asset.video.completed", "asset.completed", "asset.failed")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
# The whole attempt: a receiver that answers a byte every few seconds never trips the read
# timeout, and an attempt running past its claim (media.deliveries.CLAIM, 60 s) could have a
# second send of the same event start beside it.
ATTEMPT_DEADLINE = 30.0
SNIPPET_BYTES = 512
USER_AGENT = "mediamill-webhooks/1"


class RefusedTarget(ValueError):
    """The URL is malformed or points at an address webhooks may not reach."""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt, as the delivery log shows it."""

    at: str
    status_code: int | None
    duration_ms: int
    error: str | None
    response: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def refused_reason(ip: str, allow_private: bool) -> str | None:
    """Why a webhook may not connect to `ip`, or None if it may."""
    address = _embedded_ipv4(ipaddress.ip_address(ip.split("%", 1)[0]))
    if address.is_multicast or address.is_unspecified:
        return f"{address} is a multicast or unspecified address"
    if address.is_global:
        return None
    if allow_private:
        return None
    return (f"{address} is a private, loopback, link-local, reserved or metadata address "
            "(set MEDIAMILL_WEBHOOK_ALLOW_PRIVATE=1 to allow it for development)")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address an IPv6 one stands for (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d,
    6to4 2002:aabb:ccdd::, the old IPv4-compatible ::a.b.c.d), else the address itself:
    Python calls the last three global, yet they can lead to 127.0.0.1 or 10.0.0.1."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def check_url(url: str, allow_private: bool) -> None:
    """Raise RefusedTarget unless `url` is http(s) and every address it resolves to is
    allowed. Deliveries check again on the connected socket."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # urlsplit drops tabs and newlines; the HTTP client then refuses every delivery
        raise RefusedTarget("webhook URLs may not contain spaces or control characters "
                            "(percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise RefusedTarget(f"the webhook URL is malformed ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget("webhook URLs must be absolute http:// or https:// URLs")
    if "@" in parts.netloc:  # even empty ones: https://:@host/
        raise RefusedTarget("webhook URLs may not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, ValueError) as exc:
        raise RefusedTarget(f"{parts.hostname} does not resolve ({exc})") from None
    for info in infos:
        if reason := refused_reason(info[4][0], allow_private):
            raise RefusedTarget(f"{parts.hostname} is refused: {reason}")


def sign(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for `body`."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Signer(secret).sign(message_id, moment, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def body_for(event_type: str, timestamp: datetime, asset: dict) -> str:
    """The JSON body of an event, fixed once so every retry sends the same bytes."""
    stamp = rfc3339(timestamp.astimezone(UTC))
    return encode({"type": event_type, "timestamp": stamp, "data": asset})


def encode(event: dict) -> str:
    """An event as the bytes of its body: compact, keys sorted."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True)


def send(url: str, body: str, headers: dict[str, str], allow_private: bool) -> Attempt:
    """POST once. Never raises for network trouble: the Attempt says what happened."""
    started = time.monotonic()
    at = rfc3339(datetime.now(UTC))

    def done(status: int | None, error: str | None, response: str | None = None) -> Attempt:
        return Attempt(at, status, int((time.monotonic() - started) * 1000), error, response)

    with _Deadline(ATTEMPT_DEADLINE) as deadline:
        try:
            answer = _pool(allow_private).request(
                "POST", url, body=body.encode(), headers=headers, redirect=False, retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
                preload_content=False,
            )
        except RefusedConnection as exc:
            return done(None, f"refused: {exc}")
        except urllib3.exceptions.HTTPError as exc:
            return done(None, deadline.passed or _describe(exc))
        if deadline.passed:  # cut in its headers: what was parsed is not an answer
            answer.close()
            return done(None, deadline.passed)
        try:
            snippet = answer.read(SNIPPET_BYTES, decode_content=False).decode("utf-8",
                                                                             "replace")
        except urllib3.exceptions.HTTPError:
            snippet = None
        finally:
            answer.release_conn()
            answer.close()
    error = None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
    return done(answer.status, error, snippet)


class _Deadline:
    """Cuts the connections an attempt uses (they register in `_CheckedConnection.request`)
    once `seconds` have passed; `passed` then says so, for the attempt's error."""

    _local = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.connections: list[HTTPConnection] = []
        self.passed: str | None = None
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    @classmethod
    def watch(cls, connection: HTTPConnection) -> None:
        current = getattr(cls._local, "current", None)
        if current is not None:
            current.connections.append(connection)

    def __enter__(self) -> _Deadline:
        _Deadline._local.current = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _Deadline._local.current = None

    def _cut(self) -> None:
        self.passed = f"no complete answer within {self.seconds:g} s"
        for connection in self.connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


def next_attempt(schedule: tuple[int, ...], failures: int, now: datetime) -> datetime | None:
    """When to try again after `failures` failed attempts (with ±10 % jitter so receivers
    coming back are not hit by every sender at once), or None when the schedule is spent."""
    if failures > len(schedule):
        return None
    delay = schedule[failures - 1] * random.uniform(0.9, 1.1)
    return now + timedelta(seconds=delay)


class RefusedConnection(urllib3.exceptions.HTTPError):
    """The connected peer's address is not an allowed webhook target."""


class _CheckedConnection:
    allow_private = False

    def request(self, *args, **kwargs) -> None:  # new and reused connections alike
        _Deadline.watch(self)
        return super().request(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if reason := refused_reason(peer, self.allow_private):
            sock.close()
            raise RefusedConnection(f"{self.host} connected to {reason}")
        return sock


def _pool(allow_private: bool) -> urllib3.PoolManager:
    key = bool(allow_private)
    if key not in _POOLS:
        http = type("HTTP", (_CheckedConnection, HTTPConnection), {"allow_private": key})
        https = type("HTTPS", (_CheckedConnection, HTTPSConnection), {"allow_private": key})
        manager = urllib3.PoolManager(num_pools=50, maxsize=4)
        manager.pool_classes_by_scheme = {
            "http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("Pools", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }
        _POOLS[key] = manager
    return _POOLS[key]


_POOLS: dict[bool, urllib3.PoolManager] = {}


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, RefusedConnection):
        return f"refused: {reason}"
    text = str(reason)
    if "timed out" in text.lower():
        return "timed out"
    if "refused" in text.lower():
        return "connection refused"
    return text[:200]
