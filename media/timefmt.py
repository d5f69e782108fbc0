"""Times as the contract writes them: RFC 3339 in UTC, `Z` for the offset."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    """`moment` as RFC 3339 text, e.g. 2026-11-21T16:22:00.123456Z."""
    return aware(moment).isoformat().replace("+00:00", "Z")


def aware(moment: datetime) -> datetime:
    """`moment` with a time zone: SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
