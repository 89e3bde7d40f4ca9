"""The one ingest path: durability, duplicates, conflicts, caps, tenancy."""

from __future__ import annotations

import errno
import io
import json

import pydicom
import pydicom.filebase
import pydicom.filewriter
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from support import leftovers, rewritten

from telerad.adapters.dimse.filemeta import part10_header
from telerad.archive import parse
from telerad.archive.demo import ct_series
from telerad.archive.errors import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
)
from telerad.archive.ingest import Outcome, store
from telerad.config import make_settings
from telerad.context import Context
from telerad.db.models import Instance, Patient, Series, StoreConflict, Study

PATIENT = ("Test^Pat", "PID1", "19900101", "M")


def count(ctx, model) -> int:
    with ctx.db.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_store_writes_blob_with_zero_preamble_and_index(ctx, site):
    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    raw = b"\xff" * 128 + raw[128:]  # a hostile preamble (CVE-2019-11687)
    r = store(ctx, site.id, raw, "test")
    assert r.outcome is Outcome.STORED and r.status == 0
    with ctx.db.session() as s:
        inst = s.execute(select(Instance)).scalar_one()
    data = ctx.blobs.path(inst.blob_key).read_bytes()
    assert data[:128] == b"\x00" * 128 and data[128:] == raw[128:]
    meta = json.loads(inst.metadata_json)
    assert meta["00100020"]["Value"] == [pydicom.dcmread(io.BytesIO(raw)).PatientID]
    assert "BulkDataURI" in meta["7FE00010"]
    frames = json.loads(inst.frames_json)
    (off, length), = frames[0]
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert data[off:off + length] == ds.PixelData
    assert ctx.blobs.verify(inst.blob_key)


def test_duplicate_same_bytes_is_success_without_new_row(ctx, site):
    raw = ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0]
    assert store(ctx, site.id, raw).outcome is Outcome.STORED
    r = store(ctx, site.id, raw)
    assert r.outcome is Outcome.DUPLICATE and r.ok and r.status == 0
    assert count(ctx, Instance) == 1
    with ctx.db.session() as s:
        study = s.execute(select(Study)).scalar_one()
    assert study.num_instances == 1


def test_conflict_keeps_first_and_records(ctx, site):
    raw = ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0]
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.PatientName = "Changed^Name"
    buf = io.BytesIO()
    ds.save_as(buf)
    assert store(ctx, site.id, raw).ok
    r = store(ctx, site.id, buf.getvalue(), "GH_CT")
    assert r.outcome is Outcome.CONFLICT and not r.ok and r.status == DUPLICATE_SOP_INSTANCE
    with ctx.db.session() as s:
        inst = s.execute(select(Instance)).scalar_one()
        conflict = s.execute(select(StoreConflict)).scalar_one()
    assert ctx.blobs.path(inst.blob_key).read_bytes()[128:] == raw[128:]
    assert conflict.kept_blob_key == inst.blob_key and conflict.source == "GH_CT"


def test_same_uids_at_two_sites_are_separate(ctx, site, other_site):
    raw = ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0]
    assert store(ctx, site.id, raw).outcome is Outcome.STORED
    assert store(ctx, other_site.id, raw).outcome is Outcome.STORED
    assert count(ctx, Patient) == 2 and count(ctx, Study) == 2 and count(ctx, Instance) == 2


def test_counts_and_modalities(ctx, site):
    study = generate_uid()
    for raw in ct_series(PATIENT, study, "A1", 3, 16) + ct_series(PATIENT, study, "A1", 2, 16):
        assert store(ctx, site.id, raw).ok
    with ctx.db.session() as s:
        st = s.execute(select(Study)).scalar_one()
        series = s.execute(select(Series.num_instances).order_by(Series.id)).scalars().all()
    assert (st.num_series, st.num_instances, st.modalities) == (2, 5, "CT")
    assert series == [3, 2]


def test_rejections_have_reasons(ctx, site):
    assert store(ctx, site.id, b"not dicom at all").status == CANNOT_UNDERSTAND
    truncated = open(get_testdata_file("MR_truncated.dcm"), "rb").read()
    r = store(ctx, site.id, truncated)
    assert r.outcome is Outcome.REJECTED and "pixel data" in r.reason
    ds = pydicom.dcmread(io.BytesIO(ct_series(PATIENT, generate_uid(), "A", 1, 16)[0]))
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    r = store(ctx, site.id, buf.getvalue())
    assert r.status == CANNOT_UNDERSTAND and "StudyInstanceUID" in r.reason
    assert count(ctx, Instance) == 0


