"""DICOM Upper Layer framing (PS3.8 9.3) and DIMSE command sets (PS3.7 6.3, E.1) on a blocking socket.

Used by the lean storage path (:mod:`.lean`): whole PDUs are read with ``recv_into`` straight into one buffer
per PDU, Presentation Data Values are sliced out of it without copies, and the few command sets a Storage
SCP answers are encoded here. Association negotiation PDUs themselves are decoded and encoded with
pynetdicom's PDU classes (:mod:`pynetdicom.pdu`); this module only does what is on the per-object data path.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

# PDU types (PS3.8 Table 9-11 ff.)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT_RQ = range(1, 8)
PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")

# A-ABORT provider reasons (PS3.8 Table 9-26) when the source is 2, the service provider.
REASON_NOT_SPECIFIED = 0x00
UNRECOGNISED_PDU = 0x01
UNEXPECTED_PDU = 0x02
INVALID_PARAMETER = 0x06

# Fragment size when the peer announces no limit (Maximum Length Received 0): a whole multi-gigabyte object
# in one PDU would need a length field over 32 bits and that much more memory.
NO_LIMIT_FRAGMENT = 16 << 20

RELEASE_RP_PDU = bytes((RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))


class ProtocolError(Exception):
    """The peer broke the protocol; the association is aborted with ``reason`` (PS3.8 Table 9-26)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The transport connection closed (PS3.8 Evt17)."""


def abort_pdu(reason: int = REASON_NOT_SPECIFIED, source: int = 2) -> bytes:
    """A-ABORT (PS3.8 9.3.8): source 0 service user, 2 service provider."""
    return struct.pack(">BxIxxBB", ABORT_RQ, 4, source, reason if source == 2 else 0)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise PeerClosed("connection closed by the peer")
        got += k
    return buf


def read_pdu(sock: socket.socket, max_length: int) -> tuple[int, bytearray]:
    """Read one PDU: its type and variable part. ``max_length`` bounds the PDU length field.

    Each PDU gets a new buffer, never reused: :mod:`.lean` keeps views of received Data Set fragments in it
    until the object is stored (a buffer pool here would corrupt stored objects)."""
    pdu_type, length = PDU_HEADER.unpack(recv_exact(sock, PDU_HEADER.size))
    if not ASSOCIATE_RQ <= pdu_type <= ABORT_RQ:
        raise ProtocolError(UNRECOGNISED_PDU, f"unrecognised PDU type 0x{pdu_type:02X}")
    if length > max_length:
        raise ProtocolError(INVALID_PARAMETER, f"PDU of {length} bytes exceeds the maximum of {max_length}")
    return pdu_type, recv_exact(sock, length)


def pdvs(body: bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """The Presentation Data Value items of a P-DATA-TF (PS3.8 9.3.5.1, E.2):
    (presentation context id, message control header, fragment)."""
    view = memoryview(body)
    pos, end = 0, len(body)
    if end == 0:
        raise ProtocolError(INVALID_PARAMETER, "P-DATA-TF without a Presentation Data Value item")
    while pos < end:
        if end - pos < _PDV_HEADER.size:
            raise ProtocolError(INVALID_PARAMETER, "truncated Presentation Data Value item")
        length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError(INVALID_PARAMETER, f"Presentation Data Value item length {length} is invalid")
        yield context_id, control, view[pos + 6: pos + 4 + length]
        pos += 4 + length


def p_data_pdus(context_id: int, data: bytes | memoryview, *, command: bool, peer_max: int) -> Iterator[bytes]:
    """P-DATA-TF PDUs carrying ``data`` in fragments that fit the peer's Maximum Length Received
    (PS3.8 D.1: the variable field of a P-DATA-TF; 0 means no limit), one PDV each (PS3.8 E.2 control
    header: bit 0 command, bit 1 last fragment)."""
    for head, chunk in p_data_parts(context_id, data, command=command, peer_max=peer_max):
        yield head + chunk


def p_data_parts(context_id: int, data: bytes | memoryview, *, command: bool,
                 peer_max: int) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """:func:`p_data_pdus` as (PDU and PDV headers, fragment) pairs: the fragments are slices of ``data``,
    for a gathering write that copies nothing."""
    room = NO_LIMIT_FRAGMENT if peer_max == 0 else max(peer_max - 6, 1)
    pos = 0
    while True:
        chunk = data[pos:pos + room]
        pos += len(chunk)
        control = (1 if command else 0) | (2 if pos >= len(data) else 0)
        yield _PDV_HEAD.pack(P_DATA_TF, 6 + len(chunk), 2 + len(chunk), context_id, control), chunk
        if pos >= len(data):
            return


_PDV_HEAD = struct.Struct(">BxIIBB")  # PDU type, reserved, PDU length; PDV item length, context id, control


# -- DIMSE command sets: group 0000, Implicit VR Little Endian (PS3.7 6.3.1, E.1) ------------------------
_ELEMENT = struct.Struct("<HHI")
US = struct.Struct("<H")
UL = struct.Struct("<I")

AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023  # Number of ... Sub-operations
NO_DATA_SET = 0x0101


def decode_command(data: bytes) -> dict[int, bytes]:
    """Element number -> raw value of a command set. Elements outside group 0000 are a protocol error."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _ELEMENT.size:
            raise ProtocolError(INVALID_PARAMETER, "truncated command set")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += _ELEMENT.size
        if group != 0 or pos + length > end:
            raise ProtocolError(INVALID_PARAMETER, "malformed command set")
        out[element] = bytes(data[pos:pos + length])
        pos += length
    return out


def command_us(command: dict[int, bytes], element: int) -> int | None:
    raw = command.get(element)
    return US.unpack(raw)[0] if raw is not None and len(raw) == 2 else None


def command_text(command: dict[int, bytes], element: int) -> str:
    return command.get(element, b"").decode("ascii", "replace").rstrip("\0 ")


def encode_command(elements: dict[int, int | str]) -> bytes:
    """Encode a command set; ``int`` values are US, ``str`` values UI (NUL padded) or, for the Error Comment,
    LO (space padded). The Command Group Length (0000,0000) is added."""
    body = bytearray()
    for element in sorted(elements):
        value = elements[element]
        if isinstance(value, int):
            raw = US.pack(value)
        else:
            raw = value.encode("ascii", "replace")
            if len(raw) % 2:
                raw += b" " if element == ERROR_COMMENT else b"\0"
        body += _ELEMENT.pack(0, element, len(raw)) + raw
    return _ELEMENT.pack(0, 0, 4) + UL.pack(len(body)) + bytes(body)
