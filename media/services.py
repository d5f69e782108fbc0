"""The shared resources a process needs, built from settings: records and storage."""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from media import storage as storage_module
from media.records import Database
from media.storage import Storage


@dataclass
class Services:
    """Settings, database and storage for one process (web or worker)."""

    settings: Settings
    db: Database
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        return cls(settings, db, storage_module.from_settings(settings))
