"""``telerad import`` service: oversized files and zip members are refused before they are read."""

from __future__ import annotations

import zipfile

from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series
from telerad.archive.importer import import_paths
from telerad.config import make_settings
from telerad.context import Context


def test_oversized_zip_member_refused_without_inflating(tmp_path, ctx, site):
    small = Context.open(make_settings(home=tmp_path / "h2", database_url=ctx.settings.database_url,
                                       audit_key_file=ctx.settings.audit_key_path,
                                       max_object_bytes=50_000))
    try:
        ok = ct_series(("Zip^Pat", "Z1", "19700101", "F"), generate_uid(), "A", 1, 16)[0]
        archive = tmp_path / "in.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ok.dcm", ok)
            zf.writestr("bomb.bin", b"\0" * 5_000_000)  # compresses to a few KB, inflates to 5 MB
        summary = import_paths(small, site.id, [archive])
        assert summary.counts["stored"] == 1 and summary.counts["rejected"] == 1
        (name, reason), = summary.failures
        assert name.endswith("!bomb.bin") and "5000000 bytes exceed" in reason
    finally:
        small.close()
