"""The lean path (adapters/dimse/lean.py, lean_get.py): which associations it serves, and how it answers
fragmented PDUs, oversize objects, unsupported commands, protocol errors and C-GET. Peers: pynetdicom as SCU,
and raw sockets for what no well-behaved SCU sends. (DCMTK storescu/echoscu/getscu take this path in
test_store, test_association and test_retrieve.)"""

from __future__ import annotations

import socket
import struct
import time
import tracemalloc
import types
from collections.abc import Iterator
from io import BytesIO

import pydicom
import pytest
from adapters.dimse.dimse_support import GH_AE
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import func, select

from telerad.adapters.dimse import lean, ul
from telerad.adapters.dimse.lean_get import data_set_offset
from telerad.adapters.dimse.server import DimseServer, start_dimse
from telerad.archive.demo import ct_series
from telerad.archive.ingest import store
from telerad.context import Context
from telerad.db.models import Instance, StoreConflict

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


def test_association_that_also_moves_goes_to_pynetdicom(ctx: Context, dimse: DimseServer, gh_node: str) -> None:
    assoc = _associate(ctx, CTImageStorage, StudyRootQueryRetrieveInformationModelMove)
    ds = _ct(32)[0]
    assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert dimse.lean is not None and dimse.lean.served == 0
    assert _stored(ctx) == [ds.SOPInstanceUID]


def test_an_object_resent_over_the_other_path_is_a_duplicate(ctx: Context, dimse: DimseServer,
                                                             gh_node: str) -> None:
    """Both paths build the same Part 10 bytes (adapters/dimse/filemeta.py): the same object sent on the lean
    path and then on pynetdicom's is one instance, one blob, no conflict."""
    ds = _ct(32)[0]
    for contexts in ((CTImageStorage,), (CTImageStorage, StudyRootQueryRetrieveInformationModelMove)):
        assoc = _associate(ctx, *contexts)
        assert assoc.send_c_store(ds).Status == 0x0000  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    assert dimse.lean is not None and dimse.lean.served == 1
    assert _stored(ctx) == [ds.SOPInstanceUID]
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(StoreConflict)).scalar_one() == 0


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
def _rq(calling: str = GH_AE, app_context: str = "1.2.840.10008.3.1.1.1",
        contexts: tuple[tuple[str, str], ...] = ((CTImageStorage, ImplicitVRLittleEndian),),
        extra: tuple[object, ...] = ()) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = app_context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "TELERAD"
    proposed = []
    for n, (abstract, transfer) in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id = 2 * n + 1
        cx.abstract_syntax = abstract
        cx.transfer_syntax = [transfer]
        proposed.append(cx)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    primitive.user_information = [max_length, *extra]
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


# -- C-GET (adapters/dimse/lean_get.py) ------------------------------------------------------------------------
def _get_scu(ctx: Context, storage: list[tuple[str, list[str]]], received: list[Dataset]) -> object:
    def on_store(event: object) -> int:
        received.append(event.dataset)  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title=GH_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class, syntaxes in storage:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title,
                         ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    return assoc


def _study_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def test_get_reports_pending_counts_and_the_failed_instances(ctx: Context, dimse: DimseServer, gh_node: str,
                                                             site: object) -> None:
    """Two CT slices the requestor can take, one JPEG object it cannot (no context for its transfer syntax):
    Pending responses count down, the final status is 0xB000 with the JPEG in the Failed SOP Instance UID List."""
    study = generate_uid()
    ct = ct_series(PATIENT, study, "ACC", 2, size=32)
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.StudyInstanceUID, jpeg.SOPInstanceUID = study, generate_uid()
    jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
    buf = BytesIO()
    jpeg.save_as(buf, enforce_file_format=True)
    for blob in [*ct, buf.getvalue()]:
        assert store(ctx, site.id, blob, "fixture").ok  # type: ignore[attr-defined]
    received: list[Dataset] = []
    assoc = _get_scu(ctx, [(CTImageStorage, [ExplicitVRLittleEndian]),
                           (jpeg.SOPClassUID, [ExplicitVRLittleEndian])], received)
    responses = list(assoc.send_c_get(_study_identifier(study),  # type: ignore[attr-defined]
                                      "1.2.840.10008.5.1.4.1.2.2.3"))
    assoc.release()  # type: ignore[attr-defined]
    statuses = [(rsp.Status, rsp.get("NumberOfRemainingSuboperations")) for rsp, _ in responses]
    assert statuses[:-1] == [(0xFF00, 2), (0xFF00, 1)]
    final, identifier = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert identifier.FailedSOPInstanceUIDList == jpeg.SOPInstanceUID
    sent = {pydicom.dcmread(BytesIO(b)).SOPInstanceUID: pydicom.dcmread(BytesIO(b)) for b in ct}
    assert {ds.SOPInstanceUID for ds in received} == set(sent)
    for ds in received:
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData


