"""QIDO-RS (PS3.18 10.6): keywords and tags, includefield, defaults per level, limit/offset, errors."""

from __future__ import annotations

import pytest
from dicomweb_support import put, sample_file
from pydicom.uid import generate_uid

from telerad.adapters.dicomweb import qido
from telerad.archive.demo import cr_image, ct_series


def value(row: dict, tag: str):
    v = row[tag].get("Value", [None])[0]
    return v["Alphabetic"] if isinstance(v, dict) else v


@pytest.fixture
def two_patients(ctx, site, ct):
    cr = put(ctx, site.id, cr_image(("Roe^Jane", "P2", "19800101", "F"), generate_uid(), "ACC2"))
    return ct, cr


def test_search_studies_by_keyword_and_by_tag(client, two_patients):
    ct, _ = two_patients
    for params in ({"PatientID": "P1"}, {"00100020": "P1"}, {"PatientName": "doe*"}):
        r = client.get("/dicom-web/studies", params=params)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/dicom+json"
        rows = r.json()
        assert [value(row, "0020000D") for row in rows] == [ct[0].study]
    row = client.get("/dicom-web/studies", params={"PatientID": "P1"}).json()[0]
    assert value(row, "00201208") == 3 and value(row, "00201206") == 1
    assert row["00080061"]["Value"] == ["CT"]
    assert value(row, "00081190") == f"http://testserver/dicom-web/studies/{ct[0].study}"
    assert value(row, "00080056") == "ONLINE"
    # Default study attributes only (PS3.18 Table 10.6.3-3): no series or instance attributes.
    assert set(row) <= qido.STUDY_DEFAULT and "00080060" not in row


def test_no_match_is_200_with_an_empty_array(client, ct):
    r = client.get("/dicom-web/studies", params={"PatientID": "NOBODY"})
    assert r.status_code == 200 and r.json() == []


def test_date_range_and_uid_list(client, two_patients):
    ct, cr = two_patients
    rows = client.get("/dicom-web/studies", params={"StudyInstanceUID": f"{ct[0].study},{cr.study}"}).json()
    assert {value(r, "0020000D") for r in rows} == {ct[0].study, cr.study}
    assert len(client.get("/dicom-web/studies", params={"StudyDate": "19000101-19991231"}).json()) == 0
    assert len(client.get("/dicom-web/studies", params={"StudyDate": "20000101-"}).json()) == 2


def test_includefield(client, ct):
    row = client.get("/dicom-web/studies", params={"includefield": "StudyDescription,00081030"}).json()[0]
    assert value(row, "00081030") == "CT HEAD"
    row = client.get("/dicom-web/studies", params=[("includefield", "StudyDescription"),
                                                   ("includefield", "AccessionNumber")]).json()[0]
    assert value(row, "00081030") == "CT HEAD"
    bad = client.get("/dicom-web/studies", params={"includefield": "NoSuchKeyword"})
    assert bad.status_code == 400 and "NoSuchKeyword" in bad.json()["detail"]


def test_includefield_all_at_instance_level_has_usable_bulk_uris(client, ct):
    r = client.get(f"/dicom-web/studies/{ct[0].study}/series/{ct[0].series}/instances",
                   params={"includefield": "all", "SOPInstanceUID": ct[0].sop})
    row = r.json()[0]
    assert value(row, "00180060") == 120  # KVP, only in the instance's own metadata
    uri = row["7FE00010"]["BulkDataURI"]
    assert uri == f"http://testserver{ct[0].path}/bulk/7FE00010"
    assert "{{" not in r.text
    assert client.get(uri).status_code == 200


def test_series_levels(client, ct):
    rows = client.get(f"/dicom-web/studies/{ct[0].study}/series").json()
    assert len(rows) == 1
    row = rows[0]
    assert value(row, "0020000E") == ct[0].series and value(row, "00080060") == "CT"
    assert value(row, "00201209") == 3
    assert value(row, "00081190").endswith(f"/studies/{ct[0].study}/series/{ct[0].series}")
    assert "00100010" not in row, "study attributes only when searching all series"
    row = client.get("/dicom-web/series", params={"Modality": "CT"}).json()[0]
    assert value(row, "00100010") == "Doe^John" and value(row, "0020000D") == ct[0].study


def test_instance_levels(client, ct):
    rows = client.get(f"/dicom-web/studies/{ct[0].study}/series/{ct[0].series}/instances").json()
    assert [value(r, "00080018") for r in rows] == [i.sop for i in ct]
    row = rows[0]
    assert value(row, "00280010") == 32 and value(row, "00280100") == 16 and value(row, "00200013") == 1
    assert value(row, "00081190") == f"http://testserver{ct[0].path}"
    assert "00080060" not in row
    row = client.get(f"/dicom-web/studies/{ct[0].study}/instances").json()[0]
    assert value(row, "00080060") == "CT", "series attributes for a study's instances"
    assert "00100010" not in row
    row = client.get("/dicom-web/instances", params={"SOPInstanceUID": ct[1].sop}).json()[0]
    assert value(row, "00100010") == "Doe^John" and value(row, "00200013") == 2
    assert len(client.get("/dicom-web/instances", params={"InstanceNumber": "2"}).json()) == 1


