"""The Part 10 header (PS3.10 7.1: preamble, "DICM", File Meta Information) that turns a received C-STORE Data
Set into a file, encoded directly.

The bytes are the same as pynetdicom's ``create_file_meta`` + ``encode_file_meta`` produce (and so as its
``Event.encoded_dataset()`` on the pynetdicom path): an object is stored under the SHA-256 of its bytes, and a
resend over either path must hash the same to be recognised as a duplicate. Building a ``FileMetaDataset`` and
writing it through pydicom cost ~0.65 ms of interpreter time per object on the ingest path (measured on the
bench machine); this costs a few microseconds. Explicit VR Little Endian, elements in tag order (PS3.10 7.1,
PS3.5 7.1.2); UI values are padded with NUL and SH with a space to an even length (PS3.5 6.2).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE_AND_PREFIX = b"\x00" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")  # tag group, element, VR, 16-bit length (PS3.5 7.1.2)
_VERSION = struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01"  # (0002,0001) OB, 4-byte length


def _short(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if len(value) > 0xFFFF:
        raise ValueError(f"(0002,{element:04X}) value of {len(value)} bytes does not fit in a File Meta element")
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


_IMPLEMENTATION = (_short(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\x00")
                   + _short(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" "))


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information for a Data Set of this SOP Class/Instance in this transfer
    syntax; ValueError for a value that cannot be encoded (empty, not ASCII, or too long).

    Values are stripped of surrounding whitespace, as pydicom's ``UID`` does for pynetdicom's path."""
    values = []
    for name, uid in (("SOP Class", sop_class_uid), ("SOP Instance", sop_instance_uid),
                      ("Transfer Syntax", transfer_syntax_uid)):
        uid = uid.strip()
        if not uid:
            raise ValueError(f"no Media Storage {name} UID for the File Meta Information")
        try:
            values.append(uid.encode("ascii"))
        except UnicodeEncodeError:
            raise ValueError(f"the {name} UID {uid[:80]!r} is not ASCII") from None
    body = b"".join((
        _VERSION,
        _short(0x0002, b"UI", values[0], b"\x00"),
        _short(0x0003, b"UI", values[1], b"\x00"),
        _short(0x0010, b"UI", values[2], b"\x00"),
        _IMPLEMENTATION,
    ))
    group_length = _SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body))
    return _PREAMBLE_AND_PREFIX + group_length + body