def test_get_identifier_without_its_unique_key_is_refused_with_a_reason(ctx: Context, dimse: DimseServer,
                                                                        gh_node: str) -> None:
    received: list[Dataset] = []
    assoc = _get_scu(ctx, [(CTImageStorage, [ExplicitVRLittleEndian])], received)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "Lean*"
    [(rsp, _)] = list(assoc.send_c_get(identifier, "1.2.840.10008.5.1.4.1.2.2.3"))  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert rsp.Status == 0xC000
    assert "needs (0020,000D)" in rsp.ErrorComment
    assert received == []


def _accept(sock: socket.socket, request: bytes) -> A_ASSOCIATE:
    sock.sendall(request)
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == 0x02
    pdu = A_ASSOCIATE_AC()
    pdu.decode(struct.pack(">BxI", 2, len(body)) + body)
    return pdu.to_primitive()


def test_request_arriving_in_pieces_is_still_served_on_the_lean_path(ctx: Context, dimse: DimseServer,
                                                                      raw: socket.socket) -> None:
    """Over a real network an A-ASSOCIATE-RQ with many contexts spans several TCP segments."""
    request = _rq(contexts=tuple((CTImageStorage, ImplicitVRLittleEndian) for _ in range(40)))
    raw.sendall(request[:3])  # not even the PDU header yet
    time.sleep(0.1)
    raw.sendall(request[3:400])
    time.sleep(0.1)
    raw.sendall(request[400:])
    assert _read_pdu(raw)[0] == 0x02
    assert dimse.lean is not None and dimse.lean.served == 1


def test_get_and_echo_contexts_accept_only_little_endian(ctx: Context, raw: socket.socket) -> None:
    """The lean C-GET decodes Identifiers in little endian; Big Endian or Deflate there is refused (0x04)."""
    accepted = _accept(raw, _rq(contexts=(
        (StudyRootQueryRetrieveInformationModelGet, "1.2.840.10008.1.2.2"),
        (Verification, "1.2.840.10008.1.2.1.99"),
        (Verification, ExplicitVRLittleEndian),
        (CTImageStorage, "1.2.840.10008.1.2.1.99"))))
    results = {int(cx.context_id): cx.result for cx in accepted.presentation_context_definition_results_list}
    assert results == {1: 0x04, 3: 0x04, 5: 0x00, 7: 0x00}  # storage keeps Deflate: stored as sent


def test_role_selection_is_answered_once_per_accepted_storage_class(ctx: Context, raw: socket.socket) -> None:
    roles = [build_role(CTImageStorage, scp_role=True), build_role(CTImageStorage, scu_role=True),
             build_role(MRImageStorage, scp_role=True), build_role(Verification, scp_role=True)]
    accepted = _accept(raw, _rq(contexts=((StudyRootQueryRetrieveInformationModelGet, ImplicitVRLittleEndian),
                                          (CTImageStorage, ImplicitVRLittleEndian)), extra=tuple(roles)))
    answers = [(str(i.sop_class_uid), i.scu_role, i.scp_role) for i in accepted.user_information
               if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]
    assert answers == [(CTImageStorage, False, True)]  # MR was not proposed as a context, Verification is no storage


def test_no_pdu_limit_setting_still_announces_a_bound(ctx: Context, raw: socket.socket) -> None:
    """``dimse_max_pdu = 0`` ("no limit") on pynetdicom's path; the lean path reads whole PDUs into memory, so
    it announces 16 MiB and aborts a larger PDU instead of allocating whatever length the peer claims."""
    ctx.settings.dimse_max_pdu = 0
    accepted = _accept(raw, _rq())
    [limit] = [i.maximum_length_received for i in accepted.user_information
               if isinstance(i, MaximumLengthNotification)]
    assert limit == 16 << 20
    raw.sendall(struct.pack(">BxI", 4, (16 << 20) + 1))
    _assert_aborted(raw, 0x06)


def test_endless_command_set_is_aborted(ctx: Context, raw: socket.socket) -> None:
    _associated(raw)
    for _ in range(5):  # 5 x 16,000 bytes of command fragments, none the last
        raw.sendall(_pdv(1, 0x01, b"\x00" * 16_000))
    _assert_aborted(raw, 0x06)
    _echo_still_works(ctx)


