"""``telerad check``: the store against the index; orphans reported, and removed only on request and once old."""

from __future__ import annotations

import hashlib
import os

from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian
from support import rewritten

from telerad.archive.check import check
from telerad.archive.ingest import Outcome, store

LONG_AGO = 1_000_000.0


def _key(data: bytes) -> str:
    return hashlib.sha256(b"\0" * 128 + data[128:]).hexdigest()


def test_orphans_are_listed_and_removed_only_on_request_once_old(ctx, site):
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()
    mr = open(get_testdata_file("MR_small.dcm"), "rb").read()
    assert store(ctx, site.id, ct).outcome is Outcome.STORED
    assert store(ctx, site.id, mr).outcome is Outcome.STORED
    # The same CT again in another encoding: a duplicate, its durable copy an orphan. A changed MR: a
    # conflict, its copy kept for whoever looks into it.
    again, changed = rewritten(ct, ImplicitVRLittleEndian), rewritten(mr, ImplicitVRLittleEndian, PatientName="Other")
    assert store(ctx, site.id, again, "import").outcome is Outcome.DUPLICATE
    assert store(ctx, site.id, changed, "import").outcome is Outcome.CONFLICT
    orphan, conflict = _key(again), _key(changed)
    assert ctx.blobs.exists(orphan) and ctx.blobs.exists(conflict)

    report = check(ctx)
    assert report.ok and report.checked == 2 and report.orphans == [orphan] and report.removed == []

    young = check(ctx, remove_orphans_older_than=3600)  # written seconds ago: maybe a store under way
    assert young.orphans == [orphan] and young.removed == [] and ctx.blobs.exists(orphan)

    for key in (orphan, conflict):
        os.utime(ctx.blobs.path(key), (LONG_AGO, LONG_AGO))
    old = check(ctx, remove_orphans_older_than=3600)
    assert old.ok and old.removed == [orphan] and old.orphans == []
    assert not ctx.blobs.exists(orphan) and ctx.blobs.exists(conflict)
    assert check(ctx).orphans == [] and check(ctx).checked == 2

    # Sent once more after its orphan went: a duplicate again, the kept copy still the one served.
    assert store(ctx, site.id, again, "import").outcome is Outcome.DUPLICATE
    assert store(ctx, site.id, ct).outcome is Outcome.DUPLICATE
