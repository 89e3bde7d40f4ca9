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
