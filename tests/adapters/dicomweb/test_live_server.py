"""End to end: a real uvicorn server on 127.0.0.1 driven by dicomweb-client (a third-party DICOMweb client)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import requests
from auth_support import add_user, bearer
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import Stored, boundary_of, mr_like, read, sample_file, split_multipart, zero_preamble
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, generate_uid
from support import uvicorn_thread

from telerad.adapters.http.sendfile import SendfileProtocol
from telerad.app import create_app
from telerad.archive.demo import ct_series
from telerad.context import Context


@pytest.fixture
def server(ctx: Context, site, other_site) -> Iterator[str]:
    # The protocol `telerad serve` uses: WADO-RS instances go out through sendfile(2).
    with uvicorn_thread(create_app(ctx), http=SendfileProtocol) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def auth(ctx: Context, site, other_site) -> dict[str, dict[str, str]]:
    """Bearer tokens of one integration user, one per site (a token is bound to one site)."""
    add_user(ctx, "integration", ["site_staff"], ["GH", "RC"])
    return {code: bearer(ctx, "integration", code) for code in ("GH", "RC")}


def _sent(ds: pydicom.Dataset) -> bytes:
    """The bytes dicomweb-client puts on the wire for ``ds`` (it encodes with pydicom.dcmwrite)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


