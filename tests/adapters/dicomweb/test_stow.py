"""STOW-RS (PS3.18 10.5): multipart parsing, ingest outcomes in the response module, status codes."""

from __future__ import annotations

import pytest
from dicomweb_support import SITE, mr_like, multipart_body, read, sample_file, zero_preamble
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series

POST = "/dicom-web/studies"


def _post(client, parts, url=POST, **kw):
    body, ctype = multipart_body(parts, **kw)
    return client.post(url, content=body, headers={"Content-Type": ctype})


def _seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def _uids(items: list[dict]) -> list[str]:
    return [i["00081155"]["Value"][0] for i in items]


def _modified(data: bytes, **attrs: object) -> bytes:
    ds = read(data)
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_store_all_ok(client):
    study = generate_uid()
    blobs = ct_series(("Stow^Pat", "S1", "19900101", "F"), study, "STOW1", slices=3, size=16)
    r = _post(client, blobs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert body["00081190"]["Value"] == [f"http://testserver/dicom-web/studies/{study}"]
    refs = _seq(body, "00081199")
    assert _uids(refs) == [read(b).SOPInstanceUID for b in blobs]
    assert "00081198" not in body
    for ref, data in zip(refs, blobs, strict=True):
        url = ref["00081190"]["Value"][0]
        got = client.get(url, headers={"Accept": "application/dicom"})
        assert got.content == zero_preamble(data)
        assert ref["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]


def test_partial_failure_is_202_and_conflict_is_0111(client):
    first = ct_series(("A^B", "S2", "", ""), generate_uid(), "X", slices=1, size=16)[0]
    assert _post(client, [first]).status_code == 200
    changed = _modified(first, PatientName="Changed^Name")
    fresh = mr_like(frames=1, size=16)
    r = _post(client, [changed, fresh, first])
    assert r.status_code == 202
    body = r.json()
    failed = _seq(body, "00081198")
    assert _uids(failed) == [read(first).SOPInstanceUID]
    assert failed[0]["00081197"]["Value"] == [0x0111]
    assert _uids(_seq(body, "00081199")) == [read(fresh).SOPInstanceUID, read(first).SOPInstanceUID]


def test_nothing_stored_is_409(client):
    garbage = b"\x00" * 300
    no_study = _modified(mr_like(1, 16), StudyInstanceUID="")
    r = _post(client, [garbage, no_study])
    assert r.status_code == 409
    failed = _seq(r.json(), "00081198")
    assert [f["00081197"]["Value"][0] for f in failed] == [0xC000, 0xC000]
    assert failed[1]["00081155"]["Value"] == [read(no_study).SOPInstanceUID]
    assert "Value" not in failed[0]["00081155"], "no UID to report for bytes that are not DICOM"
    assert "00081199" not in r.json()


def test_study_url_rejects_other_studies_with_a900(client):
    study = generate_uid()
    mine = ct_series(("A^B", "S3", "", ""), study, "X", slices=1, size=16)[0]
    other = ct_series(("A^B", "S3", "", ""), generate_uid(), "X", slices=1, size=16)[0]
    r = _post(client, [mine, other], url=f"{POST}/{study}")
    assert r.status_code == 202
    failed = _seq(r.json(), "00081198")
    assert _uids(failed) == [read(other).SOPInstanceUID]
    assert failed[0]["00081197"]["Value"] == [0xA900]
    assert failed[0]["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert client.get("/dicom-web/studies", params={"StudyInstanceUID": read(other).StudyInstanceUID}).json() == []
    assert _post(client, [other], url=f"{POST}/{study}").status_code == 409


def test_duplicate_is_success(client):
    data = mr_like(1, 16)
    assert _post(client, [data]).status_code == 200
    r = _post(client, [data])
    assert r.status_code == 200 and _uids(_seq(r.json(), "00081199")) == [read(data).SOPInstanceUID]


def test_compressed_and_single_part(client):
    data = sample_file("SC_rgb_jpeg_dcmtk.dcm")
    r = client.post(POST, content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200
    url = _seq(r.json(), "00081199")[0]["00081190"]["Value"][0]
    assert client.get(url, headers={"Accept": "application/dicom"}).content == zero_preamble(data)


def test_part_of_another_type_fails_that_part(client):
    data = mr_like(1, 16)
    body = (b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
            b"--b1\r\nContent-Type: application/dicom+json\r\n\r\n[{}]\r\n--b1--\r\n")
    r = client.post(POST, content=body, headers={"Content-Type": "multipart/related; boundary=b1"})
    assert r.status_code == 202
    assert _seq(r.json(), "00081198")[0]["00081197"]["Value"] == [0xC000]


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None, "multipart/form-data; boundary=x",
                                   'multipart/related; type="application/dicom+json"; boundary=x'])
def test_wrong_content_type_is_415(client, ctype):
    body, _ = multipart_body([mr_like(1, 16)], boundary="x")
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post(POST, content=body, headers=headers)
    assert r.status_code == 415, ctype


@pytest.mark.parametrize("body", [
    b"",  # no parts
    b"garbage without any boundary",
    b"--b1\r\nContent-Type: application/dicom\r\n\r\nDICM....",  # never closed
    b"--b1\r\nContent-Type application/dicom\r\n\r\nxx\r\n--b1--",  # bad header line
    b"--b1--\r\n",  # closing delimiter only: no parts
    b"--b1junk\r\n\r\nxx\r\n--b1--",  # text after the delimiter
])
def test_malformed_multipart_is_400(client, body):
    ctype = 'multipart/related; type="application/dicom"; boundary=b1'
    r = client.post(POST, content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400
    assert "multipart" in r.json()["detail"]


def test_missing_boundary_is_400(client):
    r = client.post(POST, content=b"x", headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 400 and "boundary" in r.json()["detail"]


def test_oversize_is_413_and_stores_nothing(client, ctx):
    blobs = ct_series(("Big^Body", "S9", "", ""), generate_uid(), "X", slices=2, size=32)
    ctx.settings.max_object_bytes = len(blobs[0]) + 500
    r = _post(client, blobs)
    assert r.status_code == 413
    # Chunked upload without Content-Length: counted while reading.
    body, ctype = multipart_body(blobs)
    r = client.post(POST, content=iter([body[:1000], body[1000:]]), headers={"Content-Type": ctype})
    assert r.status_code == 413
    assert client.get("/dicom-web/studies", params={"PatientID": "S9"}).json() == []
    assert _post(client, blobs[:1]).status_code == 200


def test_response_accept(client):
    data = mr_like(1, 16)
    body, ctype = multipart_body([data])
    r = client.post(POST, content=body, headers={"Content-Type": ctype, "Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    r = client.post(POST, content=body, headers={"Content-Type": ctype, "Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_preamble_epilogue_and_quoted_boundary(client):
    data = mr_like(1, 16)
    body = (b"this is a preamble\r\n--a:b c\r\nContent-Type: application/dicom\r\n\r\n" + data
            + b"\r\n--a:b c--\r\nepilogue")
    r = client.post(POST, content=body, headers={**SITE, "Content-Type":
                                                 'multipart/related; type="application/dicom"; boundary="a:b c"'})
    assert r.status_code == 200, r.text
