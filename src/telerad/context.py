"""The process-wide container of what services need: settings, database, blob store and audit log."""

from __future__ import annotations

from dataclasses import dataclass

from telerad.config import Settings
from telerad.db.migrate import upgrade
from telerad.db.session import Database
from telerad.security.audit import AuditLog, load_key
from telerad.storage.filesystem import FileSystemStore
from telerad.storage.readahead import Readahead


@dataclass
class Context:
    settings: Settings
    db: Database
    blobs: FileSystemStore
    audit: AuditLog
    readahead: Readahead

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Context:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        if migrate:
            upgrade(db.engine)
        audit = AuditLog(db, load_key(settings.audit_key_path, db))
        blobs = FileSystemStore(settings.blob_dir, direct_write=settings.blob_direct_write,
                                mapping_bytes=settings.mapped_blobs_mb << 20)
        readahead = Readahead(blobs, settings.readahead_series_mb << 20)
        return cls(settings=settings, db=db, blobs=blobs, audit=audit, readahead=readahead)

    def close(self) -> None:
        self.readahead.close()
        self.audit.close()
        self.blobs.close()
        self.db.dispose()