def test_dicomweb_client_round_trip(server, auth):
    web = DICOMwebClient(f"{server}/dicom-web", headers=auth["GH"])
    study = generate_uid()
    ct = [read(b) for b in ct_series(("Live^Test", "LIVE1", "19600101", "O"), study, "LV1", slices=2, size=32)]
    files = {name: read(sample_file(name)) for name in ("SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm",
                                                        "MR_small_RLE.dcm", "examples_ybr_color.dcm")}
    files["mf_j2k"] = read(mr_like(frames=3, size=32, transfer_syntax=JPEG2000Lossless))
    everything = ct + list(files.values())
    # What goes on the wire, taken before anything touches the datasets (pydicom re-encodes some values,
    # e.g. a padded empty string, once an element has been parsed).
    wire = {ds.SOPInstanceUID: _sent(ds) for ds in everything}

    # STOW-RS
    result = web.store_instances(ct, study_instance_uid=study)
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [d.SOPInstanceUID for d in ct]
    assert "FailedSOPSequence" not in result
    result = web.store_instances(list(files.values()))
    assert len(result.ReferencedSOPSequence) == len(files)

    # QIDO-RS
    studies = web.search_for_studies(search_filters={"PatientID": "LIVE1"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    series = web.search_for_series(study)
    assert [s["0020000E"]["Value"][0] for s in series] == [ct[0].SeriesInstanceUID]
    instances = web.search_for_instances(study, ct[0].SeriesInstanceUID, fields=["SOPClassUID"])
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(d.SOPInstanceUID for d in ct)
    assert len(web.search_for_instances(get_remaining=True)) == len(everything)

    # WADO-RS instances: the same dataset, and byte for byte what was sent (preamble zeroed)
    for ds in everything:
        got = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
        assert got == ds
        url = f"{server}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/" \
              f"{ds.SOPInstanceUID}"
        raw = requests.get(url, headers=auth["GH"], timeout=30)
        (_, content), = split_multipart(raw.headers["content-type"], raw.content)
        assert content == zero_preamble(wire[ds.SOPInstanceUID])
        uri = requests.get(f"{server}/wado", headers=auth["GH"], timeout=30, params={
            "requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"})
        assert uri.status_code == 200 and uri.content == content

    # WADO-RS study: every instance byte for byte in one multipart response, and through dicomweb-client
    raw = requests.get(f"{server}/dicom-web/studies/{study}", headers=auth["GH"], timeout=30)
    assert int(raw.headers["content-length"]) == len(raw.content)
    parts = split_multipart(raw.headers["content-type"], raw.content)
    assert sorted(c for _, c in parts) == sorted(zero_preamble(wire[d.SOPInstanceUID]) for d in ct)
    assert sorted(d.SOPInstanceUID for d in web.retrieve_study(study)) == sorted(d.SOPInstanceUID for d in ct)

    # WADO-RS metadata
    meta = web.retrieve_study_metadata(study)
    assert sorted(m["00080018"]["Value"][0] for m in meta) == sorted(d.SOPInstanceUID for d in ct)
    # dicomweb-client sends "Host: 127.0.0.1" without the port (RFC 9110 7.2 wants it), so URLs built from
    # its requests lack the port; a client sending a proper Host header gets URLs that work as they are.
    proper = requests.get(f"{server}/dicom-web/studies/{study}/metadata", headers=auth["GH"],
                          timeout=30).json()
    assert all(m["7FE00010"]["BulkDataURI"].startswith(f"{server}/dicom-web/studies/{study}/") for m in proper)
    pixels = web.retrieve_bulkdata(proper[0]["7FE00010"]["BulkDataURI"])
    by_uid = {d.SOPInstanceUID: d for d in ct}
    assert pixels[0] == by_uid[proper[0]["00080018"]["Value"][0]].PixelData

    # WADO-RS frames: native, then compressed in their own transfer syntax
    d = ct[0]
    native = web.retrieve_instance_frames(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, [1],
                                          media_types=("application/octet-stream",))
    assert native == [d.PixelData]
    for name, ds in files.items():
        n = int(ds.get("NumberOfFrames", 1))
        expected = list(generate_frames(ds.PixelData, number_of_frames=n))
        wanted = [n, 1] if n > 1 else [1]
        frames = web.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                              wanted)
        assert frames == [expected[i - 1] for i in wanted], name
    jpeg = files["SC_rgb_jpeg_dcmtk.dcm"]
    frames = web.retrieve_instance_frames(jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID,
                                          [1], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert frames[0][:2] == b"\xff\xd8"

    # Rendered
    png = web.retrieve_instance_rendered(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID,
                                         media_types=("image/png",))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (32, 32) and np.asarray(img).std() > 0
    jpg = web.retrieve_instance_rendered(jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID,
                                         params={"quality": 80})
    assert Image.open(io.BytesIO(jpg)).mode == "RGB"


def test_other_site_and_errors_over_http(server, auth):
    gh = DICOMwebClient(f"{server}/dicom-web", headers=auth["GH"])
    rc = DICOMwebClient(f"{server}/dicom-web", headers=auth["RC"])
    ds = read(mr_like(frames=2, size=32))
    wire = _sent(ds)
    gh.store_instances([ds])
    assert rc.search_for_studies() == []
    with pytest.raises(requests.HTTPError) as err:
        rc.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert err.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as err:
        gh.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [3])
    assert err.value.response.status_code == 404
    # A streamed multi-instance response over a real socket: chunked parts, all of them complete.
    r = requests.get(f"{server}/dicom-web/studies/{ds.StudyInstanceUID}", headers=auth["GH"],
                     stream=True, timeout=30)
    body = b"".join(r.iter_content(65536))
    assert boundary_of(r.headers["content-type"]) and split_multipart(r.headers["content-type"], body)[0][1] \
        == zero_preamble(wire)
    health = requests.get(f"{server}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_a_study_read_ahead_is_sent_from_its_mappings(ctx: Context, server, auth, site, monkeypatch) -> None:
    """Once the read-ahead has mapped a study's blobs, a whole-study retrieve to this loopback client is written
    from the mappings (storage/mappings.py): with the files made unopenable the body is still every stored file,
    byte for byte, in the order of the series."""
    from dicomweb_support import put

    from telerad.archive import retrieve

    stored = [put(ctx, site.id, b) for b in ct_series(("Map^Test", "MAP1", "19600101", "O"), generate_uid(),
                                                      "MP1", slices=4, size=64)]
    study = stored[0].study
    keys = [i.blob_key for i in retrieve.find_instances(ctx, site.id, study)]
    for key in keys:
        ctx.blobs.populate(key)
    assert all(ctx.blobs.mapped(k) is not None for k in keys)

    def no_open(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a mapped blob was opened")

    monkeypatch.setattr(ctx.blobs, "open", no_open)
    r = requests.get(f"{server}/dicom-web/studies/{study}", timeout=30,
                     headers={**auth["GH"], "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200, r.text[:300]
    parts = split_multipart(r.headers["content-type"], r.content)
    assert [content for _, content in parts] == [zero_preamble(s.data) for s in stored]


def test_frames_of_a_mapped_blob_are_sent_from_the_mapping(ctx: Context, server, auth, site, monkeypatch,
                                                           tmp_path) -> None:
    """Once the read-ahead has mapped a blob, its frames are slices of the mapping handed to the server as they
    are (retrieve.frames): with the file made unopenable, the route (a token's first use) and the frames
    shortcut (the uses after it) both answer every frame byte for byte, a 128 KB frame sent as its own piece."""
    from dicomweb_support import put

    from telerad.archive import retrieve

    s = put(ctx, site.id, mr_like(frames=3, size=256))
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    ctx.blobs.populate(inst.blob_key)
    assert ctx.blobs.mapped(inst.blob_key) is not None

    def no_open(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a mapped blob was opened")

    monkeypatch.setattr(ctx.blobs, "open", no_open)
    px = read(s.data).PixelData
    frame = 256 * 256 * 2
    expected = [px[2 * frame:3 * frame], px[:frame]]
    _get_frames(server, s, auth["GH"], expected, verify=True)
    # Over TLS the server encrypts from the same slices.
    from pki_support import make_ca, make_leaf

    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_leaf(pki, "server", "ca", "serverAuth")
    with uvicorn_thread(create_app(ctx), http=SendfileProtocol, ssl_certfile=str(pki / "server.crt"),
                        ssl_keyfile=str(pki / "server.key")) as port:
        _get_frames(f"https://127.0.0.1:{port}", s, auth["GH"], expected, verify=str(pki / "ca.crt"))


def _get_frames(base: str, s: Stored, auth: dict[str, str], expected: list[bytes], verify: bool | str) -> None:
    with requests.Session() as http:
        for _ in range(3):  # the first a token's first use (the route), then the frames shortcut
            r = http.get(f"{base}/dicom-web/studies/{s.study}/series/{s.series}/instances/{s.sop}/frames/3,1",
                         timeout=30, verify=verify,
                         headers={**auth, "Accept": 'multipart/related; type="application/octet-stream"'})
            assert r.status_code == 200, r.text[:300]
            assert [content for _, content in split_multipart(r.headers["content-type"], r.content)] == expected
            assert int(r.headers["content-length"]) == len(r.content)
