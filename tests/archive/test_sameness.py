"""Whether two Part 10 files hold the same instance: Data Sets compared, File Meta never."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from support import rewritten

from telerad.archive import sameness
from telerad.archive.sameness import same_instance


def written(name: str, transfer_syntax: str = "", **attributes: object) -> bytes:
    return rewritten(original(name), transfer_syntax, **attributes)


def original(name: str) -> bytes:
    return open(get_testdata_file(name), "rb").read()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"])
def test_files_differing_in_file_meta_only_hold_the_same_instance(name):
    other = written(name)
    assert other != original(name)
    assert same_instance(original(name), other) and same_instance(other, original(name))


@pytest.mark.parametrize("a, b", [(ImplicitVRLittleEndian, ExplicitVRLittleEndian),
                                  (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian),
                                  (DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian)])
@pytest.mark.parametrize("name", ["MR_small.dcm", "rtplan.dcm"])  # rtplan: nested sequences
def test_lossless_native_encodings_of_one_data_set_are_the_same_instance(a, b, name):
    assert same_instance(written(name, a), written(name, b))


def test_a_value_changed_inside_a_sequence_is_another_instance():
    ds = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    ds.BeamSequence[0].BeamName = "Another beam"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert not same_instance(original("rtplan.dcm"), buf.getvalue())
    assert not same_instance(written("rtplan.dcm", ExplicitVRLittleEndian), rewritten(buf.getvalue(),
                                                                                      ImplicitVRLittleEndian))


def _with_raw(name: str, transfer_syntax: str, **raw_values: tuple[str, bytes]) -> bytes:
    """``name`` written in ``transfer_syntax`` with elements set to raw bytes (keyword=(VR, bytes))."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    for keyword, (vr, value) in raw_values.items():
        ds.add_new(keyword, vr, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("charset, first, second", [
    # Latin-1 bytes in a file that says UTF-8: pydicom decodes both names to the same replacement characters
    ("ISO_IR 192", b"M\xfcller^Hans", b"M\xf6ller^Hans"),
    ("ISO 2022 IR 87", b"M\xfcller^Hans", b"M\xf6ller^Hans"),
])
def test_values_are_compared_as_encoded_never_decoded(charset, first, second):
    one = _with_raw("CT_small.dcm", ImplicitVRLittleEndian, SpecificCharacterSet=("CS", charset),
                    PatientName=("PN", first))
    other = _with_raw("CT_small.dcm", ExplicitVRLittleEndian, SpecificCharacterSet=("CS", charset),
                      PatientName=("PN", second))
    same_name = _with_raw("CT_small.dcm", ExplicitVRLittleEndian, SpecificCharacterSet=("CS", charset),
                          PatientName=("PN", first))
    assert not same_instance(one, other)
    assert same_instance(one, same_name)


def test_numbers_in_strings_are_compared_as_written():
    """DS "0" and "-0", or two integers beyond a double's precision, are equal as numbers, not as values."""
    for a, b in ((b"0 ", b"-0"), (b"9007199254740993", b"9007199254740992")):
        one = _with_raw("CT_small.dcm", ImplicitVRLittleEndian, SliceThickness=("DS", a))
        other = _with_raw("CT_small.dcm", ExplicitVRLittleEndian, SliceThickness=("DS", b))
        assert not same_instance(one, other)


def test_a_changed_attribute_is_another_instance_whatever_the_encoding():
    assert not same_instance(original("CT_small.dcm"), written("CT_small.dcm", PatientName="Changed^Name"))
    assert not same_instance(original("CT_small.dcm"),
                             written("CT_small.dcm", ImplicitVRLittleEndian, PatientName="Changed^Name"))


def test_big_endian_is_not_decoded_to_be_compared():
    """Explicit VR Big Endian (retired) is outside the encodings compared value by value: a conflict."""
    big = original("ExplVR_BigEnd.dcm")
    assert pydicom.dcmread(io.BytesIO(big)).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    ds = pydicom.dcmread(io.BytesIO(big))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    little = io.BytesIO()
    pydicom.dcmwrite(little, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    assert not same_instance(big, little.getvalue())
    assert same_instance(big, written("ExplVR_BigEnd.dcm"))  # its File Meta aside, the same bytes


def test_what_is_not_a_part10_file_is_never_the_same():
    ct = original("CT_small.dcm")
    assert not same_instance(ct, b"not dicom")
    assert not same_instance(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00", ct)


def test_a_data_set_that_cannot_be_read_is_never_the_same(monkeypatch):
    """The other encoding of the same data set, but reading one fails: not shown to be the same."""
    implicit, explicit = written("CT_small.dcm", ImplicitVRLittleEndian), original("CT_small.dcm")
    assert same_instance(implicit, explicit)
    real_read = sameness._read

    def failing(part10: bytes) -> object:
        if part10 is implicit:
            raise ValueError("cannot read")
        return real_read(part10)

    monkeypatch.setattr(sameness, "_read", failing)
    assert not same_instance(implicit, explicit)