def test_limit_and_offset(client, ct):
    url = f"/dicom-web/studies/{ct[0].study}/instances"
    all_ = [value(r, "00080018") for r in client.get(url).json()]
    page = client.get(url, params={"limit": 2, "offset": 1})
    assert [value(r, "00080018") for r in page.json()] == all_[1:3]
    assert "Warning" not in page.headers
    for bad in ({"limit": "-1"}, {"limit": "x"}, {"offset": "1.5"}):
        assert client.get(url, params=bad).status_code == 400


def test_server_cap_warns_of_more_results(client, ctx, ct):
    ctx.settings.dicomweb_default_limit = 2
    r = client.get(f"/dicom-web/studies/{ct[0].study}/instances")
    assert len(r.json()) == 2
    assert "additional results" in r.headers["Warning"] and r.headers["Warning"].startswith("299 ")
    assert len(client.get(f"/dicom-web/studies/{ct[0].study}/instances", params={"limit": 50}).json()) == 2


def test_unsupported_parameters_are_ignored_with_a_warning(client, ct):
    r = client.get("/dicom-web/studies", params={"NotAKeyword": "x", "fuzzymatching": "true"})
    assert r.status_code == 200 and len(r.json()) == 1
    assert "NotAKeyword" in r.headers["Warning"]
    # A DICOM attribute we cannot match is ignored, reported, and returned as requested if we know it.
    r = client.get(f"/dicom-web/studies/{ct[0].study}/series", params={"SeriesDescription": "Axial*",
                                                                      "ProtocolName": "x"})
    assert r.status_code == 200 and len(r.json()) == 1
    assert "ProtocolName" in r.headers["Warning"]


def test_invalid_values_are_400(client, ct):
    for params in ({"StudyDate": "2024-13"}, {"StudyDate": "yesterday"}, {"PatientID": ["a", "b"]}):
        r = client.get("/dicom-web/studies", params=params)
        assert r.status_code == 400, params
        assert r.json()["detail"]


def test_accept(client, ct):
    assert client.get("/dicom-web/studies", headers={"Accept": "application/json"}).headers[
        "content-type"] == "application/json"
    assert client.get("/dicom-web/studies", headers={"Accept": "*/*"}).status_code == 200
    for accept in ('multipart/related; type="application/dicom+xml"', "application/dicom+xml", "text/html",
                   "application/dicom+json;q=0"):
        assert client.get("/dicom-web/studies", headers={"Accept": accept}).status_code == 406, accept
    assert client.get("/dicom-web/studies", headers={"Accept": "application/json; q=abc"}).status_code == 400


def test_unknown_parent_is_404(client, ct):
    assert client.get(f"/dicom-web/studies/{generate_uid()}/series").status_code == 404
    assert client.get(f"/dicom-web/studies/{generate_uid()}/instances").status_code == 404
    assert client.get(f"/dicom-web/studies/{ct[0].study}/series/{generate_uid()}/instances").status_code == 404
    # An existing parent with no match below it is an empty result.
    r = client.get(f"/dicom-web/studies/{ct[0].study}/series", params={"Modality": "MR"})
    assert r.status_code == 200 and r.json() == []


def test_specific_character_set_and_compressed_objects_are_searchable(client, ctx, site):
    stored = put(ctx, site.id, sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    rows = client.get("/dicom-web/instances", params={"SOPInstanceUID": stored.sop, "includefield": "00083002"})
    assert value(rows.json()[0], "00083002") == "1.2.840.10008.1.2.4.50"


def test_other_site_data_never_counts(client, ctx, other_site, ct):
    for data in ct_series(("Doe^John", "P1", "19700101", "M"), ct[0].study, "ACC1", slices=2, size=16):
        put(ctx, other_site.id, data)
    row = client.get("/dicom-web/studies").json()[0]
    assert value(row, "00201208") == 3


def test_index_bound_searches_run_on_the_event_loop_and_the_rest_in_the_thread_pool(client, ctx, ct, monkeypatch):
    """adapters/http/offload: only searches bounded by an index lookup may hold the event loop."""
    seen: list[bool] = []
    real = qido._search

    def spy(*args, **kwargs):
        seen.append(ctx.db.on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(qido, "_search", spy)
    study, series, sop = ct[0].study, ct[0].series, ct[0].sop
    cases = [
        ("/dicom-web/studies", {"PatientID": "P1"}, True),
        ("/dicom-web/studies", {"00100020": "P1"}, True),
        ("/dicom-web/studies", {"StudyInstanceUID": study}, True),
        ("/dicom-web/studies", {"AccessionNumber": "ACC1"}, True),
        ("/dicom-web/series", {"SeriesInstanceUID": series}, True),
        (f"/dicom-web/studies/{study}/series", {}, True),
        ("/dicom-web/instances", {"SOPInstanceUID": sop}, True),
        ("/dicom-web/studies", {"PatientID": "P*"}, False),  # wildcard: may scan
        ("/dicom-web/studies", {"PatientName": "Doe^John"}, False),  # not an indexed key
        ("/dicom-web/studies", {"patientid": "P1"}, False),  # not a keyword (ignored): a search of everything
        ("/dicom-web/studies", {}, False),
        ("/dicom-web/instances", {"PatientID": "P1"}, False),  # all of a patient's instances
        (f"/dicom-web/studies/{study}/instances", {}, False),  # a whole study
        (f"/dicom-web/studies/{study}/series/{series}/instances", {}, False),
    ]
    for path, params, inline in cases:
        seen.clear()
        r = client.get(path, params=params)
        assert r.status_code == 200 and r.json(), (path, params)
        assert seen == [inline], (path, params)
