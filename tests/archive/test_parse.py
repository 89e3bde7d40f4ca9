"""parse_object: values read from the object's DICOM JSON, the dataset as the fallback for malformed ones."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series
from telerad.archive.errors import CANNOT_UNDERSTAND, RejectedObject
from telerad.archive.parse import parse_object

PATIENT = ("Parse^Pat", "P1", "19700101", "F")
CAPS = {"max_rows": 4096, "max_columns": 4096, "max_frames": 1000}


def _with(raw: bytes, **attrs: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _one() -> bytes:
    return ct_series(PATIENT, generate_uid(), "A1", 1, 16)[0]


def test_index_values_and_uids_match_the_dataset():
    raw = _with(_one(), InstanceNumber=7)
    obj = parse_object(raw, **CAPS)
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert (obj.instance_number, obj.rows, obj.columns, obj.number_of_frames) == (7, 16, 16, 1)
    assert (obj.sop_class_uid, obj.sop_instance_uid, obj.study_uid, obj.series_uid) == (
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert obj.frames == [[(len(raw) - 16 * 16 * 2, 16 * 16 * 2)]]


def test_absent_or_malformed_numbers_index_as_none():
    assert parse_object(_with(_one(), InstanceNumber=None), **CAPS).instance_number is None
    good = _with(_one(), InstanceNumber=12)
    element = b"\x20\x00\x13\x00IS\x02\x0012"  # (0020,0013) IS "12", explicit VR little endian
    assert good.count(element) == 1
    malformed = good.replace(element, element[:-2] + b"1A")  # not an IS: left out of the JSON, None indexed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = parse_object(malformed, **CAPS)
    assert obj.instance_number is None and "00200013" not in obj.metadata


@pytest.mark.parametrize("value, reason", [("", "missing SOPInstanceUID"),
                                           ("1.2.3.x", "invalid SOPInstanceUID: '1.2.3.x'")])
def test_missing_or_invalid_uids_are_refused(value, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = _with(_one(), SOPInstanceUID=value)
    with pytest.raises(RejectedObject) as exc:
        parse_object(raw, **CAPS)
    assert (exc.value.status, exc.value.reason) == (CANNOT_UNDERSTAND, reason)


def _outcome(raw: bytes) -> tuple[object, ...]:
    try:
        obj = parse_object(raw, **CAPS)
    except RejectedObject as exc:
        return ("rejected", exc.status)
    except Exception as exc:  # noqa: BLE001 - ingest refuses these as processing failures; compared by type
        return ("raised", type(exc).__name__)
    return (obj.data, obj.sop_class_uid, obj.sop_instance_uid, obj.study_uid, obj.series_uid,
            obj.transfer_syntax_uid, obj.metadata, obj.frames, obj.number_of_frames, obj.instance_number,
            obj.rows, obj.columns)


def test_the_lean_header_read_gives_what_dcmread_gives(monkeypatch):
    """Every file of pydicom's test data parses to the same index values, DICOM JSON and frame positions (or
    the same refusal) whether its header is read by telerad.archive.parse._read_lean or by pydicom.dcmread."""
    from pathlib import Path

    from telerad.archive import parse

    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file())
    assert len(files) > 100
    raws = [p.read_bytes() for p in files]
    lean_read = parse._read_lean
    used = []

    def counting(data: bytes):
        found = lean_read(data)
        used.append(found is not None)
        return found

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(parse, "_read_lean", counting)
        lean = [_outcome(raw) for raw in raws]
        monkeypatch.setattr(parse, "_read_lean", lambda data: None)
        full = [_outcome(raw) for raw in raws]
    lean_used = sum(used)
    assert lean_used > 50  # most of them take the lean read
    differ = [str(p.name) for p, a, b in zip(files, lean, full, strict=True) if a != b]
    assert differ == []
