"""``telerad import`` service: oversized files and zip members are refused before they are read; several objects
are stored at once, reported in source order."""

from __future__ import annotations

import threading
import zipfile

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from telerad.archive.demo import ct_series
from telerad.archive.importer import import_paths
from telerad.config import make_settings
from telerad.context import Context
from telerad.db.models import Instance


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


def _folder(tmp_path, n: int) -> tuple[list[str], list[bytes]]:
    """``n`` CT objects, a duplicate of the first, an unreadable non-DICOM file, in name order."""
    folder = tmp_path / "in"
    folder.mkdir()
    objects = ct_series(("Imp^Pat", "I1", "19700101", "F"), generate_uid(), "A", n, 16)
    contents = [*objects, objects[0], b"not dicom at all"]
    names = []
    for i, data in enumerate(contents):
        path = folder / f"{i:03d}.dcm"
        path.write_bytes(data)
        names.append(str(path))
    return names, contents


@pytest.mark.parametrize("jobs", [1, 4])
def test_import_reports_every_source_in_order_whatever_the_jobs(tmp_path, ctx, site, jobs):
    names, _ = _folder(tmp_path, 12)
    seen: list[str] = []
    summary = import_paths(ctx, site.id, [tmp_path / "in"], seen.append, jobs=jobs)
    assert seen == names
    assert dict(summary.counts) == {"stored": 12, "duplicate": 1, "rejected": 1}
    (name, reason), = summary.failures
    assert name == names[-1] and reason.startswith("rejected 0x")
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(Instance)).scalar_one() == 12


def test_import_stores_several_objects_at_once(tmp_path, ctx, site, monkeypatch):
    """With jobs > 1 the stores overlap: the first two calls meet at a barrier that one thread alone would
    never pass (it times out, and the import fails)."""
    from telerad.archive import importer

    _folder(tmp_path, 6)
    barrier = threading.Barrier(2, timeout=10)
    real = importer.store
    calls: list[int] = []

    def meeting(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(importer, "store", meeting)
    summary = import_paths(ctx, site.id, [tmp_path / "in"], jobs=2)
    assert summary.counts["stored"] == 6 and len(calls) == 8
