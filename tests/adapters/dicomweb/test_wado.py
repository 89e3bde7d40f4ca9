"""WADO-RS (PS3.18 10.4): instances streamed as stored, metadata, frames, bulk data, content negotiation."""

from __future__ import annotations

import numpy as np
import pytest
from dicomweb_support import SITE, mr_like, put, read, sample_file, split_multipart, zero_preamble
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, generate_uid
from starlette.responses import StreamingResponse

from telerad.adapters.dicomweb import wado
from telerad.archive.demo import ct_series

DICOM_MP = 'multipart/related; type="application/dicom"'


def test_retrieve_instance_is_the_stored_file(client, ct):
    r = client.get(ct[0].path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(DICOM_MP)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in r.headers["content-type"]
    assert int(r.headers["content-length"]) == len(r.content)
    parts = split_multipart(r.headers["content-type"], r.content)
    assert len(parts) == 1
    headers, content = parts[0]
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert content == zero_preamble(ct[0].data)


def test_retrieve_study_and_series(client, ct):
    for url in (f"/dicom-web/studies/{ct[0].study}", f"/dicom-web/studies/{ct[0].study}/series/{ct[0].series}"):
        r = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        parts = split_multipart(r.headers["content-type"], r.content)
        assert [c for _, c in parts] == [zero_preamble(i.data) for i in ct]


def test_retrieval_streams_file_chunks(ctx, site, client, ct, monkeypatch):
    # Bodies are generators over the blob files, never the whole study in memory.
    captured = {}
    real = StreamingResponse.__init__

    def spy(self, content, *args, **kwargs):
        captured["content"] = content
        real(self, content, *args, **kwargs)

    monkeypatch.setattr(StreamingResponse, "__init__", spy)
    assert client.get(f"/dicom-web/studies/{ct[0].study}").status_code == 200
    assert not isinstance(captured["content"], (bytes, bytearray, list))
    big = put(ctx, site.id, mr_like(frames=600, size=64))  # ~4.9 MB
    chunks = []
    monkeypatch.setattr(StreamingResponse, "__init__", real)
    with client.stream("GET", big.path) as r:
        for chunk in r.iter_raw():
            chunks.append(len(chunk))
    assert sum(chunks) > 4_900_000
    assert max(chunks) <= 1 << 20 and len(chunks) >= 5


def test_study_of_small_and_large_files_streams_every_part_intact(ctx, site, client, ct, monkeypatch):
    """Parts are read in groups of at most PART_BATCH bytes of files; a larger file goes out in chunks. With a
    small batch, the study below crosses both paths and several group boundaries."""
    monkeypatch.setattr(wado, "PART_BATCH", 5000)
    big = put(ctx, site.id, mr_like(frames=4, size=64, study=ct[0].study))  # ~33 KB: chunked
    more = [put(ctx, site.id, b) for b in ct_series(("Doe^John", "P1", "19700101", "M"), ct[0].study, "ACC1",
                                                      slices=4, size=32)]
    r = client.get(f"/dicom-web/studies/{ct[0].study}")
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    parts = split_multipart(r.headers["content-type"], r.content)
    assert sorted(c for _, c in parts) == sorted(zero_preamble(i.data) for i in [*ct, big, *more])


@pytest.mark.parametrize("accept", [
    None, "*/*", DICOM_MP, DICOM_MP + "; transfer-syntax=*", DICOM_MP + "; transfer-syntax=1.2.840.10008.1.2.1",
    "multipart/related", 'multipart/related; type="application/*"', "application/json, " + DICOM_MP + ";q=0.5",
])
def test_acceptable(client, ct, accept):
    r = client.get(ct[0].path, headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.headers["content-type"].startswith(DICOM_MP)


@pytest.mark.parametrize("accept", [
    DICOM_MP + "; transfer-syntax=1.2.840.10008.1.2.4.50", "application/dicom+json", "image/jpeg",
    'multipart/related; type="image/jpeg"', DICOM_MP + ";q=0",
])
def test_not_acceptable(client, ct, accept):
    r = client.get(ct[0].path, headers={"Accept": accept})
    assert r.status_code == 406
    assert "transcode" in r.json()["detail"] or "available" in r.json()["detail"]
    assert client.get(f"/dicom-web/studies/{ct[0].study}", headers={"Accept": accept}).status_code == 406


def test_compressed_instance_only_in_its_own_syntax(client, jpeg):
    r = client.get(jpeg.path, headers={"Accept": DICOM_MP + "; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert r.status_code == 200
    assert split_multipart(r.headers["content-type"], r.content)[0][1] == zero_preamble(jpeg.data)
    assert client.get(jpeg.path, headers={"Accept": DICOM_MP + "; transfer-syntax=1.2.840.10008.1.2.1"}
                      ).status_code == 406


def test_single_part_instance(client, ct):
    r = client.get(ct[0].path, headers={"Accept": "application/dicom"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert r.content == zero_preamble(ct[0].data)
    assert client.get(f"/dicom-web/studies/{ct[0].study}", headers={"Accept": "application/dicom"}
                      ).status_code == 406


def test_metadata(client, ct):
    r = client.get(f"/dicom-web/studies/{ct[0].study}/metadata")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    docs = r.json()
    assert [d["00080018"]["Value"][0] for d in docs] == [i.sop for i in ct]
    assert "{{" not in r.text
    for doc, inst in zip(docs, ct, strict=True):
        assert doc["7FE00010"]["BulkDataURI"] == f"http://testserver{inst.path}/bulk/7FE00010"
        assert doc["00100010"]["Value"][0]["Alphabetic"] == "Doe^John"
    assert len(client.get(f"/dicom-web/studies/{ct[0].study}/series/{ct[0].series}/metadata").json()) == 3
    one = client.get(ct[1].path + "/metadata", headers={"Accept": "application/json"})
    assert one.headers["content-type"] == "application/json"
    assert [d["00200013"]["Value"][0] for d in one.json()] == [2]
    assert client.get(ct[1].path + "/metadata", headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_bulk_data_uris_resolve(client, ctx, site):
    ds = read(sample_file("CT_small.dcm"))
    inst = put(ctx, site.id, sample_file("CT_small.dcm"))
    doc = client.get(inst.path + "/metadata").json()[0]
    uris = {tag: v["BulkDataURI"] for tag, v in doc.items() if "BulkDataURI" in v}
    assert "7FE00010" in uris
    pixel = client.get(uris["7FE00010"])
    assert pixel.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    assert split_multipart(pixel.headers["content-type"], pixel.content)[0][1] == ds.PixelData
    others = [t for t in uris if t != "7FE00010"]
    assert others, "CT_small has a large private value served as bulk data"
    for tag in others:
        r = client.get(uris[tag])
        assert r.status_code == 200
        (headers, content), = split_multipart(r.headers["content-type"], r.content)
        assert content == ds[int(tag, 16)].value


def test_bulk_errors(client, ct):
    assert client.get(ct[0].path + "/bulk/00100010x").status_code == 400
    assert client.get(ct[0].path + "/bulk/ZZZZZZZZ").status_code == 400
    assert client.get(ct[0].path + "/bulk/00091001").status_code == 404


def test_native_frames(client, ctx, site):
    inst = put(ctx, site.id, mr_like(frames=4, size=16))
    pixels = read(inst.data).PixelData
    size = 16 * 16 * 2
    r = client.get(inst.path + "/frames/1,3,3")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    assert "transfer-syntax=1.2.840.10008.1.2.1" in r.headers["content-type"]
    parts = split_multipart(r.headers["content-type"], r.content)
    assert [c for _, c in parts] == [pixels[0:size], pixels[2 * size:3 * size], pixels[2 * size:3 * size]]
    assert parts[0][0]["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


@pytest.mark.parametrize("frames", ["0", "x", "1,,2", "-1", "1.5", " ", "1;2"])
def test_malformed_frame_list_is_400(client, ct, frames):
    assert client.get(f"{ct[0].path}/frames/{frames}").status_code == 400


def test_frame_out_of_range_is_404(client, ct):
    r = client.get(f"{ct[0].path}/frames/1,2")
    assert r.status_code == 404 and "frame 2" in r.json()["detail"]


@pytest.mark.parametrize("name,media_type", [
    ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg"),
    ("JPEG2000.dcm", "image/jp2"),
    ("MR_small_RLE.dcm", "image/dicom-rle"),
    ("examples_ybr_color.dcm", "image/jpeg"),
    ("SC_rgb_rle_2frame.dcm", "image/dicom-rle"),
    ("JPGExtended.dcm", "image/jpeg"),
])
def test_compressed_frames_are_the_stored_bitstream(client, ctx, site, name, media_type):
    data = sample_file(name)
    inst = put(ctx, site.id, data)
    ds = read(data)
    n = int(ds.get("NumberOfFrames", 1))
    expected = list(generate_frames(ds.PixelData, number_of_frames=n))
    wanted = ",".join(str(i) for i in range(1, n + 1))
    r = client.get(f"{inst.path}/frames/{wanted}")
    assert r.status_code == 200
    ts = ds.file_meta.TransferSyntaxUID
    assert r.headers["content-type"].startswith(f'multipart/related; type="{media_type}"; transfer-syntax={ts}')
    parts = split_multipart(r.headers["content-type"], r.content)
    assert [c for _, c in parts] == expected
    assert parts[0][0]["content-type"] == f"{media_type}; transfer-syntax={ts}"
    # Compressed frames are not decompressed for a client that wants octets.
    octet_stream = 'multipart/related; type="application/octet-stream"'
    octets = client.get(f"{inst.path}/frames/1", headers={"Accept": octet_stream})
    assert octets.status_code == 406
    ok = client.get(f"{inst.path}/frames/1", headers={"Accept": f'multipart/related; type="{media_type}"; '
                                                                  f"transfer-syntax={ts}"})
    assert ok.status_code == 200
    assert client.get(f"{inst.path}/frames/1", headers={"Accept": 'multipart/related; type="image/*"'}
                      ).status_code == 200


def test_multiframe_jpeg2000(client, ctx, site):
    data = mr_like(frames=3, size=32, transfer_syntax=JPEG2000Lossless)
    inst = put(ctx, site.id, data)
    expected = list(generate_frames(read(data).PixelData, number_of_frames=3))
    r = client.get(f"{inst.path}/frames/3,1")
    assert [c for _, c in split_multipart(r.headers["content-type"], r.content)] == [expected[2], expected[0]]


def test_big_endian_frames_are_served_little_endian(client, ctx, site):
    data = sample_file("MR_small_bigendian.dcm")
    inst = put(ctx, site.id, data)
    ds = read(data)
    r = client.get(f"{inst.path}/frames/1")
    (_, content), = split_multipart(r.headers["content-type"], r.content)
    assert content == ds.pixel_array.astype("<i2").tobytes()
    assert content != ds.PixelData


def test_deflated_object_frames_come_from_parsing(client, ctx, site):
    data = sample_file("image_dfl.dcm")
    inst = put(ctx, site.id, data)
    r = client.get(f"{inst.path}/frames/1")
    assert r.status_code == 200
    (_, content), = split_multipart(r.headers["content-type"], r.content)
    assert content == read(data).PixelData


def test_one_bit_frames(client, ctx, site):
    data = sample_file("liver_1frame.dcm")
    inst = put(ctx, site.id, data)
    (_, content), = split_multipart(*_ct_body(client.get(f"{inst.path}/frames/1")))
    assert content == read(data).PixelData[: 512 * 512 // 8]
    assert np.unpackbits(np.frombuffer(content, np.uint8), bitorder="little").sum() > 0


def _ct_body(r):
    return r.headers["content-type"], r.content


def test_instance_without_pixels_has_no_frames(client, ctx, site):
    inst = put(ctx, site.id, sample_file("test-SR.dcm"))
    assert client.get(inst.path).status_code == 200
    assert client.get(f"{inst.path}/frames/1").status_code == 404


def test_unknown_uids_are_404(client, ct):
    assert client.get(f"/dicom-web/studies/{generate_uid()}").status_code == 404
    assert client.get(f"/dicom-web/studies/{ct[0].study}/series/{generate_uid()}").status_code == 404
    # An instance UID under the wrong series is not found either.
    assert client.get(f"/dicom-web/studies/{ct[0].study}/series/{generate_uid()}/instances/{ct[0].sop}"
                      ).status_code == 404
    assert client.get(f"/dicom-web/studies/{generate_uid()}/metadata").status_code == 404


def test_missing_blob_is_503_not_a_broken_stream(client, ctx, site, ct):
    ctx.blobs.path(wado.retrieve.get_instance(ctx, site.id, ct[0].study, ct[0].series, ct[0].sop).blob_key).unlink()
    r = client.get(f"/dicom-web/studies/{ct[0].study}", headers=SITE)
    assert r.status_code == 503 and ct[0].sop in r.json()["detail"]


def test_small_indexed_frames_are_read_on_the_event_loop_and_the_rest_in_the_thread_pool(client, ctx, site,
                                                                                         monkeypatch):
    """adapters/http/offload: a few indexed frames are read inline; a large request, or one that must parse
    the file, keeps the thread-pool hop; each answers the same either way."""
    seen: list[bool] = []
    real = wado._frames_response

    def spy(*args, **kwargs):
        seen.append(ctx.db.on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(wado, "_frames_response", spy)
    native = put(ctx, site.id, mr_like(frames=4, size=16))
    deflated = put(ctx, site.id, sample_file("image_dfl.dcm"))
    big_endian = put(ctx, site.id, sample_file("MR_small_bigendian.dcm"))

    def frames(inst, frame_list: str) -> tuple[int, bool]:
        seen.clear()
        r = client.get(f"{inst.path}/frames/{frame_list}")
        assert len(seen) == 1
        return r.status_code, seen[0]

    assert frames(native, "1,3") == (200, True)
    assert frames(native, "5") == (404, False)  # out of range: the thread-pool path says why
    assert frames(deflated, "1") == (200, False)  # no frame index: the file is parsed
    assert frames(big_endian, "1") == (200, False)  # byte-swapped after a parse of the header
    monkeypatch.setattr(wado, "INLINE_FRAME_BYTES", 16 * 16 * 2)  # one frame of the native instance
    assert frames(native, "2") == (200, True)
    assert frames(native, "1,2") == (200, False)
