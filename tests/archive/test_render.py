"""The render service: PS3.3 C.11 grayscale pipeline, color handling, viewport fitting, encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dicomweb_support import mr_like, put, read, sample_file
from PIL import Image
from pydicom.dataset import Dataset

from telerad.archive import render, retrieve
from telerad.archive.render import RenderError, RenderOptions, Viewport, Window


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 12, 0, 1
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_linear_window_follows_ps33_c11_2_1_2():
    x = np.array([0.0, 49.5, 50.0, 150.5, 151.0, 300.0])
    y = render.apply_window(x, Window(100, 101))  # c - 0.5 - (w-1)/2 = 49.5, c - 0.5 + (w-1)/2 = 149.5
    assert y[0] == 0 and y[1] == 0 and y[-1] == 255 and y[-2] == 255
    assert y[2] == round(((50 - 99.5) / 100 + 0.5) * 255)
    exact = render.apply_window(np.array([50.0, 100.0, 150.0]), Window(100, 100, "linear-exact"))
    assert list(exact) == [0, 128, 255]
    sig = render.apply_window(np.array([100.0, -1e6, 1e6]), Window(100, 50, "sigmoid"))
    assert list(sig) == [128, 0, 255]


def test_modality_lut_then_own_window():
    raw = np.array([[0, 1024, 2048]], dtype=np.uint16)
    ds = _ds(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2)
    out = render.to_display(raw, ds, None)
    assert list(out[0]) == [0, 255, 255]
    assert render.to_display(raw, ds, Window(0, 4000))[0, 1] == 128


def test_multi_valued_window_and_no_window():
    raw = np.array([[10, 20, 30]], dtype=np.uint16)
    ds = _ds(WindowCenter=[20.5, 100], WindowWidth=[21, 50])  # the first pair applies
    assert list(render.to_display(raw, ds, None)[0]) == [0, 128, 255]
    assert list(render.to_display(raw, _ds(), None)[0]) == [0, 128, 255]  # full range when nothing is given
    assert list(render.to_display(np.full((1, 3), 7, np.uint16), _ds(), None)[0]) == [0, 0, 0]


def test_monochrome1_inverts():
    raw = np.array([[10, 20, 30]], dtype=np.uint16)
    assert list(render.to_display(raw, _ds(PhotometricInterpretation="MONOCHROME1"), None)[0]) == [255, 127, 0]


def test_rgb_16_bit_scaled_to_8():
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[0, 0] = (65535, 256, 0)
    out = render.to_display(rgb, _ds(PhotometricInterpretation="RGB", BitsStored=16, SamplesPerPixel=3), None)
    assert out.dtype == np.uint8 and tuple(out[0, 0]) == (255, 1, 0)


def test_fit():
    assert render.fit(256, 1024, 100, 100) == (25, 100)
    assert render.fit(100, 100, 128, 128) == (128, 128)
    assert render.fit(1000, 1, 10, 10) == (10, 1)


def test_encode_jpeg_png_and_viewport():
    img = (np.arange(64 * 32).reshape(32, 64) % 256).astype(np.uint8)
    png = Image.open(io.BytesIO(render.encode(img, RenderOptions(media_type=render.PNG))))
    assert png.size == (64, 32) and np.array_equal(np.asarray(png), img)
    jpg = Image.open(io.BytesIO(render.encode(img, RenderOptions(viewport=Viewport(32, 32)))))
    assert jpg.format == "JPEG" and jpg.size == (32, 16)
    crop = Image.open(io.BytesIO(render.encode(img, RenderOptions(render.PNG, viewport=Viewport(8, 8, (4, 4, 8, 8))))))
    assert np.array_equal(np.asarray(crop), img[4:12, 4:12])


def test_render_stored_instances(ctx, site):
    s = put(ctx, site.id, sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    out = np.asarray(Image.open(io.BytesIO(render.render(ctx, inst, 1, RenderOptions(render.PNG)))))
    assert out.shape == (100, 100, 3)
    assert np.abs(out.astype(int) - read(s.data).pixel_array.astype(int)).max() <= 1
    m = put(ctx, site.id, mr_like(frames=2, size=16))
    inst = retrieve.get_instance(ctx, site.id, m.study, m.series, m.sop)
    with pytest.raises(RenderError):
        render.render(ctx, inst, 3, RenderOptions())


def test_deflated_source_renders(ctx, site):
    s = put(ctx, site.id, sample_file("image_dfl.dcm"))
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    img = Image.open(io.BytesIO(render.render(ctx, inst, 1, RenderOptions(render.PNG))))
    assert img.size == (512, 512)


def test_undecodable_pixels_raise_render_error(ctx, site):
    s = put(ctx, site.id, sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    path = ctx.blobs.path(inst.blob_key)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xd8")
    data[start + 2:start + 400] = b"\x00" * 398  # wreck the JPEG headers
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(RenderError):
        render.render(ctx, inst, 1, RenderOptions())
