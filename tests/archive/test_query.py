"""QIDO/C-FIND matching rules (PS3.4 C.2.2.2) against the real index, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from telerad.archive.demo import cr_image, ct_series
from telerad.archive.ingest import store
from telerad.archive.query import QueryError, search, supported_keys


def val(row: dict, tag: str):
    v = row[tag].get("Value", [None])[0]
    return v["Alphabetic"] if isinstance(v, dict) else v


@pytest.fixture
def loaded(ctx, site, other_site):
    uids = {}
    specs = [("Doe^John", "P1", "A100", "20240105", "CT"), ("Doe^Jane", "P2", "A200", "20240220", "DX"),
             ("Smith^Ann", "P3", "A300", "20231231", "CT")]
    for name, pid, acc, date, mod in specs:
        study = generate_uid()
        uids[pid] = study
        patient = (name, pid, "19800101", "F")
        blobs = ct_series(patient, study, acc, slices=2, size=16) if mod == "CT" else [cr_image(patient, study, acc)]
        for b in blobs:
            assert store(ctx, site.id, _with_date(b, date)).ok
    # Same Patient ID at another site: a different patient, never visible to GH.
    assert store(ctx, other_site.id, ct_series(("Other^Pat", "P1", "", "O"), generate_uid(), "X1", 1, 16)[0]).ok
    return uids


def _with_date(data: bytes, date: str) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyDate = date
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_tenant_scoping(ctx, site, other_site, loaded):
    gh = search(ctx, site.id, "PATIENT", {"00100020": "P1"})
    rc = search(ctx, other_site.id, "PATIENT", {"00100020": "P1"})
    assert [val(r, "00100010") for r in gh] == ["Doe^John"]
    assert [val(r, "00100010") for r in rc] == ["Other^Pat"]
    assert search(ctx, other_site.id, "STUDY", {"0020000D": loaded["P1"]}) == []


def test_wildcards_and_case_insensitive_names(ctx, site, loaded):
    rows = search(ctx, site.id, "STUDY", {"00100010": "doe^*"})
    assert sorted(val(r, "00100020") for r in rows) == ["P1", "P2"]
    assert [val(r, "00080050") for r in search(ctx, site.id, "STUDY", {"00080050": "A?00"})] == ["A100", "A200", "A300"]
    assert search(ctx, site.id, "STUDY", {"00080050": "A1%"}) == []  # SQL wildcards are literals


def test_date_ranges(ctx, site, loaded):
    def pids(q: str) -> list[str]:
        return sorted(val(r, "00100020") for r in search(ctx, site.id, "STUDY", {"00080020": q}))

    assert pids("20240101-20241231") == ["P1", "P2"]
    assert pids("-20231231") == ["P3"]
    assert pids("20240201-") == ["P2"]
    assert pids("20240105") == ["P1"]
    with pytest.raises(QueryError):
        search(ctx, site.id, "STUDY", {"00080020": "2024-01-01x"})
    with pytest.raises(QueryError, match="empty list"):
        search(ctx, site.id, "STUDY", {"0020000D": "\\"})


def test_uid_list_and_levels(ctx, site, loaded):
    rows = search(ctx, site.id, "STUDY", {"0020000D": f"{loaded['P1']}\\{loaded['P3']}"})
    assert {val(r, "0020000D") for r in rows} == {loaded["P1"], loaded["P3"]}
    p1 = rows[0] if val(rows[0], "0020000D") == loaded["P1"] else rows[1]
    assert val(p1, "00201206") == 1 and val(p1, "00201208") == 2
    assert val(p1, "00080061") == "CT"
    series = search(ctx, site.id, "SERIES", {"0020000D": loaded["P1"]})
    assert len(series) == 1 and val(series[0], "00201209") == 2
    images = search(ctx, site.id, "IMAGE", {"0020000E": val(series[0], "0020000E")})
    assert sorted(val(r, "00200013") for r in images) == [1, 2]
    assert val(images[0], "00100020") == "P1"  # relational: parent attributes come along


def test_modalities_in_study_and_paging(ctx, site, loaded):
    rows = search(ctx, site.id, "STUDY", {"00080061": "CR\\MR"})
    assert [val(r, "00100020") for r in rows] == ["P2"]
    page = search(ctx, site.id, "STUDY", {}, limit=2, offset=1)
    assert len(page) == 2
    assert val(page[0], "00100020") == "P2"


def test_patient_level_counts_and_supported_keys(ctx, site, loaded):
    rows = search(ctx, site.id, "PATIENT", {"00100010": "*"})
    assert len(rows) == 3
    p1 = next(r for r in rows if val(r, "00100020") == "P1")
    assert val(p1, "00201200") == 1 and val(p1, "00201204") == 2
    assert "00080060" in supported_keys("SERIES") and "00080060" not in supported_keys("STUDY")
    with pytest.raises(QueryError):
        search(ctx, site.id, "FRAME", {})


def test_time_range(ctx, site, loaded):
    # demo studies are at 083000
    assert len(search(ctx, site.id, "STUDY", {"00080030": "0800-0900"})) == 3
    assert len(search(ctx, site.id, "STUDY", {"00080030": "0831-"})) == 0
    assert len(search(ctx, site.id, "STUDY", {"00080030": "0830"})) == 3


def test_one_query_shape_serves_every_value_and_site(ctx, site, other_site, loaded):
    """Selects are built once per query shape (telerad.archive.query._statement); the values, the site, the
    limit and the offset of each call are its own."""
    from telerad.archive import query

    query._STATEMENTS.clear()
    by_pid = {pid: [val(r, "0020000D") for r in search(ctx, site.id, "STUDY", {"00100020": pid})]
              for pid in ("P1", "P2", "P3", "P1")}
    assert by_pid == {pid: [loaded[pid]] for pid in ("P1", "P2", "P3")}
    assert len(query._STATEMENTS) == 1
    other = search(ctx, other_site.id, "STUDY", {"00100020": "P1"})
    assert [val(r, "00100010") for r in other] == ["Other^Pat"]
    dates = [val(r, "00080020") for r in search(ctx, site.id, "STUDY", {"00080020": "20240101-"})]
    assert sorted(dates) == ["20240105", "20240220"]
    assert [val(r, "00080020") for r in search(ctx, site.id, "STUDY", {"00080020": "-20231231"})] == ["20231231"]
    pages = [[val(r, "00100020") for r in search(ctx, site.id, "STUDY", {"00080050": "A*"}, limit=1, offset=o)]
             for o in range(4)]
    assert pages == [["P1"], ["P2"], ["P3"], []]
    names = [val(r, "00100020") for r in search(ctx, site.id, "STUDY", {"00100020": "P1\\P3"})]
    assert names == ["P1", "P3"]
    assert [val(r, "00100020") for r in search(ctx, site.id, "STUDY", {"00100020": "P2\\P9"})] == ["P2"]
