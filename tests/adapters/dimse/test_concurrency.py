"""Several associations at once (PS3.8 allows an acceptor many concurrent associations)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from adapters.dimse.dimse_support import ENV, GH_AE, RC_AE, Dcmtk, write_files
from pydicom.uid import generate_uid
from sqlalchemy import select

from telerad.archive.demo import ct_series
from telerad.context import Context
from telerad.db.models import Instance, Series, Site, Study

SLICES = 15


def test_two_storescu_at_once_store_everything(ctx: Context, dcmtk: Dcmtk, gh_node: str, rc_node: str,
                                               tmp_path: Path) -> None:
    study = generate_uid()
    patient = ("Para^Llel", "PL1", "19700101", "M")
    a = write_files(tmp_path / "a", ct_series(patient, study, "P1", SLICES, size=64), "a")
    b = write_files(tmp_path / "b", ct_series(patient, study, "P1", SLICES, size=64), "b")
    c = write_files(tmp_path / "c", ct_series(("Rc^Pat", "RC9", "19700101", "F"), study, "R1", 5, size=64), "c")
    port = str(ctx.settings.dicom_port)
    procs = [
        subprocess.Popen(["storescu", "-aet", aet, "-aec", ctx.settings.ae_title, "127.0.0.1", port,
                          *[str(f) for f in files]], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for aet, files in [(GH_AE, a), (GH_AE, b), (RC_AE, c)]
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs

    with ctx.db.session() as s:
        sites = dict(s.execute(select(Site.code, Site.id)).all())
        gh_study = s.execute(select(Study).where(Study.site_id == sites["GH"])).scalar_one()
        assert (gh_study.study_uid, gh_study.num_series, gh_study.num_instances) == (study, 2, 2 * SLICES)
        gh_series = s.execute(select(Series.num_instances).where(Series.site_id == sites["GH"])).scalars().all()
        assert sorted(gh_series) == [SLICES, SLICES]
        rc_study = s.execute(select(Study).where(Study.site_id == sites["RC"])).scalar_one()
        assert (rc_study.study_uid, rc_study.num_instances) == (study, 5)  # same UID, other tenant
        assert len(s.execute(select(Instance.id)).all()) == 2 * SLICES + 5
