"""The process-wide container of what services need: settings, database and blob store."""

from __future__ import annotations

from dataclasses import dataclass

from telerad.config import Settings
from telerad.db.migrate import upgrade
from telerad.db.session import Database
from telerad.storage.filesystem import FileSystemStore


@dataclass
class Context:
    settings: Settings
    db: Database
    blobs: FileSystemStore

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Context:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        if migrate:
            upgrade(db.engine)
        return cls(settings=settings, db=db, blobs=FileSystemStore(settings.blob_dir))

    def close(self) -> None:
        self.db.dispose()