def test_internal_error_aborts_only_that_association(ctx: Context, raw: socket.socket,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the store handler raising (a defect, a lost database) ends the association with an
    A-ABORT and is logged; the listener and other associations go on."""
    def broken(*_: object) -> int:
        raise RuntimeError("injected")

    monkeypatch.setattr(lean, "handle_store", broken)
    _associated(raw)
    ds = _ct(16)[0]
    command = _command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001, MessageID=1, Priority=0,
                       CommandDataSetType=0x0000, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    raw.sendall(_pdv(1, 0x03, command) + _pdv(1, 0x02, bytes(encode(ds, True, True))))
    _assert_aborted(raw, 0x00)
    _echo_still_works(ctx)


def test_lean_and_pynetdicom_associations_share_one_limit(ctx: Context, dimse: DimseServer,
                                                          raw: socket.socket) -> None:
    dimse.ae.maximum_associations = 1
    _associated(raw)  # a lean association holds the only slot
    ae = AE(ae_title=GH_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)  # served by pynetdicom
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source,
            assoc.acceptor.primitive.diagnostic) == (0x02, 0x03, 0x02)


@pytest.mark.parametrize("meta", [
    b"\x02\x00\x10\x00UI\xff\x00" + b"1.2",  # a value longer than the file
    b"\x02\x00\x01\x00OB\x00\x00\x02",  # a long-VR element cut inside its header
], ids=["value", "header"])
def test_data_set_offset_refuses_a_meta_element_past_the_end(meta: bytes) -> None:
    part10 = b"\x00" * 128 + b"DICM" + meta
    with pytest.raises(ValueError, match="past the end"):
        data_set_offset(part10)


def test_data_set_offset_walks_the_file_meta_without_a_group_length() -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.FileMetaInformationVersion = b"\x00\x01"  # OB: a long-form element
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=False)  # no (0002,0000)
    encoded = bytes(buf.getvalue())
    assert encoded[:4] != b"\x02\x00\x00\x00"
    body = b"\x08\x00\x16\x00UI\x02\x001\x00"
    part10 = b"\x00" * 128 + b"DICM" + encoded + body
    assert part10[data_set_offset(part10):] == body


def test_data_set_in_tiny_and_empty_fragments_is_stored_intact(ctx: Context, raw: socket.socket) -> None:
    _associated(raw)
    ds = _ct(64)[0]
    data = bytes(encode(ds, True, True))
    command = _command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001, MessageID=3, Priority=0,
                       CommandDataSetType=0x0000, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    body = b""
    for i in range(0, len(data), 700):  # 700-byte fragments, an empty one after each
        last = i + 700 >= len(data)
        item = struct.pack(">IBB", 2 + len(data[i:i + 700]), 1, 0x02 if last else 0x00) + data[i:i + 700]
        if not last:
            item += struct.pack(">IBB", 2, 1, 0x00)  # an empty Data Set fragment
        body += item
    raw.sendall(_pdv(1, 0x03, command))
    for i in range(0, len(body), 10 * 712):  # several PDVs per PDU
        chunk = body[i:i + 10 * 712]
        raw.sendall(struct.pack(">BxI", 4, len(chunk)) + chunk)
    pdu_type, rsp_body = _read_pdu(raw)
    assert pdu_type == 0x04
    assert decode(BytesIO(rsp_body[6:]), True, True).Status == 0x0000
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_uid == ds.SOPInstanceUID)).scalar_one()
    assert pydicom.dcmread(ctx.blobs.path(key)).PixelData == ds.PixelData


def test_store_request_without_an_affected_sop_instance_uid_is_refused(ctx: Context, raw: socket.socket) -> None:
    """PS3.7 9.1.1.1: a C-STORE-RQ names the instance it stores; one that does not gets 0xC000 with a reason,
    nothing is stored, and the association goes on."""
    _associated(raw)
    ds = _ct(16)[0]
    data = bytes(encode(ds, True, True))
    raw.sendall(_pdv(1, 0x03, _command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001, MessageID=5,
                                       Priority=0, CommandDataSetType=0x0000, AffectedSOPInstanceUID=" ")))
    raw.sendall(_pdv(1, 0x02, data))
    pdu_type, body = _read_pdu(raw)
    assert pdu_type == 0x04
    rsp = decode(BytesIO(body[6:]), True, True)
    assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (5, 0xC000)
    assert "no Affected SOP Instance UID" in rsp.ErrorComment
    assert _stored(ctx) == []
    raw.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
    assert _read_pdu(raw)[0] == 0x06  # A-RELEASE-RP


# -- C-FIND (adapters/dimse/lean_find.py) ------------------------------------------------------------------
FIND = StudyRootQueryRetrieveInformationModelFind


def _find_identifier(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _read_message(sock: socket.socket) -> tuple[Dataset, bytes | None]:
    """The next DIMSE message from the server: its command set and its Data Set (None when it has none)."""
    command, data = b"", b""
    while True:
        pdu_type, body = _read_pdu(sock)
        assert pdu_type == 0x04, f"PDU type 0x{pdu_type:02X} instead of P-DATA-TF"
        pos = 0
        while pos < len(body):
            length, _context, control = struct.unpack_from(">IBB", body, pos)
            fragment = body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if control & 1:
                command += fragment
                if control & 2:
                    cmd = decode(BytesIO(command), True, True)
                    if cmd.CommandDataSetType == 0x0101:
                        return cmd, None
            else:
                data += fragment
                if control & 2:
                    return cmd, data


def test_find_is_served_on_the_lean_path(ctx: Context, dimse: DimseServer, gh_node: str, site: object) -> None:
    study = generate_uid()
    for blob in ct_series(PATIENT, study, "ACC", 2, size=16):
        assert store(ctx, site.id, blob, "fixture").ok  # type: ignore[attr-defined]
    assoc = _associate(ctx, FIND)
    responses = list(assoc.send_c_find(  # type: ignore[attr-defined]
        _find_identifier(QueryRetrieveLevel="STUDY", PatientID=PATIENT[1], StudyInstanceUID="",
                         NumberOfStudyRelatedInstances=""), FIND))
    assoc.release()  # type: ignore[attr-defined]
    assert dimse.lean is not None and dimse.lean.served == 1
    assert [rsp.Status for rsp, _ in responses] == [0xFF00, 0x0000]
    found = responses[0][1]
    assert (found.StudyInstanceUID, found.NumberOfStudyRelatedInstances, found.QueryRetrieveLevel) == (study, 2,
                                                                                                        "STUDY")
    assert found.RetrieveAETitle == ctx.settings.ae_title


def test_find_cancel_ends_the_query_and_later_requests_are_still_answered(ctx: Context, raw: socket.socket,
                                                                         site: object) -> None:
    """C-FIND-RQ, C-CANCEL-RQ and C-ECHO-RQ in one write: the cancel is found between matches (status FE00,
    PS3.4 C.4.1.2.3) and the echo, read along with it, is answered afterwards rather than lost."""
    study = generate_uid()
    for blob in ct_series(PATIENT, study, "ACC", 3, size=16):
        assert store(ctx, site.id, blob, "fixture").ok  # type: ignore[attr-defined]
    raw.sendall(_rq(contexts=((FIND, ImplicitVRLittleEndian), (Verification, ImplicitVRLittleEndian))))
    assert _read_pdu(raw)[0] == 0x02
    identifier = bytes(encode(_find_identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study,
                                               SOPInstanceUID=""), True, True))
    raw.sendall(_pdv(1, 0x03, _command(AffectedSOPClassUID=FIND, CommandField=0x0020, MessageID=7, Priority=0,
                                       CommandDataSetType=0x0000))
                + _pdv(1, 0x02, identifier)
                + _pdv(1, 0x03, _command(CommandField=0x0FFF, MessageIDBeingRespondedTo=7,
                                         CommandDataSetType=0x0101))
                + _pdv(3, 0x03, _command(AffectedSOPClassUID=Verification, CommandField=0x0030, MessageID=8,
                                         CommandDataSetType=0x0101)))
    final, data = _read_message(raw)
    assert (final.CommandField, final.MessageIDBeingRespondedTo, final.Status, data) == (0x8020, 7, 0xFE00, None)
    echo, _ = _read_message(raw)
    assert (echo.CommandField, echo.MessageIDBeingRespondedTo, echo.Status) == (0x8030, 8, 0x0000)


def test_malformed_find_identifier_is_refused_and_the_association_goes_on(ctx: Context,
                                                                         raw: socket.socket) -> None:
    raw.sendall(_rq(contexts=((FIND, ImplicitVRLittleEndian),)))
    assert _read_pdu(raw)[0] == 0x02
    raw.sendall(_pdv(1, 0x03, _command(AffectedSOPClassUID=FIND, CommandField=0x0020, MessageID=3, Priority=0,
                                       CommandDataSetType=0x0000))
                + _pdv(1, 0x02, b"\x08\x00\x52\x00\x10\x00\x00\x00STU"))  # value longer than the data
    rsp, data = _read_message(raw)
    assert (rsp.CommandField, rsp.Status, data) == (0x8020, 0xA900, None)
    assert "Query/Retrieve Level STU is not one of" in rsp.ErrorComment  # what could be read of it
    identifier = bytes(encode(_find_identifier(QueryRetrieveLevel="STUDY", PatientID="NOBODY"), True, True))
    raw.sendall(_pdv(1, 0x03, _command(AffectedSOPClassUID=FIND, CommandField=0x0020, MessageID=4, Priority=0,
                                       CommandDataSetType=0x0000)) + _pdv(1, 0x02, identifier))
    rsp, _ = _read_message(raw)
    assert (rsp.MessageIDBeingRespondedTo, rsp.Status) == (4, 0x0000)  # no match, a clean final response


def test_find_context_without_little_endian_goes_to_pynetdicom(ctx: Context, dimse: DimseServer,
                                                               raw: socket.socket) -> None:
    """The lean path speaks little endian only outside storage; pynetdicom, which answered every C-FIND before,
    still takes the association that proposes only Explicit VR Big Endian for C-FIND."""
    accepted = _accept(raw, _rq(contexts=((FIND, "1.2.840.10008.1.2.2"),)))
    [result] = accepted.presentation_context_definition_results_list
    assert (result.result, str(result.transfer_syntax[0])) == (0x00, "1.2.840.10008.1.2.2")
    assert dimse.lean is not None and dimse.lean.served == 0


def test_empty_fragments_hold_no_memory() -> None:
    """A peer streaming empty, never-last Data Set fragments (each counts 0 bytes against max_object_bytes)
    must not make the association hold memory for them (unit level: the PDV handler alone)."""
    settings = types.SimpleNamespace(dimse_max_pdu=262_144, max_object_bytes=1 << 30)
    owner = types.SimpleNamespace(rt=types.SimpleNamespace(ctx=types.SimpleNamespace(settings=settings)))
    request = A_ASSOCIATE()
    request.calling_ae_title = "X"
    assoc = lean.LeanAssociation(owner, None, ("127.0.0.1", 1), request)  # type: ignore[arg-type]
    assoc.accepted = {1: (CTImageStorage, ImplicitVRLittleEndian)}
    command = ul.encode_command({ul.COMMAND_FIELD: 1, ul.MESSAGE_ID: 1, ul.COMMAND_DATA_SET_TYPE: 0,
                                 ul.AFFECTED_SOP_CLASS_UID: CTImageStorage, ul.AFFECTED_SOP_INSTANCE_UID: "1.2.3"})
    for cid, control, fragment in ul.pdvs(bytearray(struct.pack(">IBB", 2 + len(command), 1, 3) + command)):
        assoc._pdv(cid, control, fragment)
    tracemalloc.start()
    try:
        for _ in range(20):  # 20 PDUs of 256 KiB of empty PDVs, then 1-byte ones
            for body in (bytearray(struct.pack(">IBB", 2, 1, 0) * 43_690),
                         bytearray(struct.pack(">IBB", 3, 1, 0) + b"x") * 37_449):
                for cid, control, fragment in ul.pdvs(body):
                    assoc._pdv(cid, control, fragment)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pending = assoc._pending
    assert pending is not None and pending.parts is not None
    assert len(pending.parts) == 1 and len(pending.parts[0]) == 20 * 37_449  # the 1-byte fragments, gathered
    assert held < 2 * 20 * 37_449  # about the data received, not ~200 bytes per fragment


def test_gathered_writes_deliver_every_byte_in_order_through_partial_sends():
    """lean.send_gathered: a socket with a timeout (non-blocking underneath) and a small send buffer makes the
    kernel take part of a gathering write at a time; what it left must go next, and nothing twice."""
    import os
    import threading

    from telerad.adapters.dimse.lean import send_gathered
    from telerad.adapters.dimse.ul import p_data_parts

    payload = os.urandom(3 << 20)
    buffers: list = []
    for head, chunk in p_data_parts(1, memoryview(payload), command=False, peer_max=4096):
        buffers += (head, chunk)
    buffers.insert(0, b"")  # an empty buffer is skipped, not a stall
    expected = b"".join(bytes(b) for b in buffers)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)
    received = bytearray()

    def read() -> None:
        while len(received) < len(expected):
            time.sleep(0.001)  # a slow reader: the sender's buffer fills
            data = b.recv(65536)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        send_gathered(a, buffers)
        reader.join(30)
    finally:
        a.close()
        b.close()
    assert len(buffers) > 1000  # more than one sendmsg's worth of buffers
    assert bytes(received) == expected
