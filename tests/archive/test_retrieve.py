"""The retrieve service (behind WADO-RS / WADO-URI): site scoping, metadata from stored strings, frames from
the frame index or by parsing, bulk data, chunked file reads."""

from __future__ import annotations

import json
import time

import pytest
from dicomweb_support import mr_like, put, read, sample_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from support import resident_pages, wait_until_resident, written_through_cache

from telerad.archive import retrieve
from telerad.archive.demo import ct_series
from telerad.archive.retrieve import FrameError, NotFound
from telerad.context import Context

ROOT = "https://pacs.example/dicom-web"


@pytest.fixture
def series(ctx, site):
    blobs = ct_series(("Ret^Pat", "R1", "", ""), generate_uid(), "R", slices=3, size=16)
    return [put(ctx, site.id, b) for b in blobs]


def test_find_is_scoped_to_the_site(ctx, site, other_site, series):
    s = series[0]
    found = retrieve.find_instances(ctx, site.id, s.study)
    assert [i.sop_uid for i in found] == [x.sop for x in series]
    assert found[0].size == len(s.data) and found[0].transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert [i.sop_uid for i in retrieve.find_instances(ctx, site.id, s.study, s.series, s.sop)] == [s.sop]
    for args in [(s.study,), (s.study, s.series), (s.study, s.series, s.sop)]:
        with pytest.raises(NotFound):
            retrieve.find_instances(ctx, other_site.id, *args)
    with pytest.raises(NotFound):
        retrieve.get_instance(ctx, other_site.id, s.study, s.series, s.sop)
    with pytest.raises(NotFound):
        retrieve.metadata(ctx, other_site.id, ROOT, s.study)
    with pytest.raises(NotFound):  # the right instance under the wrong study
        retrieve.get_instance(ctx, site.id, generate_uid(), s.series, s.sop)


def test_metadata_is_a_join_of_stored_documents(ctx, site, series, monkeypatch):
    s = series[0]
    text = retrieve.metadata(ctx, site.id, ROOT, s.study)
    docs = json.loads(text)
    assert [d["00080018"]["Value"][0] for d in docs] == [x.sop for x in series]
    assert docs[1]["7FE00010"]["BulkDataURI"] == f"{ROOT}/studies/{s.study}/series/{s.series}/instances/" \
                                                 f"{series[1].sop}/bulk/7FE00010"
    # No file is opened to answer it.
    monkeypatch.setattr(ctx.blobs, "open", lambda *a: pytest.fail("metadata must not read files"))
    monkeypatch.setattr(ctx.blobs, "path", lambda *a: pytest.fail("metadata must not read files"))
    assert json.loads(retrieve.metadata(ctx, site.id, ROOT, s.study, s.series, s.sop))[0] == docs[0]


def test_root_is_json_escaped(ctx, site, series):
    text = retrieve.metadata(ctx, site.id, 'http://h/"x"', series[0].study)
    assert json.loads(text)[0]["7FE00010"]["BulkDataURI"].startswith('http://h/"x"/studies/')


def test_iter_file_chunks(ctx, site):
    big = put(ctx, site.id, mr_like(frames=300, size=64))  # ~2.4 MB
    inst = retrieve.get_instance(ctx, site.id, big.study, big.series, big.sop)
    chunks = list(retrieve.iter_file(ctx, inst))
    assert len(chunks) == 3 and max(len(c) for c in chunks) == 1 << 20
    assert b"".join(chunks)[128:] == big.data[128:]


def test_native_frames_from_the_index(ctx, site):
    data = mr_like(frames=5, size=8)
    s = put(ctx, site.id, data)
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    assert inst.frames_json and inst.number_of_frames == 5
    payload = retrieve.frames(ctx, inst, [5, 2])
    px = read(data).PixelData
    assert payload.parts == [px[4 * 128:5 * 128], px[128:256]]
    assert (payload.media_type, payload.transfer_syntax_uid) == ("application/octet-stream", "1.2.840.10008.1.2.1")
    with pytest.raises(FrameError):
        retrieve.frames(ctx, inst, [6])


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "rtdose_rle.dcm", "JPEG2000.dcm"])
def test_encapsulated_frames(ctx, site, name):
    data = sample_file(name)
    s = put(ctx, site.id, data)
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    ds = read(data)
    n = int(ds.get("NumberOfFrames", 1))
    expected = list(generate_frames(ds.PixelData, number_of_frames=n))
    assert retrieve.frames(ctx, inst, list(range(1, n + 1))).parts == expected


def test_frames_without_an_index_are_parsed(ctx, site):
    data = mr_like(frames=3, size=8)
    s = put(ctx, site.id, data)
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    indexed = retrieve.frames(ctx, inst, [1, 2, 3]).parts
    unindexed = inst._replace(frames_json="")
    assert retrieve.frames(ctx, unindexed, [1, 2, 3]).parts == indexed
    jpeg = put(ctx, site.id, sample_file("examples_ybr_color.dcm"))
    inst = retrieve.get_instance(ctx, site.id, jpeg.study, jpeg.series, jpeg.sop)
    unindexed = inst._replace(frames_json="")
    assert retrieve.frames(ctx, unindexed, [30]).parts == retrieve.frames(ctx, inst, [30]).parts


