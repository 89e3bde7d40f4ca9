"""``telerad check``: every indexed blob re-hashed against its key; orphans and missing blobs reported."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sqlalchemy import select

from telerad.context import Context
from telerad.db.models import Instance, StoreConflict


@dataclass
class CheckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob is gone
    corrupt: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob no longer matches its hash
    orphans: list[str] = field(default_factory=list)  # blobs neither indexed nor kept as a conflict

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt)


def check(ctx: Context) -> CheckReport:
    report = CheckReport()
    referenced: set[str] = set()
    with ctx.db.session() as s:
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
                report.orphans.append(f)
    return report
