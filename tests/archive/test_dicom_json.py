"""The cached DICOM JSON conversion returns exactly what pydicom's own ``to_json_dict`` returns."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from telerad.archive import dicom_json

TEST_FILES = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file())


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)


def _bulk(elem: Any) -> str:
    return f"bulk/{elem.tag:08X}"


def _pydicom(data: bytes) -> str:
    return json.dumps(_read(data).to_json_dict(1024, _bulk, suppress_invalid_tags=True))


def _ours(data: bytes) -> str:
    return json.dumps(dicom_json.to_json_dict(_read(data), 1024, _bulk))


def _readable() -> list[tuple[str, bytes]]:
    out = []
    for path in TEST_FILES:
        data = path.read_bytes()
        try:
            _pydicom(data)
        except Exception:
            continue  # not a data set pydicom reads (the parser rejects these before any JSON is made)
        out.append((path.name, data))
    return out


@pytest.fixture(autouse=True)
def _cold_cache():
    dicom_json._cache.clear()
    yield
    dicom_json._cache.clear()


def test_every_pydicom_test_file_converts_as_pydicom_does_with_a_cache_warmed_by_all_of_them():
    files = _readable()
    assert len(files) > 100
    for _, data in files:  # warm: every file's values in the cache, so each file is also read with others'
        _ours(data)
    assert len(dicom_json._cache) > 1000  # the comparison below really goes through cached entries
    different = [name for name, data in files if _ours(data) != _pydicom(data)]
    assert different == []


def _ct(**values: Any) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = values.pop("ts", ExplicitVRLittleEndian)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_repeated_elements_come_from_the_cache():
    first = dicom_json.to_json_dict(_read(_ct(PatientName="Doe^Jane", Rows=512)), 1024, _bulk)
    second = dicom_json.to_json_dict(_read(_ct(PatientName="Doe^Jane", Rows=512)), 1024, _bulk)
    assert second["00100010"] is first["00100010"] and second["00280010"] is first["00280010"]
    assert second["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}


def test_the_same_bytes_under_another_character_set_are_decoded_again():
    # b"Ren\xc3\xa9e^Jo" is "Renée^Jo" in UTF-8 (ISO_IR 192) and "RenÃ©e^Jo" in Latin-1 (ISO_IR 100)
    utf8 = _ct(SpecificCharacterSet="ISO_IR 192", PatientName="Ren\u00e9e^Jo")
    latin1 = _ct(SpecificCharacterSet="ISO_IR 100", PatientName="Ren\u00c3\u00a9e^Jo")
    assert b"Ren\xc3\xa9e^Jo" in utf8 and b"Ren\xc3\xa9e^Jo" in latin1
    for data in (utf8, latin1, utf8):  # each read after the other filled the cache
        assert _ours(data) == _pydicom(data)
    names = [json.loads(_ours(d))["00100010"]["Value"][0]["Alphabetic"] for d in (utf8, latin1)]
    assert names == ["Ren\u00e9e^Jo", "Ren\u00c3\u00a9e^Jo"]


def test_an_ambiguous_implicit_vr_follows_pixel_representation_not_the_cache():
    # (0028,0106) Smallest Image Pixel Value is "US or SS" (PS3.6): the same two bytes are 65535 or -1
    unsigned = _ct(ts=ImplicitVRLittleEndian, PixelRepresentation=0, SmallestImagePixelValue=65535)
    signed = unsigned.replace(b"\x03\x01\x02\x00\x00\x00\x00\x00", b"\x03\x01\x02\x00\x00\x00\x01\x00")
    assert signed != unsigned
    for data in (unsigned, signed, unsigned):
        assert _ours(data) == _pydicom(data)
    assert json.loads(_ours(signed))["00280106"]["Value"] == [-1]
    assert json.loads(_ours(unsigned))["00280106"]["Value"] == [65535]


def test_implicit_vr_public_elements_are_cached_with_the_dictionary_vr():
    data = _ct(ts=ImplicitVRLittleEndian, Rows=256, PatientID="P1")
    first = dicom_json.to_json_dict(_read(data), 1024, _bulk)
    again = dicom_json.to_json_dict(_read(data), 1024, _bulk)
    assert again["00280010"] is first["00280010"] and first["00280010"] == {"vr": "US", "Value": [256]}
    assert _ours(data) == _pydicom(data)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(dicom_json, "MAX_ENTRIES", 8)
    for i in range(20):
        dicom_json.to_json_dict(_read(_ct(PatientID=f"P{i}", InstanceNumber=i)), 1024, _bulk)
        assert len(dicom_json._cache) <= 8
