"""``telerad check``: every indexed blob re-hashed against its key; orphans and missing blobs reported, and
orphans older than a grace period removed on request (:mod:`telerad.storage.collect`)."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import Instance, StoreConflict
from telerad.storage.collect import MIN_AGE, recover, remove_unclaimed

log = logging.getLogger(__name__)
_KEY = re.compile(r"[0-9a-f]{64}")


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
    """Verify the store against the index. With ``remove_orphans_older_than`` (seconds, at least
    :data:`~telerad.storage.collect.MIN_AGE`), orphans neither written nor claimed by a store within that time
    are removed; younger ones may belong to a store under way and are only reported."""
    report = CheckReport()
    since = None
    if remove_orphans_older_than is not None:
        if remove_orphans_older_than < MIN_AGE:
            raise ValueError(f"orphans younger than {MIN_AGE:.0f} s may belong to a store under way")
        since = time.time() - remove_orphans_older_than
        recover(ctx.blobs)  # what an earlier collection left aside when it stopped
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
            if _KEY.fullmatch(f) and f not in referenced and f not in kept_conflicts:
                if since is not None and _removed(ctx, f, since):
                    report.removed.append(f)
                else:
                    report.orphans.append(f)
    return report


def _removed(ctx: Context, key: str, since: float) -> bool:
    try:
        return remove_unclaimed(ctx.blobs, key, since)
    except OSError as exc:  # reported as an orphan still; the rest of the check goes on
        log.warning("orphan blob %s not removed: %s", key, exc)
        return False
