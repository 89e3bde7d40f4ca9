"""Rendered and thumbnail resources (PS3.18 10.4, 8.3.5.1) and WADO-URI (PS3.18 9)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dicomweb_support import mr_like, put, read, sample_file
from PIL import Image
from pydicom.uid import JPEG2000Lossless, generate_uid


def image(r) -> Image.Image:
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img


def test_rendered_jpeg_default_and_png(client, ct):
    r = client.get(ct[0].path + "/rendered")
    assert r.headers["content-type"] == "image/jpeg"
    jpeg = image(r)
    assert jpeg.format == "JPEG" and jpeg.size == (32, 32) and jpeg.mode == "L"
    png = image(client.get(ct[0].path + "/rendered", headers={"Accept": "image/png"}))
    assert png.format == "PNG" and png.size == (32, 32)
    assert image(client.get(ct[0].path + "/rendered?accept=image/png")).format == "PNG"
    assert image(client.get(ct[0].path + "/rendered", headers={"Accept": "image/*"})).format == "JPEG"


def test_default_window_is_the_instances_own(client, ct):
    # CT phantom: air -1000 HU, water 20, bone 700/900; the instance's window is 40/400 (soft tissue).
    px = np.asarray(image(client.get(ct[1].path + "/rendered", headers={"Accept": "image/png"})))
    assert px[0, 0] == 0  # air below the window
    assert 100 < px[16, 16] < 160  # water, about 20 HU, near the middle of 40/400
    assert px[16, 9] == 255 or px[16, 22] == 255  # bone rods above the window


def test_window_parameter_changes_pixels(client, ct):
    url = ct[1].path + "/rendered"
    png = {"Accept": "image/png"}
    default = np.asarray(image(client.get(url, headers=png)))
    wide = np.asarray(image(client.get(url, params={"window": "0,4000,linear"}, headers=png)))
    assert not np.array_equal(default, wide)
    assert wide[0, 0] > 0 and wide[16, 16] < default[16, 16] + 40  # air now visible
    sig = np.asarray(image(client.get(url, params={"window": "20,100,sigmoid"}, headers=png)))
    assert 120 <= sig[16, 16] <= 135  # sigmoid at the center is half of 255
    exact = np.asarray(image(client.get(url, params={"window": "-1000,1,linear-exact"}, headers=png)))
    assert exact[16, 16] == 255 and exact[0, 0] in (127, 128)


@pytest.mark.parametrize("params", [{"window": "40"}, {"window": "a,b,linear"}, {"window": "40,0,linear"},
                                    {"window": "40,400,cubic"}, {"quality": "0"}, {"quality": "x"},
                                    {"viewport": "0,10"}, {"viewport": "10"}, {"viewport": "10,10,-1,0,5,5"},
                                    {"window": "nan,400"}, {"window": "40,inf"}])
def test_invalid_rendering_parameters_are_400(client, ct, params):
    r = client.get(ct[0].path + "/rendered", params=params)
    assert r.status_code == 400, params


def test_unsupported_media_type_is_406(client, ct):
    for accept in ("image/gif", "application/dicom", 'multipart/related; type="image/jpeg"'):
        assert client.get(ct[0].path + "/rendered", headers={"Accept": accept}).status_code == 406


def test_viewport_quality_and_thumbnail(client, ctx, site):
    inst = put(ctx, site.id, sample_file("JPGExtended.dcm"))  # 1024 rows x 256 columns
    assert image(client.get(inst.path + "/rendered")).size == (256, 1024)
    assert image(client.get(inst.path + "/rendered", params={"viewport": "100,100"})).size == (25, 100)
    assert image(client.get(inst.path + "/rendered", params={"viewport": "64,64,0,0,128,128"})).size == (64, 64)
    thumb = image(client.get(inst.path + "/thumbnail"))
    assert max(thumb.size) == 128 and thumb.size == (32, 128)
    low = client.get(inst.path + "/rendered", params={"quality": "5"})
    high = client.get(inst.path + "/rendered", params={"quality": "100"})
    assert len(low.content) < len(high.content)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "SC_rgb_rle_2frame.dcm", "examples_jpeg2k.dcm"])
def test_color_sources_render_as_rgb(client, ctx, site, name):
    data = sample_file(name)
    inst = put(ctx, site.id, data)
    ds = read(data)
    rendered = np.asarray(image(client.get(inst.path + "/rendered", headers={"Accept": "image/png"})))
    assert rendered.shape == (ds.Rows, ds.Columns, 3)
    expected = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1)) > 1 else ds.pixel_array
    assert np.abs(rendered.astype(int) - expected.astype(int)).mean() < 2  # same RGB (PNG is lossless)


def test_compressed_grayscale_and_frames(client, ctx, site):
    data = mr_like(frames=3, size=32, transfer_syntax=JPEG2000Lossless)
    inst = put(ctx, site.id, data)
    fixed = "accept=image/png&window=1000,2000,linear"  # frames differ by an offset of 100 per frame
    first = np.asarray(image(client.get(inst.path + "/frames/1/rendered?" + fixed)))
    third = np.asarray(image(client.get(inst.path + "/frames/3/rendered?" + fixed)))
    assert first.shape == (32, 32) and (third.astype(int) - first.astype(int)).mean() > 20
    assert np.array_equal(first, np.asarray(image(client.get(inst.path + "/rendered?" + fixed))))
    assert image(client.get(inst.path + "/frames/2/thumbnail")).size == (128, 128)
    assert client.get(inst.path + "/frames/4/rendered").status_code == 404
    assert client.get(inst.path + "/frames/1,2/rendered").status_code == 400
    rle = put(ctx, site.id, sample_file("MR_small_RLE.dcm"))
    assert image(client.get(rle.path + "/rendered")).size == (64, 64)


def test_monochrome1_is_inverted(client, ctx, site):
    m2 = put(ctx, site.id, mr_like(frames=1, size=32))
    m1 = put(ctx, site.id, mr_like(frames=1, size=32, photometric="MONOCHROME1"))
    a = np.asarray(image(client.get(m2.path + "/rendered?accept=image/png"))).astype(int)
    b = np.asarray(image(client.get(m1.path + "/rendered?accept=image/png"))).astype(int)
    assert np.array_equal(a, 255 - b) and a.std() > 10


def test_palette_color(client, ctx, site):
    inst = put(ctx, site.id, sample_file("examples_palette.dcm"))
    img = image(client.get(inst.path + "/rendered?accept=image/png"))
    assert img.mode == "RGB" and img.size == (800, 350)


def test_non_image_cannot_be_rendered(client, ctx, site):
    sr = put(ctx, site.id, sample_file("test-SR.dcm"))
    r = client.get(sr.path + "/rendered")
    assert r.status_code == 406 and "no pixel data" in r.json()["detail"]


def test_study_and_series_thumbnails(client, ct):
    for url in (f"/dicom-web/studies/{ct[0].study}/thumbnail",
                f"/dicom-web/studies/{ct[0].study}/series/{ct[0].series}/thumbnail"):
        assert image(client.get(url)).size == (128, 128)


# --- WADO-URI (PS3.18 9) -------------------------------------------------------------------------------

def _wado(inst, **params: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": inst.study, "seriesUID": inst.series, "objectUID": inst.sop,
            **params}


def test_wado_uri_dicom(client, ct, jpeg):
    r = client.get("/wado", params=_wado(ct[0], contentType="application/dicom"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert r.content[128:] == ct[0].data[128:]
    ok = client.get("/wado", params=_wado(jpeg, contentType="application/dicom",
                                          transferSyntax="1.2.840.10008.1.2.4.50"))
    assert ok.status_code == 200
    assert client.get("/wado", params=_wado(jpeg, contentType="application/dicom",
                                            transferSyntax="1.2.840.10008.1.2.1")).status_code == 406


def test_wado_uri_rendered(client, ct):
    jpeg = image(client.get("/wado", params=_wado(ct[1])))
    assert jpeg.format == "JPEG" and jpeg.size == (32, 32)
    png = client.get("/wado", params=_wado(ct[1], contentType="image/png", windowCenter="0", windowWidth="4000"))
    wide = np.asarray(image(png))
    narrow = np.asarray(image(client.get("/wado", params=_wado(ct[1], contentType="image/png"))))
    assert not np.array_equal(wide, narrow)
    assert image(client.get("/wado", params=_wado(ct[1], rows="16"))).size == (16, 16)
    assert image(client.get("/wado", params=_wado(ct[1], contentType="image/jpeg", imageQuality="50",
                                                   frameNumber="1"))).format == "JPEG"


def test_wado_uri_non_image_defaults_to_dicom(client, ctx, site):
    sr = put(ctx, site.id, sample_file("test-SR.dcm"))
    r = client.get("/wado", params=_wado(sr))
    assert r.headers["content-type"] == "application/dicom"


def test_wado_uri_accept_header_when_no_content_type(client, ct):
    browser = "text/html,application/xhtml+xml,image/avif,image/webp,*/*;q=0.8"
    assert client.get("/wado", params=_wado(ct[0]), headers={"Accept": browser}).headers["content-type"] \
        == "image/jpeg"
    assert client.get("/wado", params=_wado(ct[0]), headers={"Accept": "application/dicom"}).content[128:] \
        == ct[0].data[128:]
    assert client.get("/wado", params=_wado(ct[0]), headers={"Accept": "text/html"}).status_code == 406
    # contentType wins over Accept.
    r = client.get("/wado", params=_wado(ct[0], contentType="image/png"), headers={"Accept": "application/dicom"})
    assert r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("change", [{"requestType": "WADO2"}, {"studyUID": ""}, {"objectUID": ""},
                                    {"windowCenter": "40"}, {"imageQuality": "101"}, {"anonymize": "yes"},
                                    {"rows": "abc"}])
def test_wado_uri_bad_requests(client, ct, change):
    params = {k: v for k, v in {**_wado(ct[0]), **change}.items() if v != ""}
    assert client.get("/wado", params=params).status_code == 400


def test_wado_uri_errors(client, ct):
    assert client.get("/wado", params=_wado(ct[0], contentType="video/mpeg")).status_code == 406
    params = {**_wado(ct[0]), "objectUID": generate_uid()}
    assert client.get("/wado", params=params).status_code == 404
    assert client.get("/wado", params=_wado(ct[0], frameNumber="2")).status_code == 404
