"""``telerad check``: every indexed blob re-hashed against its key; orphans and missing blobs reported, and
orphans older than a grace period removed on request (:mod:`telerad.storage.collect`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import Instance, StoreConflict
from telerad.storage.collect import remove_unclaimed


@dataclass
class CheckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob is gone
    corrupt: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob no longer matches its hash
    orphans: list[str] = field(default_factory=list)  # blobs neither indexed nor kept as a conflict, left in place
    removed: list[str] = field(default_factory=list)  # orphans removed (``remove_orphans_older_than``)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt)


def check(ctx: Context, remove_orphans_older_than: float | None = None) -> CheckReport:
    """Verify the store against the index. With ``remove_orphans_older_than`` (seconds), orphans neither
    written nor claimed by a store within that time are removed; younger ones may belong to a store still
    under way and are only reported."""
    report = CheckReport()
    since = time.time() - remove_orphans_older_than if remove_orphans_older_than is not None else None
    referenced: set[str] = set()
    with ctx.db.session() as s:  # listed before the files are walked: a blob named since is younger than since
        rows = s.execute(select(Instance.sop_uid, Instance.blob_key)).all()
        kept_conflicts = set(s.execute(select(StoreConflict.received_sha256)).scalars())
    for sop_uid, key in rows:
        report.checked += 1
        referenced.add(key)
        if not ctx.blobs.exists(key):
            report.missing.append(sop_uid)
        elif not ctx.blobs.verify(key):
            report.corrupt.append(sop_uid)
    root = ctx.blobs.root
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) == "tmp":
            continue
        for f in files:
            if len(f) == 64 and f not in referenced and f not in kept_conflicts:
                if since is not None and remove_unclaimed(ctx.blobs, f, since):
                    report.removed.append(f)
                else:
                    report.orphans.append(f)
    return report