def _stored_files(ctx) -> list[str]:
    return sorted(p.name for p in ctx.blobs.root.glob("??/*"))


def test_rejected_objects_leave_no_blob_and_no_staged_file(ctx, site):
    """The blob is staged while the object is parsed; a rejected object's staged file is removed."""
    before = _stored_files(ctx)
    truncated = open(get_testdata_file("MR_truncated.dcm"), "rb").read()
    ds = pydicom.dcmread(io.BytesIO(ct_series(PATIENT, generate_uid(), "A", 1, 16)[0]))
    ds.SOPInstanceUID = "1.2.3.x"
    buf = io.BytesIO()
    ds.save_as(buf)
    for bad in (truncated, buf.getvalue(), b"not dicom at all"):
        assert store(ctx, site.id, bad).outcome is Outcome.REJECTED
    assert _stored_files(ctx) == before
    assert list((ctx.blobs.root / "tmp").iterdir()) == []
    assert count(ctx, Instance) == 0


def test_a_raw_data_set_pydicom_cannot_give_file_meta_is_refused_not_raised(ctx, site):
    """No preamble, no File Meta, an empty SOP Class UID: building its File Meta fails inside pydicom."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = ""
    ds.SOPInstanceUID = generate_uid()
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(fp, ds)
    raw = fp.getvalue()
    assert raw[128:132] != b"DICM" and raw[:4] != b"DICM"
    r = store(ctx, site.id, raw)
    assert r.outcome is Outcome.REJECTED and r.status in (CANNOT_UNDERSTAND, PROCESSING_FAILURE)
    assert r.reason and count(ctx, Instance) == 0


def test_an_interrupted_store_leaves_no_staged_file(ctx, site, monkeypatch):
    from telerad.archive import ingest

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "parse_object", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store(ctx, site.id, ct_series(PATIENT, generate_uid(), "A", 1, 16)[0])
    assert list((ctx.blobs.root / "tmp").iterdir()) == [] and _stored_files(ctx) == []


def test_metadata_that_cannot_be_encoded_is_refused_and_leaves_nothing(ctx, site, monkeypatch):
    """The instance row's JSON is encoded before the index transaction (while the blob is written): a failure
    there refuses the object as a failure inside the transaction did, with nothing stored or left behind."""
    from telerad.archive import ingest

    def unencodable(obj):
        raise ValueError("Out of range float values are not JSON compliant")

    monkeypatch.setattr(ingest, "_encoded", unencodable)
    r = store(ctx, site.id, ct_series(PATIENT, generate_uid(), "A", 1, 16)[0])
    assert r.outcome is Outcome.REJECTED and r.status == PROCESSING_FAILURE and not r.ok
    assert r.reason == "index failure: Out of range float values are not JSON compliant"
    assert count(ctx, Instance) == 0 and count(ctx, Series) == 0
    assert leftovers(ctx.blobs.root) == [] and _stored_files(ctx) == []


@pytest.mark.parametrize("direct_write", [True, False], ids=["direct", "buffered"])
def test_a_failed_blob_write_is_a_storage_failure_and_indexes_nothing(ctx, site, monkeypatch, direct_write):
    from telerad.storage import direct, filesystem

    def full(fd: int, data: bytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem, "_write_all", full)
    monkeypatch.setattr(direct, "write_all", full)
    c = Context.open(ctx.settings.model_copy(update={"blob_direct_write": direct_write}))
    try:
        assert c.blobs.direct_write is direct_write
        r = store(c, site.id, ct_series(PATIENT, generate_uid(), "A", 1, 16)[0])
        assert r.outcome is Outcome.REJECTED and r.status == OUT_OF_RESOURCES
        assert r.reason == "storage failure: No space left on device"
        assert count(c, Instance) == 0
        assert list((c.blobs.root / "tmp").iterdir()) == [] and _stored_files(c) == []
    finally:
        c.close()


def test_caps(tmp_path, site, ctx):
    small = Context.open(make_settings(home=tmp_path / "h2", database_url=ctx.settings.database_url,
                                       audit_key_file=ctx.settings.audit_key_path,
                                       max_rows=8, max_object_bytes=10_000))
    try:
        r = store(small, site.id, ct_series(PATIENT, generate_uid(), "A", 1, 16)[0])
        assert r.status == OUT_OF_RESOURCES and "exceeds" in r.reason
        r = store(small, site.id, ct_series(PATIENT, generate_uid(), "A", 1, 128)[0])
        assert r.status == OUT_OF_RESOURCES and "bytes" in r.reason
    finally:
        small.close()


def test_multiframe_encapsulated_frames_indexed(ctx, site):
    from pydicom.encaps import generate_frames

    raw = open(get_testdata_file("examples_ybr_color.dcm"), "rb").read()
    assert store(ctx, site.id, raw).ok
    with ctx.db.session() as s:
        inst = s.execute(select(Instance)).scalar_one()
    data = ctx.blobs.path(inst.blob_key).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    expected = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames = json.loads(inst.frames_json)
    assert len(frames) == len(expected) == inst.number_of_frames
    for got, want in zip(frames, expected, strict=True):
        assert b"".join(data[o:o + n] for o, n in got).rstrip(b"\0") == want.rstrip(b"\0")


def test_restart_keeps_everything(ctx, site):
    raw = ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0]
    assert store(ctx, site.id, raw).ok
    ctx.close()
    again = Context.open(ctx.settings)
    try:
        assert count(again, Instance) == 1
        assert store(again, site.id, raw).outcome is Outcome.DUPLICATE
    finally:
        again.close()


def _edited(raw: bytes, **attrs: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_series_of_another_study_is_refused(ctx, site):
    first, second = ct_series(PATIENT, generate_uid(), "A1", 2, 16)
    assert store(ctx, site.id, first).ok
    moved = _edited(second, StudyInstanceUID=generate_uid())
    r = store(ctx, site.id, moved)
    assert r.outcome is Outcome.REJECTED and r.status == 0xA900 and "another study" in r.reason
    assert count(ctx, Instance) == 1 and count(ctx, Study) == 1


def test_dates_and_times_indexed_in_canonical_form(ctx, site):
    raw = _edited(ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0], StudyTime="0930", StudyDate="20240131")
    assert store(ctx, site.id, raw).ok
    with ctx.db.session() as s:
        study = s.execute(select(Study)).scalar_one()
    assert (study.study_date, study.study_time) == ("20240131", "093000")


def test_zero_frames_refused(ctx, site):
    raw = _edited(ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0], NumberOfFrames=0)
    r = store(ctx, site.id, raw)
    assert r.status == CANNOT_UNDERSTAND and "Number of Frames" in r.reason


def test_concurrent_stores_of_one_new_study_keep_counts_and_modalities(ctx, site):
    """Several associations send one new study at once: the losers of the patient/study/series insert race
    retry, a duplicate sent twice is stored once, and counts and modalities add up."""
    import threading

    from telerad.archive.demo import cr_image

    study = generate_uid()
    objects = ct_series(PATIENT, study, "A1", 4, 16) + ct_series(PATIENT, study, "A1", 4, 16)
    objects += [cr_image(PATIENT, study, "A1") for _ in range(2)]
    batches = [objects[i::4] + [objects[0]] for i in range(4)]  # objects[0] sent by every thread
    barrier = threading.Barrier(len(batches))
    results: list = []

    def send(batch: list[bytes]) -> None:
        barrier.wait()
        results.extend(store(ctx, site.id, raw) for raw in batch)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    assert sum(r.outcome is Outcome.STORED for r in results) == len(objects)
    with ctx.db.session() as s:
        st = s.execute(select(Study)).scalar_one()
        per_series = s.execute(
            select(Series.num_instances, select(func.count()).where(Instance.series_fk == Series.id)
                   .scalar_subquery())).all()
    assert (st.num_series, st.num_instances, st.modalities) == (4, len(objects), "CR\\CT")
    assert all(n == actual for n, actual in per_series) and len(per_series) == 4
    assert count(ctx, Patient) == 1


def test_blob_direct_write_setting_stores_through_o_direct(settings, tmp_path):
    """TELERAD_BLOB_DIRECT_WRITE: the ingest path writes the blob with O_DIRECT (none of it in the page cache
    per util-linux fincore, but for its last partial page) and the stored object is byte for byte the one
    received."""
    import subprocess

    from telerad.archive import registry

    ctx = Context.open(settings.model_copy(update={"blob_direct_write": True}))
    try:
        site = registry.add_site(ctx, "GH", "General Hospital")
        raw = ct_series(PATIENT, generate_uid(), "A1", 1, 64)[0]
        assert store(ctx, site.id, raw, "test").outcome is Outcome.STORED
        with ctx.db.session() as s:
            inst = s.execute(select(Instance)).scalar_one()
        path = ctx.blobs.path(inst.blob_key)
        fincore = subprocess.run(["fincore", "--raw", "--noheadings", "--output", "PAGES", str(path)],
                                 capture_output=True, text=True, check=True)
        assert path.stat().st_size % 4096  # a last partial page, written through the page cache
        assert int(fincore.stdout.split()[0]) == 1 and ctx.blobs.direct_write
        assert path.read_bytes()[128:] == raw[128:] and ctx.blobs.verify(inst.blob_key)
    finally:
        ctx.close()


def test_index_rows_hold_what_the_objects_say(ctx, site):
    """Every column ingest writes (on the bare driver, :func:`ingest._index`) for a new patient, study and
    series, for the next instances of the series, and for a second series of the study."""
    from telerad.archive.demo import cr_image
    from telerad.archive.parse import SERIES_TAGS, STUDY_TAGS, level_json, parse_object

    study_uid = generate_uid()
    raws = ct_series(PATIENT, study_uid, "A1", 3, 16)
    raws[0] = _edited(raws[0], StudyDate="20240131", StudyTime="0930", StudyID="S7", ReferringPhysicianName="Ref^Doc",
                      PerformedProcedureStepStartDate="20240131", PerformedProcedureStepStartTime="093512",
                      IssuerOfPatientID="HOSP")
    raws[1:] = [_edited(raw, IssuerOfPatientID="HOSP") for raw in raws[1:]]
    raws.append(_edited(cr_image(PATIENT, study_uid, "A1"), IssuerOfPatientID="HOSP"))
    assert [store(ctx, site.id, raw, "CT_NODE").outcome for raw in raws] == [Outcome.STORED] * 4
    objs = [parse_object(raw, max_rows=1 << 16, max_columns=1 << 16, max_frames=1 << 16) for raw in raws]
    with ctx.db.session() as s:
        patient = s.execute(select(Patient)).scalar_one()
        study = s.execute(select(Study)).scalar_one()
        ct, cr = s.execute(select(Series).order_by(Series.id)).scalars().all()
        rows = s.execute(select(Instance).order_by(Instance.id)).scalars().all()
    assert (patient.site_id, patient.patient_id, patient.issuer, patient.patient_name, patient.birth_date,
            patient.sex) == (site.id, "PID1", "HOSP", "Test^Pat", "19900101", "M")
    first = objs[0].dataset
    assert (study.site_id, study.patient_fk, study.study_uid, study.study_date, study.study_time,
            study.accession_number, study.study_id, study.description, study.referring_physician) == (
        site.id, patient.id, study_uid, "20240131", "093000", "A1", "S7", str(first.StudyDescription), "Ref^Doc")
    assert (study.num_series, study.num_instances, study.modalities) == (2, 4, "CR\\CT")
    assert json.loads(study.attributes_json) == json.loads(level_json(objs[0].metadata, STUDY_TAGS))
    assert (ct.site_id, ct.study_fk, ct.series_uid, ct.modality, ct.series_number, ct.description, ct.body_part,
            ct.pps_start_date, ct.pps_start_time, ct.num_instances) == (
        site.id, study.id, objs[0].series_uid, "CT", 1, "Axial 5mm", "HEAD", "20240131", "093512", 3)
    assert json.loads(ct.attributes_json) == json.loads(level_json(objs[0].metadata, SERIES_TAGS))
    assert (cr.series_uid, cr.modality, cr.num_instances) == (objs[3].series_uid, "CR", 1)
    for raw, obj, row, series in zip(raws, objs, rows, [ct, ct, ct, cr], strict=True):
        assert row.sop_uid == obj.sop_instance_uid and row.series_fk == series.id and row.site_id == site.id
        assert row.sop_class_uid == obj.sop_class_uid
        assert json.loads(row.metadata_json) == json.loads(json.dumps(obj.metadata))
        assert json.loads(row.frames_json) == [[list(f) for f in frame] for frame in obj.frames]
        assert (row.instance_number, row.rows, row.columns, row.number_of_frames) == (
            int(obj.dataset.InstanceNumber), obj.rows, obj.columns, 1)
        assert (row.source_ae, row.size, row.transfer_syntax_uid) == ("CT_NODE", len(raw), obj.transfer_syntax_uid)
        assert ctx.blobs.path(row.blob_key).read_bytes()[132:] == raw[132:] and row.received_at is not None


def _as_received_by_c_store(raw: bytes) -> bytes:
    """The file telerad's DIMSE receiver writes for ``raw``'s Data Set: its own File Meta (PS3.10 7.1)."""
    meta = parse.file_meta_elements(raw)
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID) + raw[meta.end:]


@pytest.mark.parametrize("second", ["file", "implicit", "deflated"])
def test_the_same_instance_in_another_file_or_native_encoding_is_a_duplicate(ctx, site, second):
    """Received by C-STORE first, then sent again from the site's own file (other File Meta: an import, STOW-RS)
    or re-encoded losslessly by another sender: the same instance, so success and nothing new indexed."""
    original = open(get_testdata_file("CT_small.dcm"), "rb").read()
    first = _as_received_by_c_store(original)
    again = {"file": original, "implicit": rewritten(original, ImplicitVRLittleEndian),
             "deflated": rewritten(original, DeflatedExplicitVRLittleEndian)}[second]
    assert first != again
    assert store(ctx, site.id, first, "GH_CT").outcome is Outcome.STORED
    r = store(ctx, site.id, again, "import")
    assert r.outcome is Outcome.DUPLICATE and r.ok and r.status == 0, r
    assert count(ctx, Instance) == 1 and count(ctx, StoreConflict) == 0
    with ctx.db.session() as s:
        inst = s.execute(select(Instance)).scalar_one()
        study = s.execute(select(Study)).scalar_one()
    assert ctx.blobs.path(inst.blob_key).read_bytes() == first  # the first copy is the one kept and served
    assert study.num_instances == 1
    assert store(ctx, site.id, again, "import").outcome is Outcome.DUPLICATE  # and so every time after


@pytest.mark.parametrize("second", ["other attribute", "compressed"])
def test_other_content_under_a_stored_uid_is_still_a_conflict(ctx, site, second):
    """Another file of the same UID whose Data Set differs (an attribute; pixel data in another, encapsulated
    transfer syntax, which is not decoded to be compared) stays a conflict: first copy kept, sender told."""
    if second == "compressed":
        original = open(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), "rb").read()
        ds = pydicom.dcmread(io.BytesIO(original))
        ds.decompress(generate_instance_uid=False)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        first, again = buf.getvalue(), original
    else:
        first = open(get_testdata_file("CT_small.dcm"), "rb").read()
        again = rewritten(first, ImplicitVRLittleEndian, PatientName="Other^Patient")
    assert store(ctx, site.id, first, "GH_CT").outcome is Outcome.STORED
    r = store(ctx, site.id, again, "import")
    assert r.outcome is Outcome.CONFLICT and r.status == DUPLICATE_SOP_INSTANCE, r
    with ctx.db.session() as s:
        conflict = s.execute(select(StoreConflict)).scalar_one()
        inst = s.execute(select(Instance)).scalar_one()
    assert conflict.kept_blob_key == inst.blob_key and conflict.source == "import"
    assert ctx.blobs.path(inst.blob_key).read_bytes()[128:] == first[128:]


def test_a_kept_file_that_cannot_be_read_makes_a_conflict_not_a_success(ctx, site):
    original = open(get_testdata_file("CT_small.dcm"), "rb").read()
    assert store(ctx, site.id, original).ok
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key)).scalar_one()
    ctx.blobs.path(key).unlink()  # lost from the store (telerad check reports it missing)
    r = store(ctx, site.id, rewritten(original), "import")
    assert r.outcome is Outcome.CONFLICT and not r.ok


def test_a_found_blob_removed_while_indexed_is_written_again_before_success(ctx, site, monkeypatch):
    """The content is in the store but indexed by nothing (an orphan): the store claims it and indexes it; a
    collection takes the file in that moment (the claim's path lookup done, its timestamp not yet). The blob
    is written again before the sender hears of success."""
    raw = ct_series(PATIENT, generate_uid(), "A9", 1, 16)[0]
    key, _ = ctx.blobs.put(raw)
    real_claim, claims = ctx.blobs.claim, []

    def claim_then_collected(k: str) -> bool:
        claimed = real_claim(k)
        if not claims:  # the first claim, before indexing: then the file goes
            ctx.blobs.path(k).unlink()
        claims.append(claimed)
        return claimed

    monkeypatch.setattr(ctx.blobs, "claim", claim_then_collected)
    r = store(ctx, site.id, raw)
    assert r.outcome is Outcome.STORED, r
    assert claims[0] is True  # found stored and claimed, then gone: written again after the commit
    assert ctx.blobs.verify(key) and ctx.blobs.path(key).read_bytes() == raw
