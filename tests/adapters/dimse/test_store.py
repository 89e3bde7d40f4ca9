"""C-STORE SCP (PS3.4 B.2) driven by DCMTK storescu: tenancy, transfer syntaxes as sent, duplicates, conflicts."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from adapters.dimse.dimse_support import GH_AE, RC_AE, Dcmtk, sample, write_files
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from telerad.archive import registry
from telerad.archive.demo import cr_image, ct_series
from telerad.archive.ingest import Outcome, store
from telerad.context import Context
from telerad.db.models import Instance, Site, StoreConflict

PATIENT = ("Store^Pat", "ST1", "19700101", "F")


def instances(ctx: Context) -> list[Instance]:
    with ctx.db.session() as s:
        return list(s.execute(select(Instance).order_by(Instance.id)).scalars())


def site_id(ctx: Context, code: str) -> int:
    with ctx.db.session() as s:
        return s.execute(select(Site.id).where(Site.code == code)).scalar_one()


def test_store_series_lands_in_the_calling_nodes_site(ctx: Context, dcmtk: Dcmtk, gh_node: str,
                                                      rc_node: str, tmp_path: Path) -> None:
    study = generate_uid()
    blobs = ct_series(PATIENT, study, "ACC1", slices=3, size=64) + [cr_image(PATIENT, study, "ACC1")]
    r = dcmtk.store(GH_AE, write_files(tmp_path / "in", blobs))
    assert r.rc == 0, r.out
    assert r.out.count("Received Store Response (Success)") == 4
    stored = instances(ctx)
    assert len(stored) == 4
    assert {i.site_id for i in stored} == {site_id(ctx, "GH")}
    assert {i.source_ae for i in stored} == {GH_AE}
    for sent, inst in zip(blobs, stored, strict=True):
        kept = ctx.blobs.path(inst.blob_key).read_bytes()
        a, b = pydicom.dcmread(pydicom.filebase.DicomBytesIO(sent)), pydicom.dcmread(ctx.blobs.path(inst.blob_key))
        assert kept[:128] == b"\0" * 128
        assert a == b and a.PixelData == b.PixelData
        assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"


# (pydicom test file, storescu option proposing its transfer syntax, transfer syntax)
TRANSFER_SYNTAXES = [
    ("CT_small.dcm", "-xe", "1.2.840.10008.1.2.1"),
    ("MR_small_implicit.dcm", "-xi", "1.2.840.10008.1.2"),
    ("MR_small_bigendian.dcm", "-xb", "1.2.840.10008.1.2.2"),
    ("image_dfl.dcm", "-xd", "1.2.840.10008.1.2.1.99"),
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy", "1.2.840.10008.1.2.4.50"),
    ("JPEG-lossy.dcm", "-xx", "1.2.840.10008.1.2.4.51"),
    ("SC_rgb_jpeg_gdcm.dcm", "-xs", "1.2.840.10008.1.2.4.70"),
    ("MR_small_jpeg_ls_lossless.dcm", "-xt", "1.2.840.10008.1.2.4.80"),
    ("JPEGLSNearLossless_16.dcm", "-xu", "1.2.840.10008.1.2.4.81"),
    ("MR_small_jp2klossless.dcm", "-xv", "1.2.840.10008.1.2.4.90"),
    ("JPEG2000.dcm", "-xw", "1.2.840.10008.1.2.4.91"),
    ("SC_rgb_rle.dcm", "-xr", "1.2.840.10008.1.2.5"),
]


@pytest.mark.parametrize(("name", "option", "ts"), TRANSFER_SYNTAXES, ids=[t[2] for t in TRANSFER_SYNTAXES])
def test_stored_in_the_transfer_syntax_sent(ctx: Context, dcmtk: Dcmtk, gh_node: str, tmp_path: Path,
                                            name: str, option: str, ts: str) -> None:
    path, uid = sample(name, tmp_path / "in", PatientID="TS1")
    r = dcmtk.store(GH_AE, [path], option, "-R")
    assert r.rc == 0, r.out
    assert "Received Store Response (Success)" in r
    [inst] = instances(ctx)
    assert (inst.sop_uid, inst.transfer_syntax_uid) == (uid, ts)
    sent = pydicom.dcmread(path)
    kept = pydicom.dcmread(ctx.blobs.path(inst.blob_key))
    assert kept.file_meta.TransferSyntaxUID == ts
    assert kept.PixelData == sent.PixelData  # compressed fragments or native bytes, untouched
    assert kept.SOPInstanceUID == uid and kept.PatientID == "TS1"


def test_duplicate_is_success_and_stored_once(ctx: Context, dcmtk: Dcmtk, gh_node: str, tmp_path: Path) -> None:
    files = write_files(tmp_path / "in", [cr_image(PATIENT, generate_uid(), "ACC2")])
    for _ in range(2):
        r = dcmtk.store(GH_AE, files)
        assert r.rc == 0, r.out
        assert "Received Store Response (Success)" in r
    assert len(instances(ctx)) == 1


def test_the_same_instance_sent_again_otherwise_is_success_and_stored_once(ctx: Context, dcmtk: Dcmtk,
                                                                        gh_node: str, tmp_path: Path) -> None:
    """Sent by storescu in Explicit VR Little Endian, again converted by storescu to Implicit VR (``-xi``),
    then imported from the modality's own file (other File Meta): one instance, no conflict, every time
    a success (telerad.archive.sameness)."""
    files = write_files(tmp_path / "in", [cr_image(PATIENT, generate_uid(), "ACC4")])
    r = dcmtk.store(GH_AE, files, "-xe")
    assert "Received Store Response (Success)" in r, r.out
    r = dcmtk.store(GH_AE, files, "-xi")
    assert r.rc == 0 and "Received Store Response (Success)" in r, r.out
    assert "Implicit" in r.out  # storescu did convert it
    assert store(ctx, site_id(ctx, "GH"), files[0].read_bytes(), "import").outcome is Outcome.DUPLICATE
    [inst] = instances(ctx)
    assert pydicom.dcmread(ctx.blobs.path(inst.blob_key)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(StoreConflict)).scalar_one() == 0


def test_same_uid_different_bytes_fails_0111_and_keeps_first(ctx: Context, dcmtk: Dcmtk, gh_node: str,
                                                             tmp_path: Path) -> None:
    first = cr_image(PATIENT, generate_uid(), "ACC3")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(first))
    ds.PatientName = "Someone^Else"
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)
    assert dcmtk.store(GH_AE, write_files(tmp_path / "in", [first])).rc == 0

    r = dcmtk.store(GH_AE, [second])
    assert r.rc != 0
    assert "Unknown Status: 0x111" in r  # DCMTK's text for 0111H, Duplicate SOP Instance (PS3.7 C.4.2.1.4)
    [inst] = instances(ctx)
    kept = pydicom.dcmread(ctx.blobs.path(inst.blob_key))
    assert kept.PatientName == PATIENT[0]
    assert kept == pydicom.dcmread(pydicom.filebase.DicomBytesIO(first))
    with ctx.db.session() as s:
        conflict = s.execute(select(StoreConflict)).scalar_one()
    assert conflict.sop_uid == ds.SOPInstanceUID and conflict.source == GH_AE


def test_same_uid_from_two_sites_is_two_instances(ctx: Context, dcmtk: Dcmtk, gh_node: str, rc_node: str,
                                                   tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert dcmtk.store(GH_AE, [Path(path)]).rc == 0
    assert dcmtk.store(RC_AE, [Path(path)]).rc == 0
    stored = instances(ctx)
    assert sorted(i.site_id for i in stored) == sorted([site_id(ctx, "GH"), site_id(ctx, "RC")])
    assert len({i.sop_uid for i in stored}) == 1


def test_refused_object_reports_status_and_nothing_is_stored(ctx: Context, dcmtk: Dcmtk, gh_node: str,
                                                             tmp_path: Path) -> None:
    ctx.settings.max_rows = 32  # the CT below has 64 rows: Out of Resources (PS3.4 B.2.3)
    files = write_files(tmp_path / "in", ct_series(PATIENT, generate_uid(), "ACC4", slices=1, size=64))
    r = dcmtk.store(GH_AE, files, "-d")
    assert r.rc != 0
    assert "0xa700" in r.out.lower() or "Out of Resources" in r
    assert "exceeds the configured maximum" in r  # Error Comment (0000,0902)
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(Instance)).scalar_one() == 0


def test_unknown_ae_cannot_store(ctx: Context, dcmtk: Dcmtk, site: registry.Site, tmp_path: Path) -> None:
    files = write_files(tmp_path / "in", [cr_image(PATIENT, generate_uid(), "ACC5")])
    r = dcmtk.store("STRANGER", files)
    assert r.rc != 0 and "Calling AE Title Not Recognized" in r
    assert instances(ctx) == []
