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
def test_lossless_native_encodings_of_one_data_set_are_the_same_instance(a, b):
    assert same_instance(written("MR_small.dcm", a), written("MR_small.dcm", b))


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
    broken = ct[:400]  # the same File Meta, then a cut Data Set in another encoding: unreadable, not the same
    assert not same_instance(written("CT_small.dcm", ImplicitVRLittleEndian), broken)
