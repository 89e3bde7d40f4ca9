"""What telerad produces must be valid DICOM: the demo objects pass dicom3tools' dciodvfy, and what the
archive stores of them (zeroed preamble) still does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from telerad.archive.demo import cr_image, ct_series, load_demo
from telerad.db.models import Instance

PATIENT = ("Demo^Val", "V1", "19700101", "F")


def dciodvfy(path: Path) -> str:
    p = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def test_demo_objects_validate(tmp_path):
    for name, data in [("ct.dcm", ct_series(PATIENT, generate_uid(), "A", 1, 64)[0]),
                       ("cr.dcm", cr_image(PATIENT, generate_uid(), "B"))]:
        (tmp_path / name).write_bytes(data)
        out = dciodvfy(tmp_path / name)
        problems = [line for line in out.splitlines() if line.startswith(("Error", "Warning"))]
        assert problems == [], f"{name}: {problems}"


def test_stored_demo_validates(ctx, site):
    results = load_demo(ctx, site.id)
    assert len(results) == 50 and all(r.ok for r in results)
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_class_uid.like("%.1.1.1"))).scalars().first()
    assert key is not None
    out = dciodvfy(ctx.blobs.path(key))
    assert [line for line in out.splitlines() if line.startswith("Error")] == []
