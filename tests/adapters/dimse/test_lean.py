"""The lean Storage SCP (adapters/dimse/lean.py): which associations it serves, and how it answers fragmented
PDUs, oversize objects, unsupported commands and protocol errors. Peers: pynetdicom as SCU, and raw sockets for
what no well-behaved SCU sends. (DCMTK storescu/echoscu go through this path in test_store/test_association.)"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO

import pydicom
import pytest
from adapters.dimse.dimse_support import GH_AE
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import select

from telerad.adapters.dimse.server import DimseServer, start_dimse
from telerad.archive.demo import ct_series
from telerad.context import Context
from telerad.db.models import Instance

PATIENT = ("Lean^Pat", "LN1", "19700101", "F")


def _ct(size: int, slices: int = 1) -> list[Dataset]:
    return [pydicom.dcmread(BytesIO(b)) for b in ct_series(PATIENT, generate_uid(), "ACC", slices, size=size)]


def _associate(ctx: Context, *contexts: str, max_pdu: int = 16382) -> object:
    ae = AE(ae_title=GH_AE)
    ae.maximum_pdu_size = max_pdu
    for uid in contexts:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)
    assert assoc.is_established
    return assoc


def _stored(ctx: Context) -> list[str]:
    with ctx.db.session() as s:
        return list(s.execute(select(Instance.sop_uid).order_by(Instance.id)).scalars())


def test_store_only_association_is_served_on_the_lean_path(ctx: Context, dimse: DimseServer, gh_node: str) -> None:
    assoc = _associate(ctx, CTImageStorage, Verification)
    ds = _ct(32)[0]
    assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert dimse.lean is not None and dimse.lean.served == 1
    assert _stored(ctx) == [ds.SOPInstanceUID]


def test_association_that_also_queries_goes_to_pynetdicom(ctx: Context, dimse: DimseServer, gh_node: str) -> None:
    assoc = _associate(ctx, CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
    ds = _ct(32)[0]
    assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert dimse.lean is not None and dimse.lean.served == 0
    assert _stored(ctx) == [ds.SOPInstanceUID]


def test_lean_path_can_be_switched_off(ctx: Context, gh_node: str) -> None:
    ctx.settings.dimse_lean_store = False
    server = start_dimse(ctx)
    try:
        assert server.lean is None
        assoc = _associate(ctx, CTImageStorage)
        assert assoc.send_c_store(_ct(32)[0]).Status == 0x0000  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    finally:
        server.shutdown()
    assert len(_stored(ctx)) == 1


def test_data_set_and_response_in_many_small_pdus(ctx: Context, dimse: DimseServer, gh_node: str) -> None:
    """telerad announces 4 KB PDUs, so a 32 KB slice arrives in ~9 P-DATA-TF; the peer announces 128 bytes,
    so the C-STORE-RSP command set (~150 bytes) goes back in two fragments (PS3.8 D.1, E.2)."""
    ctx.settings.dimse_max_pdu = 4096
    slices = _ct(128, slices=2)
    assoc = _associate(ctx, CTImageStorage, max_pdu=128)
    for ds in slices:
        assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert _stored(ctx) == [ds.SOPInstanceUID for ds in slices]
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_uid == slices[1].SOPInstanceUID)).scalar_one()
    stored = pydicom.dcmread(ctx.blobs.path(key))
    assert stored.PixelData == slices[1].PixelData
    assert stored.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def test_object_over_the_size_cap_is_refused_and_the_association_goes_on(ctx: Context, dimse: DimseServer,
                                                                          gh_node: str) -> None:
    ctx.settings.max_object_bytes = 20_000
    big, small = _ct(128)[0], _ct(16)[0]  # ~33 KB and ~1.5 KB
    assoc = _associate(ctx, CTImageStorage)
    rsp = assoc.send_c_store(big)  # type: ignore[attr-defined]
    assert rsp.Status == 0xA700
    assert "exceeds the maximum of 20000 bytes" in rsp.ErrorComment
    assert assoc.send_c_store(small).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert _stored(ctx) == [small.SOPInstanceUID]


# -- raw peers ---------------------------------------------------------------------------------------------
def _rq(calling: str = GH_AE, app_context: str = "1.2.840.10008.3.1.1.1") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = app_context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "TELERAD"
    cx = PresentationContext()
    cx.context_id = 1
    cx.abstract_syntax = CTImageStorage
    cx.transfer_syntax = [ImplicitVRLittleEndian]
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return 0, b""
        head += chunk
    pdu_type, length = struct.unpack(">BxI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed inside a PDU"
        body += chunk
    return pdu_type, body


@pytest.fixture
def raw(ctx: Context, dimse: DimseServer, gh_node: str) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", ctx.settings.dicom_port), timeout=10)
    yield sock
    sock.close()


def _associated(sock: socket.socket) -> None:
    sock.sendall(_rq())
    pdu_type, _ = _read_pdu(sock)
    assert pdu_type == 0x02  # A-ASSOCIATE-AC


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">BxIIBB", 4, 6 + len(data), 2 + len(data), context_id, control) + data


def _command(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return bytes(encode(ds, True, True))


def _assert_aborted(sock: socket.socket, reason: int) -> None:
    pdu_type, body = _read_pdu(sock)
    assert (pdu_type, body[2], body[3]) == (0x07, 0x02, reason)  # A-ABORT, source: service provider
    assert sock.recv(1) == b""  # and the connection is closed


def _echo_still_works(ctx: Context) -> None:
    assoc = _associate(ctx, Verification)
    assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]


def test_wrong_application_context_is_rejected(ctx: Context, raw: socket.socket) -> None:
    raw.sendall(_rq(app_context="1.2.3.4"))
    pdu_type, body = _read_pdu(raw)
    assert (pdu_type, body[1], body[2], body[3]) == (0x03, 0x01, 0x01, 0x02)  # A-ASSOCIATE-RJ (1, 1, 2)


def test_unknown_calling_ae_is_rejected(ctx: Context, raw: socket.socket) -> None:
    raw.sendall(_rq(calling="NOBODY"))
    pdu_type, body = _read_pdu(raw)
    assert (pdu_type, body[1], body[2], body[3]) == (0x03, 0x01, 0x01, 0x03)


@pytest.mark.parametrize(("bad", "reason"), [
    (b"\x09\x00\x00\x00\x00\x02\x00\x00", 0x01),  # unrecognised PDU type
    (_pdv(99, 0x03, b"\x00" * 8), 0x06),  # a presentation context that was never accepted
    (struct.pack(">BxI", 4, 8) + struct.pack(">IBB", 100, 1, 3) + b"\x00\x00", 0x06),  # PDV longer than its PDU
    (struct.pack(">BxI", 4, 50_000_000), 0x06),  # a PDU far over the announced maximum
    (_rq(), 0x02),  # a second A-ASSOCIATE-RQ
    (_pdv(1, 0x02, b"\x08\x00\x18\x00"), 0x02),  # a Data Set fragment with no command before it
    (_pdv(1, 0x03, b"\x08\x00\x18\x00\x02\x00\x00\x00AB"), 0x06),  # a command element outside group 0000
], ids=["pdu-type", "context", "pdv-length", "pdu-length", "second-rq", "orphan-data", "command-group"])
def test_protocol_errors_abort_the_association_and_the_server_goes_on(
        ctx: Context, raw: socket.socket, bad: bytes, reason: int) -> None:
    _associated(raw)
    raw.sendall(bad)
    _assert_aborted(raw, reason)
    _echo_still_works(ctx)


def test_other_commands_on_a_storage_context_are_unrecognised(ctx: Context, raw: socket.socket) -> None:
    _associated(raw)
    raw.sendall(_pdv(1, 0x03, _command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0020, MessageID=7,
                                       Priority=0, CommandDataSetType=0x0101)))
    pdu_type, body = _read_pdu(raw)
    assert pdu_type == 0x04 and body[5] == 0x03  # one PDV, the last fragment of a command
    rsp = decode(BytesIO(body[6:]), True, True)
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8020, 7, 0x0211)
    raw.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
    assert _read_pdu(raw)[0] == 0x06  # A-RELEASE-RP


def test_silent_association_is_aborted_after_the_timeout(ctx: Context, raw: socket.socket) -> None:
    ctx.settings.dimse_timeout = 1.0
    _associated(raw)
    started = time.monotonic()
    _assert_aborted(raw, 0x00)
    assert time.monotonic() - started >= 0.9


def test_shutdown_ends_lean_associations(ctx: Context, gh_node: str) -> None:
    server = start_dimse(ctx)
    sock = socket.create_connection(("127.0.0.1", ctx.settings.dicom_port), timeout=10)
    try:
        _associated(sock)
        assert server.lean is not None and server.lean.count() == 1
        server.shutdown()
        assert sock.recv(1) == b""
        deadline = time.monotonic() + 5
        while server.lean.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.lean.count() == 0
    finally:
        sock.close()