def test_unaligned_one_bit_frames_are_cut_from_the_bit_stream(ctx, site):
    import numpy as np

    ds = read(mr_like(frames=1, size=8))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 3, 3, 3  # 9 bits per frame: frames are not byte aligned
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    bits = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1,  0, 1, 0, 0, 0, 0, 0, 0, 1,  1, 1, 1, 1, 1, 1, 1, 1, 0], np.uint8)
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes()  # 27 bits in 4 bytes
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    s = put(ctx, site.id, buf.getvalue())
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    assert inst.frames_json == ""
    parts = retrieve.frames(ctx, inst, [1, 2, 3]).parts
    for i, part in enumerate(parts):
        unpacked = np.unpackbits(np.frombuffer(part, np.uint8), bitorder="little")
        assert list(unpacked[:9]) == list(bits[i * 9:(i + 1) * 9])


def _unopenable(monkeypatch, ctx) -> None:
    monkeypatch.setattr(ctx.blobs, "open", lambda *a, **k: pytest.fail("a mapped blob must not be opened"))


def test_frames_come_from_the_kept_mapping_once_the_read_ahead_mapped_the_blob(ctx, site, monkeypatch):
    """After the read-ahead (populate) a native frame is a slice of the blob's mapping, no file opened; a frame
    in several fragments is joined from it. The bytes are the frame's either way."""
    if not ctx.blobs.mappings.enabled:
        pytest.fail("the kept mappings are on by default")
    native = put(ctx, site.id, mr_like(frames=5, size=8))
    px = read(native.data).PixelData
    ds = read(sample_file("examples_ybr_color.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(frames[:3], fragments_per_frame=2)  # each frame split over two fragments
    ds.NumberOfFrames = 3
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    split = put(ctx, site.id, buf.getvalue())
    insts = [retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop) for s in (native, split)]
    assert len(json.loads(insts[1].frames_json)[0]) == 2
    for inst in insts:
        assert ctx.blobs.populate(inst.blob_key) == inst.size
    _unopenable(monkeypatch, ctx)
    parts = retrieve.frames(ctx, insts[0], [5, 2]).parts
    assert all(isinstance(p, memoryview) for p in parts)
    assert [bytes(p) for p in parts] == [px[4 * 128:5 * 128], px[128:256]]
    assert retrieve.frames(ctx, insts[1], [3, 1]).parts == [frames[2], frames[0]]


def test_frames_are_read_from_the_file_when_the_mapping_cannot_serve_them(ctx, site, monkeypatch):
    """No mapping, a mapping shorter than the frame index says (never expected: blobs are not rewritten), or a
    big endian file (its frames are swapped): the file is read, as before."""
    s = put(ctx, site.id, mr_like(frames=2, size=8))
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    expected = retrieve.frames(ctx, inst, [2]).parts
    assert [type(p) for p in expected] == [bytes]
    opened: list[str] = []
    real_open = ctx.blobs.open
    monkeypatch.setattr(ctx.blobs, "open", lambda key, *a, **k: opened.append(key) or real_open(key, *a, **k))
    short = memoryview(ctx.blobs.path(inst.blob_key).read_bytes()[:-1])
    monkeypatch.setattr(ctx.blobs, "mapped", lambda key: short)
    assert retrieve.frames(ctx, inst, [2]).parts == expected and opened == [inst.blob_key]
    big = put(ctx, site.id, sample_file("MR_small_bigendian.dcm"))
    binst = retrieve.get_instance(ctx, site.id, big.study, big.series, big.sop)
    whole = memoryview(ctx.blobs.path(binst.blob_key).read_bytes())
    monkeypatch.setattr(ctx.blobs, "mapped", lambda key: whole)
    assert retrieve.frames(ctx, binst, [1]).parts == [read(big.data).pixel_array.astype("<u2").tobytes()]
    assert opened[-1] == binst.blob_key


def test_frame_list_parsing():
    assert retrieve.parse_frame_list("1,3, 2") == [1, 3, 2]
    for bad in ("", "0", "a", "1,", "-2", "1.0"):
        with pytest.raises(ValueError):
            retrieve.parse_frame_list(bad)


def test_media_types():
    assert retrieve.pixel_media_type("1.2.840.10008.1.2") == ("application/octet-stream", "1.2.840.10008.1.2.1")
    assert retrieve.pixel_media_type("1.2.840.10008.1.2.4.70") == ("image/jpeg", "1.2.840.10008.1.2.4.70")
    assert retrieve.pixel_media_type("1.2.840.10008.1.2.4.80")[0] == "image/jls"
    assert retrieve.pixel_media_type("1.2.840.10008.1.2.4.91")[0] == "image/jp2"
    assert retrieve.pixel_media_type("1.2.840.10008.1.2.5")[0] == "image/dicom-rle"
    assert retrieve.pixel_media_type("1.2.840.10008.1.2.4.100") == ("application/octet-stream",
                                                                      "1.2.840.10008.1.2.4.100")


def test_bulk_data(ctx, site):
    data = sample_file("CT_small.dcm")
    s = put(ctx, site.id, data)
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    ds = read(data)
    assert retrieve.bulk_data(ctx, inst, [(0x7FE00010, None)]).parts == [ds.PixelData]
    private = next(e for e in ds if e.VR in ("OB", "UN") and len(e.value) > 1024)
    assert retrieve.bulk_data(ctx, inst, [(int(private.tag), None)]).parts == [private.value]
    with pytest.raises(NotFound):
        retrieve.bulk_data(ctx, inst, [(0x00091234, None)])
    jpeg = put(ctx, site.id, sample_file("examples_ybr_color.dcm"))
    inst = retrieve.get_instance(ctx, site.id, jpeg.study, jpeg.series, jpeg.sop)
    payload = retrieve.bulk_data(ctx, inst, [(0x7FE00010, None)])
    assert len(payload.parts) == 30 and payload.media_type == "image/jpeg"


def test_nested_bulk_data_has_its_own_path(ctx, site):
    """An Icon Image Sequence's Pixel Data gets SEQ.item.TAG, and resolves to the icon, not the image."""
    import io
    import json

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from telerad.archive.demo import ct_series
    from telerad.archive.parse import parse_bulk_path
    from telerad.db.models import Instance

    ds = read(ct_series(("Icon^Pat", "IC1", "19700101", "F"), generate_uid(), "A", 1, 32)[0])
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 48, 48, 8
    icon.PixelData = bytes(range(256)) * 9
    ds.IconImageSequence = [icon]
    buf = io.BytesIO()
    ds.save_as(buf)
    s = put(ctx, site.id, buf.getvalue())
    inst = retrieve.get_instance(ctx, site.id, s.study, s.series, s.sop)
    with ctx.db.session() as session:
        stored = session.execute(select(Instance.metadata_json).where(Instance.sop_uid == s.sop)).scalar_one()
    uri = json.loads(stored)["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert uri.endswith("/bulk/00880200.0.7FE00010")
    path = parse_bulk_path(uri.rsplit("/", 1)[1])
    assert path == [(0x00880200, 0), (0x7FE00010, None)]
    assert retrieve.bulk_data(ctx, inst, path).parts == [icon.PixelData]
    assert retrieve.bulk_data(ctx, inst, [(0x7FE00010, None)]).parts == [ds.PixelData]
    with pytest.raises(NotFound):
        retrieve.bulk_data(ctx, inst, [(0x00880200, 3), (0x7FE00010, None)])
    for bad in ["7FE0001", "00880200.0", "00880200.x.7FE00010", "00880200.-1.7FE00010"]:
        with pytest.raises(ValueError):
            parse_bulk_path(bad)


@pytest.fixture
def direct_ctx(settings):
    """A context whose new blobs bypass the page cache (blob_direct_write), as read-ahead is there for."""
    c = Context.open(settings.model_copy(update={"blob_direct_write": True}))
    yield c
    c.close()


def _blob_path(ctx, site_id, s):
    """The stored file of one instance (a lookup of one instance reads nothing ahead)."""
    [inst] = retrieve.find_instances(ctx, site_id, s.study, s.series, s.sop)
    return ctx.blobs.path(inst.blob_key)


def test_opening_one_instance_reads_the_rest_of_its_series_ahead(direct_ctx, site, other_site):
    c = direct_ctx
    study = generate_uid()
    first = [put(c, site.id, b) for b in ct_series(("Ra^Pat", "RA1", "", ""), study, "A", slices=4, size=64)]
    second = [put(c, site.id, b) for b in ct_series(("Ra^Pat", "RA1", "", ""), study, "B", slices=2, size=64)]
    paths = {s.sop: _blob_path(c, site.id, s) for s in first + second}
    assert all(resident_pages(p) == written_through_cache(p) for p in paths.values())
    with pytest.raises(NotFound):  # another site's request for the instance finds nothing and reads nothing
        retrieve.get_instance(c, other_site.id, first[2].study, first[2].series, first[2].sop)
    time.sleep(0.2)
    assert all(resident_pages(p) == written_through_cache(p) for p in paths.values())

    retrieve.get_instance(c, site.id, first[2].study, first[2].series, first[2].sop)
    assert wait_until_resident([paths[s.sop] for s in first])
    # the study's other series is left alone
    assert all(resident_pages(paths[s.sop]) == written_through_cache(paths[s.sop]) for s in second)


def test_a_whole_study_retrieve_reads_its_files_ahead(direct_ctx, site):
    c = direct_ctx
    study = generate_uid()
    stored = [put(c, site.id, b) for b in ct_series(("Ra^Pat", "RA2", "", ""), study, "A", slices=3, size=64)]
    found = retrieve.find_instances(c, site.id, study)
    assert [i.sop_uid for i in found] == [s.sop for s in stored]
    assert wait_until_resident([c.blobs.path(i.blob_key) for i in found])
