"""C-FIND SCP (PS3.4 C.4.1) driven by DCMTK findscu: both roots, all levels, matching, return keys, tenancy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from adapters.dimse.dimse_support import GH_AE, RC_AE, Dcmtk, restamp
from pydicom.uid import generate_uid

from telerad.archive import registry
from telerad.archive.demo import cr_image, ct_series
from telerad.archive.ingest import store
from telerad.context import Context

SMITH = ("Smith^John", "GH001", "19600101", "M")
JONES = ("Jones^Mary", "GH002", "19750505", "F")
MULLER = ("Müller^Jörg", "GH003", "19800808", "M")
RC_SMITH = ("Smith^Jane", "RC001", "19610101", "F")


@dataclass
class Archive:
    studies: dict[str, str] = field(default_factory=dict)  # name -> Study Instance UID
    series: dict[str, str] = field(default_factory=dict)  # name -> Series Instance UID
    sops: dict[str, list[str]] = field(default_factory=dict)  # series name -> SOP Instance UIDs


def _load(ctx: Context, site_id: int, arc: Archive, name: str, blobs: list[bytes], series: str,
          **attrs: object) -> None:
    import pydicom

    for data in restamp(blobs, **attrs):
        r = store(ctx, site_id, data, "fixture")
        assert r.ok, r.reason
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        arc.studies[name] = ds.StudyInstanceUID
        arc.series[series] = ds.SeriesInstanceUID
        arc.sops.setdefault(series, []).append(ds.SOPInstanceUID)


@pytest.fixture
def archive(ctx: Context, site: registry.Site, other_site: registry.Site, gh_node: str, rc_node: str) -> Archive:
    arc = Archive()
    s1, s2, s3, s4, s5 = (generate_uid() for _ in range(5))
    _load(ctx, site.id, arc, "S1", ct_series(SMITH, s1, "A100", 3, size=32), "S1-CT", StudyDate="20200115")
    _load(ctx, site.id, arc, "S1", [cr_image(SMITH, s1, "A100")], "S1-DX", StudyDate="20200115")
    _load(ctx, site.id, arc, "S2", [cr_image(SMITH, s2, "A200")], "S2-DX", StudyDate="20210620")
    _load(ctx, site.id, arc, "S3", ct_series(JONES, s3, "A300", 2, size=32), "S3-CT", StudyDate="20220301")
    _load(ctx, site.id, arc, "S5", [cr_image(MULLER, s5, "A500")], "S5-DX", StudyDate="20230101",
          SpecificCharacterSet="ISO_IR 192")
    _load(ctx, other_site.id, arc, "S4", ct_series(RC_SMITH, s4, "R400", 1, size=32), "S4-CT",
          StudyDate="20200115")
    return arc


def values(rsps: list, keyword: str) -> set:
    return {str(getattr(r, keyword)) for r in rsps}


BOTH = pytest.mark.parametrize("model", ["-P", "-S"], ids=["patient-root", "study-root"])


@BOTH
def test_study_wildcard_sees_only_own_site(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    r, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=STUDY", "PatientName=Smith*", "StudyInstanceUID"])
    assert r.rc == 0, r.out
    assert values(rsps, "StudyInstanceUID") == {archive.studies["S1"], archive.studies["S2"]}
    assert values(rsps, "QueryRetrieveLevel") == {"STUDY"}


@BOTH
def test_study_date_range(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=STUDY", "StudyDate=20200101-20201231",
                                        "StudyInstanceUID"])
    assert values(rsps, "StudyInstanceUID") == {archive.studies["S1"]}
    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=STUDY", "StudyDate=20210101-", "StudyInstanceUID"])
    assert values(rsps, "StudyInstanceUID") == {archive.studies[s] for s in ("S2", "S3", "S5")}


@BOTH
def test_study_uid_list(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    uids = f"{archive.studies['S1']}\\{archive.studies['S3']}\\{archive.studies['S4']}"
    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids}"])
    assert values(rsps, "StudyInstanceUID") == {archive.studies["S1"], archive.studies["S3"]}  # S4 is RC's


@BOTH
def test_response_holds_exactly_the_requested_keys(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    _, rsps = dcmtk.find(GH_AE, model, [
        "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={archive.studies['S1']}", "PatientName", "PatientID",
        "StudyDate", "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries", "0010,1000",  # Other Patient IDs: not indexed, returned empty
    ])
    [rsp] = rsps
    assert {e.keyword or str(e.tag) for e in rsp} == {
        "QueryRetrieveLevel", "StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "OtherPatientIDs",
        "RetrieveAETitle"}
    assert str(rsp.PatientName) == "Smith^John" and rsp.PatientID == "GH001"
    assert rsp.StudyDate == "20200115" and rsp.AccessionNumber == "A100"
    assert list(rsp.ModalitiesInStudy) == ["CR", "CT"]
    assert int(rsp.NumberOfStudyRelatedInstances) == 4 and int(rsp.NumberOfStudyRelatedSeries) == 2
    assert rsp.OtherPatientIDs in (None, "")
    assert rsp.RetrieveAETitle == "TELERAD"


def test_patient_level_patient_root(dcmtk: Dcmtk, archive: Archive) -> None:
    _, rsps = dcmtk.find(GH_AE, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=GH00?", "PatientName",
                                       "NumberOfPatientRelatedStudies"])
    by_id = {r.PatientID: r for r in rsps}
    assert set(by_id) == {"GH001", "GH002", "GH003"}
    assert int(by_id["GH001"].NumberOfPatientRelatedStudies) == 2
    assert str(by_id["GH002"].PatientName) == "Jones^Mary"
    _, rsps = dcmtk.find(GH_AE, "-P", ["QueryRetrieveLevel=PATIENT", "PatientName=smith*", "PatientID"])
    assert values(rsps, "PatientID") == {"GH001"}  # PN matched case-insensitively; RC001 is another site's


def test_patient_level_is_not_in_study_root(dcmtk: Dcmtk, archive: Archive) -> None:
    r, rsps = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=PATIENT", "PatientID"])
    assert rsps == []
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in r  # A900H


@BOTH
def test_series_level(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    base = ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"]
    if model == "-P":
        base.append("PatientID=GH001")
    _, rsps = dcmtk.find(GH_AE, model, [*base, f"StudyInstanceUID={archive.studies['S1']}", "Modality"])
    assert values(rsps, "SeriesInstanceUID") == {archive.series["S1-CT"], archive.series["S1-DX"]}
    by_uid = {r.SeriesInstanceUID: r for r in rsps}
    assert by_uid[archive.series["S1-CT"]].Modality == "CT"
    assert int(by_uid[archive.series["S1-CT"]].NumberOfSeriesRelatedInstances) == 3
    assert all(r.StudyInstanceUID == archive.studies["S1"] for r in rsps)

    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID", "Modality=?T"])
    assert values(rsps, "SeriesInstanceUID") == {archive.series["S1-CT"], archive.series["S3-CT"]}

    uids = f"{archive.series['S2-DX']}\\{archive.series['S3-CT']}"
    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=SERIES", f"SeriesInstanceUID={uids}"])
    assert values(rsps, "SeriesInstanceUID") == {archive.series["S2-DX"], archive.series["S3-CT"]}


@BOTH
def test_image_level(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    ct = archive.sops["S1-CT"]
    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={archive.studies['S1']}",
                                        f"SeriesInstanceUID={archive.series['S1-CT']}", "SOPInstanceUID",
                                        "InstanceNumber", "SOPClassUID"])
    assert values(rsps, "SOPInstanceUID") == set(ct)
    assert sorted(int(r.InstanceNumber) for r in rsps) == [1, 2, 3]
    assert values(rsps, "SOPClassUID") == {"1.2.840.10008.5.1.4.1.1.2"}

    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={ct[0]}\\{ct[2]}",
                                        "InstanceNumber"])
    assert values(rsps, "SOPInstanceUID") == {ct[0], ct[2]}

    _, rsps = dcmtk.find(GH_AE, model, ["QueryRetrieveLevel=IMAGE", "StudyDate=20220101-20221231",
                                        "SOPInstanceUID"])
    assert values(rsps, "SOPInstanceUID") == set(archive.sops["S3-CT"])


@BOTH
def test_other_sites_node_sees_nothing_of_gh(dcmtk: Dcmtk, archive: Archive, model: str) -> None:
    _, rsps = dcmtk.find(RC_AE, model, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID"])
    assert values(rsps, "StudyInstanceUID") == {archive.studies["S4"]}
    for level, key in [("STUDY", f"StudyInstanceUID={archive.studies['S1']}"),
                       ("SERIES", f"SeriesInstanceUID={archive.series['S1-CT']}"),
                       ("IMAGE", f"SOPInstanceUID={archive.sops['S1-CT'][0]}")]:
        r, rsps = dcmtk.find(RC_AE, model, [f"QueryRetrieveLevel={level}", key])
        assert r.rc == 0 and rsps == [], (level, r.out)
    _, rsps = dcmtk.find(RC_AE, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=GH*"])
    assert rsps == []


def test_non_ascii_names_are_returned_in_utf8(dcmtk: Dcmtk, archive: Archive) -> None:
    _, rsps = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=GH003", "PatientName"])
    [rsp] = rsps
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert str(rsp.PatientName) == "Müller^Jörg"


def test_invalid_date_is_refused(dcmtk: Dcmtk, archive: Archive) -> None:
    r, rsps = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2020XX01", "StudyInstanceUID"],
                         "-d")
    assert rsps == []
    assert "DIMSE Status                  : 0xa900" in r
    assert "invalid date" in r.out  # Error Comment (0000,0902)


def test_cancel_stops_the_responses(ctx: Context, dcmtk: Dcmtk, site: registry.Site, gh_node: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from telerad.adapters.dimse import find

    study = generate_uid()
    for data in ct_series(SMITH, study, "A900", 150, size=8):
        assert store(ctx, site.id, data, "fixture").ok
    real = find.response

    def slow(*args: Any) -> Any:  # 20 ms per match: the cancel surely arrives before the 150th (was flaky)
        time.sleep(0.02)
        return real(*args)

    monkeypatch.setattr(find, "response", slow)
    r, rsps = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                                       "SOPInstanceUID"], "--cancel", "1")
    assert r.rc == 0, r.out
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in r  # FE00H
    assert 1 <= len(rsps) < 150


RETURN_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}
MATCHES = [(model, level, kind) for model in ("-P", "-S") for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")
           for kind in ("wildcard", "range", "list") if not (model == "-S" and level == "PATIENT")]


@pytest.mark.parametrize(("model", "level", "kind"), MATCHES, ids=[f"{m[1:]}-{lv}-{k}" for m, lv, k in MATCHES])
def test_matching_kinds_at_every_level(dcmtk: Dcmtk, archive: Archive, model: str, level: str, kind: str) -> None:
    """Wild card, range and list matching (PS3.4 C.2.2.2.4, C.2.2.2.5, C.2.2.2.2) select Jones's entities."""
    if kind == "wildcard":
        key = "PatientName=J*s^M?ry"
    elif kind == "range":
        key = "PatientBirthDate=19700101-19791231" if level == "PATIENT" else "StudyDate=20220101-20221231"
    else:
        key = {"PATIENT": "PatientID=GH002\\RC001",
               "STUDY": f"StudyInstanceUID={archive.studies['S3']}\\{archive.studies['S4']}",
               "SERIES": f"SeriesInstanceUID={archive.series['S3-CT']}\\{archive.series['S4-CT']}",
               "IMAGE": "SOPInstanceUID=" + "\\".join(archive.sops["S3-CT"] + archive.sops["S4-CT"])}[level]
    expected = {"PATIENT": {"GH002"}, "STUDY": {archive.studies["S3"]}, "SERIES": {archive.series["S3-CT"]},
                "IMAGE": set(archive.sops["S3-CT"])}[level]
    keys = [f"QueryRetrieveLevel={level}", key]
    if not key.startswith(RETURN_KEY[level] + "="):
        keys.append(RETURN_KEY[level])  # a second -k for the same tag would override the matching value
    r, rsps = dcmtk.find(GH_AE, model, keys)
    assert r.rc == 0, r.out
    assert values(rsps, RETURN_KEY[level]) == expected
