"""Tenancy: the site is resolved once per request from the caller's memberships and X-Telerad-Site; another
site's UIDs are 404 on every endpoint, exactly like UIDs that exist nowhere (no existence leak)."""

from __future__ import annotations

import pytest
from dicomweb_support import OTHER, SITE, Stored, multipart_body, read
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from telerad.adapters.dicomweb import deps

# Every GET endpoint addressing a study, series or instance; {s} {se} {i} are filled from a GH instance.
RESOURCE_ENDPOINTS = [
    "/dicom-web/studies/{s}",
    "/dicom-web/studies/{s}/series/{se}",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}",
    "/dicom-web/studies/{s}/metadata",
    "/dicom-web/studies/{s}/series/{se}/metadata",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/metadata",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/bulk/7FE00010",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/rendered",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1/rendered",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/thumbnail",
    "/dicom-web/studies/{s}/series/{se}/instances/{i}/frames/1/thumbnail",
    "/dicom-web/studies/{s}/series/{se}/thumbnail",
    "/dicom-web/studies/{s}/thumbnail",
    "/dicom-web/studies/{s}/series",
    "/dicom-web/studies/{s}/instances",
    "/dicom-web/studies/{s}/series/{se}/instances",
    "/wado?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}&contentType=application/dicom",
    "/wado?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}",
]


def _url(template: str, inst: Stored) -> str:
    return template.format(s=inst.study, se=inst.series, i=inst.sop)


@pytest.mark.parametrize("template", RESOURCE_ENDPOINTS)
def test_other_sites_uids_are_not_found(client, ct, template):
    url = _url(template, ct[0])
    assert client.get(url, headers=SITE).status_code == 200, "the owner can read it"
    foreign = client.get(url, headers=OTHER)
    assert foreign.status_code == 404
    # ...and the answer is the same as for UIDs that exist nowhere.
    ghost = Stored(generate_uid(), generate_uid(), generate_uid(), b"")
    nowhere = client.get(_url(template, ghost), headers=OTHER)
    assert nowhere.status_code == 404
    assert _anonymous(foreign.json()["detail"], ct[0]) == _anonymous(nowhere.json()["detail"], ghost)


def _anonymous(message: str, inst: Stored) -> str:
    return message.replace(inst.sop, "I").replace(inst.series, "SE").replace(inst.study, "S")


@pytest.mark.parametrize("template", RESOURCE_ENDPOINTS)
def test_every_endpoint_requires_a_site(client, ct, template):
    url = _url(template, ct[0])
    missing = client.get(url, headers={deps.SITE_HEADER: ""})
    assert missing.status_code == 400
    assert "site" in missing.json()["detail"]
    unknown = client.get(url, headers={deps.SITE_HEADER: "NOPE"})
    assert unknown.status_code == 404
    assert "unknown site" in unknown.json()["detail"]


def test_wado_uri_takes_the_site_from_the_query(client, ct):
    url = _url(RESOURCE_ENDPOINTS[-2], ct[0])
    assert client.get(url + "&site=GH", headers={deps.SITE_HEADER: ""}).status_code == 200
    assert client.get(url + "&site=RC", headers={deps.SITE_HEADER: ""}).status_code == 404
    # DICOMweb proper ignores the query parameter: only the header names the site.
    assert client.get(f"/dicom-web/studies/{ct[0].study}/metadata?site=GH",
                      headers={deps.SITE_HEADER: ""}).status_code == 400


@pytest.mark.parametrize("path", ["/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"])
def test_search_sees_only_the_own_site(client, ct, path):
    assert client.get(path, headers=SITE).json(), "GH sees its data"
    assert client.get(path, headers=OTHER).json() == []
    by_uid = client.get(path, params={"StudyInstanceUID": ct[0].study}, headers=OTHER)
    assert by_uid.status_code == 200 and by_uid.json() == []


def test_store_is_scoped_to_the_site(client, ct):
    # RC sends an object under GH's SOP Instance UID with different content: for RC it is simply new
    # (stored, not a conflict that would reveal GH's instance), and GH's copy is untouched.
    ds = read(ct[0].data)
    ds.PatientName = "Clinic^Patient"
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body, ctype = multipart_body([buf.getvalue()])
    r = client.post("/dicom-web/studies", content=body, headers={**OTHER, "Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert "00081198" not in r.json()
    mine = client.get(ct[0].path + "/metadata", headers=SITE).json()[0]
    theirs = client.get(ct[0].path + "/metadata", headers=OTHER).json()[0]
    assert mine["00100010"]["Value"][0]["Alphabetic"] == "Doe^John"
    assert theirs["00100010"]["Value"][0]["Alphabetic"] == "Clinic^Patient"
    # STOW into a study URL of the other site only ever touches the caller's own namespace.
    r = client.post(f"/dicom-web/studies/{ct[0].study}", content=body, headers={**OTHER, "Content-Type": ctype})
    assert r.status_code == 200  # same bytes again for RC: a duplicate, success
    assert len(client.get(f"/dicom-web/studies/{ct[0].study}/instances", headers=SITE).json()) == 3
    assert len(client.get(f"/dicom-web/studies/{ct[0].study}/instances", headers=OTHER).json()) == 1


def test_caller_and_site_resolved_once_per_request(client, ct, monkeypatch):
    from telerad.adapters.http import auth

    sites, callers = [], []
    real_resolve, real_auth = auth.resolve_site, auth._authenticate

    def counting_resolve(db, principal, perm, code, known=None):
        sites.append(code)
        return real_resolve(db, principal, perm, code, known)

    def counting_auth(ctx, request):
        callers.append(request.url.path)
        return real_auth(ctx, request)

    monkeypatch.setattr(auth, "resolve_site", counting_resolve)
    monkeypatch.setattr(auth, "_authenticate", counting_auth)
    assert client.get(ct[0].path + "/rendered").status_code == 200
    assert sites == ["GH"]
    assert callers == [ct[0].path + "/rendered"]
