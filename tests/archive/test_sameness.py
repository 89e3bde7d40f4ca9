"""Whether two Part 10 files hold the same instance: Data Sets compared, File Meta never."""

from __future__ import annotations

import io
import struct

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

from telerad.adapters.dimse.filemeta import part10_header
from telerad.archive import parse, sameness
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
    meta_end = parse.file_meta_elements(big).end
    other_meta = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRBigEndian) + big[meta_end:]
    assert other_meta != big and same_instance(big, other_meta)  # its File Meta aside, the same bytes
    assert not same_instance(big, written("ExplVR_BigEnd.dcm"))  # written again (no Group Lengths): not walked


def test_what_is_not_a_part10_file_is_never_the_same():
    ct = original("CT_small.dcm")
    assert not same_instance(ct, b"not dicom")
    assert not same_instance(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00", ct)


def test_a_data_set_that_cannot_be_read_is_never_the_same(monkeypatch):
    """The other encoding of the same data set, but reading one fails: not shown to be the same."""
    implicit, explicit = written("CT_small.dcm", ImplicitVRLittleEndian), original("CT_small.dcm")
    assert same_instance(implicit, explicit)
    real_walk = sameness._walk

    def failing(body: bytes, ts: str) -> object:
        if ts == ImplicitVRLittleEndian:
            raise ValueError("cannot read")
        return real_walk(body, ts)

    monkeypatch.setattr(sameness, "_walk", failing)
    assert not same_instance(implicit, explicit)


@pytest.mark.parametrize("one, other", [(("US", 65535), ("SS", -1)), (("FL", 1.0), ("UL", 1065353216)),
                                        (("LO", ["a", "b"]), ("LT", "a\\b"))])
def test_the_same_bytes_under_another_vr_are_another_value(one, other):
    """Both files write their VRs (Explicit VR): FFFFH is 65535 as US and -1 as SS, 0000803FH 1.0 as FL and
    1065353216 as UL, "a\\b" two values as LO and one text as LT. Written without VRs (Implicit VR), the
    element has only its bytes, which are the same."""
    first, second = _private(*one), _private(*other)
    assert _private_value_bytes(first) == _private_value_bytes(second)
    assert not same_instance(first, second)
    assert same_instance(first, rewritten(first, ImplicitVRLittleEndian))


def _private(vr: str, value: object) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.private_block(0x0011, "TELERAD TEST", create=True).add_new(0x01, vr, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _private_value_bytes(part10: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(part10))
    return ds.get_item(ds.private_block(0x0011, "TELERAD TEST").get_tag(0x01)).value


@pytest.mark.parametrize("tail", [b"\x01\x02\x03\x04", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\x10\x00\x10\x00\x02\x00AB"])
def test_bytes_pydicom_would_not_read_make_it_another_file(tail):
    """Trailing bytes too short for an element, or a stray Item Delimitation Item followed by more elements:
    pydicom stops reading quietly, so what follows would go uncompared."""
    implicit = written("CT_small.dcm", ImplicitVRLittleEndian)
    assert same_instance(implicit, original("CT_small.dcm"))
    assert not same_instance(implicit, original("CT_small.dcm") + tail)
    deflated = written("CT_small.dcm", DeflatedExplicitVRLittleEndian)
    assert same_instance(implicit, deflated)
    assert not same_instance(implicit, deflated + b"\x01\x02")


def test_a_tag_twice_is_never_the_same():
    """pydicom keeps the last of a repeated tag: a file whose Patient's Name comes first as the original's and
    again as another one's would read as the other."""
    other = written("CT_small.dcm", ImplicitVRLittleEndian, PatientName="Other")
    twice = original("CT_small.dcm") + b"\x10\x00\x10\x00PN\x06\x00Other "
    assert pydicom.dcmread(io.BytesIO(twice)).PatientName == "Other"
    assert not same_instance(other, twice)


# Data Sets written byte by byte (Explicit VR Little Endian), for what no writer library would produce.
UNDEFINED = 0xFFFFFFFF


def _element(tag: int, vr: str, value: bytes) -> bytes:
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):  # PS3.5 7.1.2
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _sequence(items: list[bytes], undefined: bool, tail: bytes = b"") -> bytes:
    value = b"".join(items) + tail
    if undefined:
        return (struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, UNDEFINED) + value
                + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return _element(0x00081140, "SQ", value)


def _item(content: bytes, undefined: bool = False, tag: int = 0xFFFEE000) -> bytes:
    if undefined:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, UNDEFINED) + content + struct.pack("<HHI", 0xFFFE,
                                                                                                 0xE00D, 0)
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(content)) + content


def _part10(sequence: bytes) -> bytes:
    body = (_element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0") + _element(0x00080018, "UI", b"1.2.3.4\0")
            + sequence + _element(0x00100010, "PN", b"Doe^John"))
    return part10_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", ExplicitVRLittleEndian) + body


REFERENCE = _element(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2\0") + _element(0x00081155, "UI", b"1.2.5\0")


def test_sequences_compare_by_content_whatever_their_lengths_encoding():
    defined = _part10(_sequence([_item(REFERENCE)], undefined=False))
    undefined = _part10(_sequence([_item(REFERENCE, undefined=True)], undefined=True))
    assert defined != undefined and same_instance(defined, undefined)


@pytest.mark.parametrize("other", [
    _sequence([_item(_element(0x00081150, "UI", b"9.9\0") + REFERENCE)], undefined=False),  # a tag twice
    _sequence([_item(REFERENCE + b"\x01\x02\x03\x04")], undefined=False),  # bytes after its last element
    _sequence([_item(REFERENCE)], undefined=False, tail=struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) + _item(b"")),
    _sequence([_item(REFERENCE, tag=0x12345678)], undefined=True),  # not an item
    _sequence([_item(REFERENCE, undefined=True)[:-8]], undefined=True),  # its delimiter missing
], ids=["tag-twice", "stray-bytes", "delimiter-then-item", "not-an-item", "no-item-delimiter"])
def test_what_a_sequence_holds_beyond_its_items_is_never_the_same(other):
    """pydicom reads each of these quietly as the plain sequence (the last of a repeated tag, the items before a
    stray delimiter); walked strictly, each is another file."""
    plain = _part10(_sequence([_item(REFERENCE)], undefined=False))
    assert not same_instance(plain, _part10(other))


def test_sequences_nested_past_any_real_object_are_refused_not_raised():
    """Each level of a sequence is a few stack frames: 400 levels would exhaust Python's stack."""
    nested = _item(b"")
    for _ in range(400):
        nested = _item(_sequence([nested], undefined=True), undefined=True)
    deep = _part10(_sequence([nested], undefined=True))
    assert not same_instance(deep, _part10(_sequence([nested], undefined=False)))
    assert same_instance(deep, deep[:128] + b"DICM" + deep[132:])  # the same bytes are the same, unwalked


@pytest.mark.parametrize("hidden", [
    _element(0x00100000, "UT", b"Doe^Jane: another patient "),  # an element 0000 that is no Group Length
    _element(0x00110000, "SQ", _item(_element(0x00100010, "PN", b"Other "))),
])
def test_only_a_real_group_length_is_left_out(hidden):
    plain = _part10(_sequence([_item(REFERENCE)], undefined=False))
    body_at = parse.file_meta_elements(plain).end
    group_length = struct.pack("<HH2sHI", 0x0008, 0x0000, b"UL", 4, 999)
    with_group_length = plain[:body_at] + group_length + plain[body_at:]
    assert same_instance(plain, with_group_length)  # a Group Length only encodes the Data Set
    with_hidden = plain + hidden
    assert not same_instance(plain, with_hidden)


def test_a_written_vr_that_is_not_the_attributes_makes_it_another_file():
    """Rows (0028,0010) is US: written as SS, FFFFH is -1, against 65535 in a file without VRs."""
    implicit = rewritten(original("CT_small.dcm"), ImplicitVRLittleEndian, Rows=65535)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00280010, "SS", -1)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert not same_instance(implicit, buf.getvalue())
    assert same_instance(implicit, rewritten(original("CT_small.dcm"), ExplicitVRLittleEndian, Rows=65535))


def test_trailing_padding_is_left_out_only_as_the_last_element():
    plain = _part10(_sequence([_item(REFERENCE)], undefined=False))
    padding = _element(0xFFFCFFFC, "OB", b"anything at all ")
    at = parse.file_meta_elements(plain).end
    assert same_instance(plain, plain + padding)
    assert not same_instance(plain, plain[:at] + padding + plain[at:])


def test_an_implicit_data_set_pydicom_would_read_as_explicit_is_never_the_same():
    """pydicom takes a Data Set whose first element looks like an Explicit VR header for Explicit VR, whatever
    the File Meta says; what it indexed may then differ from what a walk as Implicit VR would compare."""
    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    body = (implicit(0x00080016, b"1.2.840.10008.5.1.4.1.1.7\0") + implicit(0x00080018, b"1.2.3.4\0")
            + implicit(0x00100010, b"Doe^John"))
    header = part10_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", ImplicitVRLittleEndian)
    kept = header + body
    assert same_instance(kept, header + body + implicit(0xFFFCFFFC, b"\0" * 4))  # padding last: left out
    crafted = header + b"\xfc\xff\xfc\xffUS\x00\x00" + b"\x00" * 0x5355 + body  # padding first, read as US
    assert not same_instance(kept, crafted)
