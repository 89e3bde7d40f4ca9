"""The lean path: associations that store, echo, C-FIND or C-GET, served without pynetdicom's reactors.

Why: a sending modality or PACS opens an association, proposes Storage SOP Classes and sends C-STORE after
C-STORE. pynetdicom runs two polling threads per association (1 ms sleeps), reads sockets 4 KB at a time and
passes every PDU through queues; profiled during CT ingest that was a third of the server's samples and
several milliseconds of latency per object. This path reads each PDU with ``recv_into`` into one buffer,
hands the received Data Set to the same handler as before (:func:`.storage.handle_store`, hence the same
:func:`telerad.archive.ingest.store`, the same audit counts) and answers on the same thread.

Which associations: the listener peeks at the A-ASSOCIATE-RQ (``MSG_PEEK``, nothing consumed) and serves it
here when no proposed abstract syntax needs pynetdicom's service classes (Q/R MOVE, Storage Commitment):
sending modalities (Storage, Verification), C-GET requestors (Q/R GET plus storage contexts with SCP/SCU Role
Selection, PS3.7 D.3.3.4; the C-GET SCP is :mod:`.lean_get`) and querying workstations and PACS (Q/R FIND;
:mod:`.lean_find`). Everything else, TLS connections and anything unparsable go to pynetdicom untouched, with
the request still unread.

Negotiation (PS3.8 9.3.2-9.3.4, 9.3.3.2) is the same as :mod:`.server`'s: application context
``1.2.840.10008.3.1.1.1`` or rejection (1, 1, 2); the calling AE title admitted by the node registry
(:mod:`.auth`) or rejection (1, 1, 3), audited; the association limit shared with pynetdicom's associations
or rejection (2, 3, 2); per presentation context the requestor's first transfer syntax that telerad accepts.
Protocol errors answer an A-ABORT (source 2, PS3.8 Table 9-26) and close; an A-ABORT from the peer or a
dropped connection just close. Each C-STORE is answered only after the handler returned, i.e. after the
object is durable (or with its failure status). An object larger than ``max_object_bytes`` is not buffered:
its remaining fragments are read and dropped, and the C-STORE answered 0xA700.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from telerad.adapters.dimse import filemeta, ul
from telerad.adapters.dimse.common import Runtime, status_elements
from telerad.adapters.dimse.common import status as _status
from telerad.adapters.dimse.lean_find import serve_find
from telerad.adapters.dimse.lean_get import serve_get
from telerad.adapters.dimse.storage import handle_echo, handle_store
from telerad.archive.errors import CANNOT_UNDERSTAND, OUT_OF_RESOURCES

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
GET_MODELS = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})  # Patient, Study Root
FIND_MODELS = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})  # Patient, Study Root
SERVED = STORAGE_SOP_CLASSES | GET_MODELS | FIND_MODELS | {VERIFICATION}
MAX_REQUEST_BYTES = 1 << 20  # an A-ASSOCIATE-RQ larger than this goes to pynetdicom (and its limits)
# Announced as Maximum Length Received when ``dimse_max_pdu`` is 0 ("no limit", PS3.8 D.1): the lean path
# reads a whole PDU into memory, so it always announces a bound it will hold to.
LEAN_MAX_PDU = 16 << 20
MAX_COMMAND_BYTES = 1 << 16  # a command set is a few hundred bytes; more is not a command set (PS3.7 E.1)
# Verification, C-GET and C-FIND contexts: telerad encodes and decodes their Identifiers in little endian
# without deflate, so only these two are accepted there (PS3.5 10.1, A.1, A.2). Storage keeps every syntax it
# stores. (A C-FIND context proposing neither goes to pynetdicom, which served every C-FIND before.)
COMMAND_SYNTAXES = frozenset({str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)})
C_STORE_RQ, C_GET_RQ, C_FIND_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0010, 0x0020, 0x0030, 0x0FFF
UNRECOGNISED_OPERATION = 0x0211  # PS3.7 C.5.7
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.8
_SEND_BATCH = 1 << 20  # bytes of P-DATA-TF PDUs handed to one gathering write
_IOV_MAX = 1000  # buffers per sendmsg (Linux allows 1024)
# Data Set fragments at least this large are kept as views of their PDU; smaller ones are copied together, so
# a peer sending tiny or empty fragments cannot make the association hold more than the data it sent.
_VIEW_MIN = 64 << 10
_PEEK_PAUSE, _PEEK_PAUSE_MAX = 0.002, 0.05  # seconds between peeks while an A-ASSOCIATE-RQ is still arriving


def _peek(sock: socket.socket, n: int, deadline: float) -> bytes:
    """The first ``n`` bytes waiting on ``sock``, left unread; fewer when the peer closes or stops sending
    before ``deadline``. A request from a real network arrives in several TCP segments (an A-ASSOCIATE-RQ with
    a hundred presentation contexts is ~10 KB), and MSG_WAITALL does not wait on a socket with a timeout."""
    pause = _PEEK_PAUSE
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        data = sock.recv(n, socket.MSG_PEEK)  # waits until something is readable
        if len(data) >= n or not data or time.monotonic() >= deadline:
            return data
        # Readable stays true while unread data waits: poll, do not spin; a peer that stalls mid-request
        # is polled less and less often (up to every 50 ms) until the deadline.
        time.sleep(pause)
        pause = min(pause * 2, _PEEK_PAUSE_MAX)


def peek_request(sock: socket.socket, timeout: float, elsewhere: frozenset[str]) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE-RQ waiting on ``sock``, decoded but left unread, when this path should serve it."""
    deadline = time.monotonic() + timeout
    try:
        head = _peek(sock, ul.PDU_HEADER.size, deadline)
        if len(head) < ul.PDU_HEADER.size:
            return None
        pdu_type, length = ul.PDU_HEADER.unpack(head)
        if pdu_type != ul.ASSOCIATE_RQ or length > MAX_REQUEST_BYTES:
            return None
        data = _peek(sock, ul.PDU_HEADER.size + length, deadline)
        if len(data) < ul.PDU_HEADER.size + length:
            return None
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        request = pdu.to_primitive()
    except Exception:  # whatever it is, pynetdicom answers it as it always did
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    return request if servable(request, elsewhere) else None


def servable(request: A_ASSOCIATE, elsewhere: frozenset[str]) -> bool:
    """No proposed abstract syntax is one that only pynetdicom serves (``elsewhere``: Q/R MOVE, Storage
    Commitment), and every proposed C-FIND context offers a little endian transfer syntax. Storage, C-GET and
    C-FIND associations qualify; abstract syntaxes telerad does not support at all (DCMTK tools propose retired
    storage classes) are rejected per context on either path."""
    contexts = request.presentation_context_definition_list
    return bool(contexts) and not any(
        str(cx.abstract_syntax) in elsewhere
        or (str(cx.abstract_syntax) in FIND_MODELS and not any(str(t) in COMMAND_SYNTAXES for t in cx.transfer_syntax))
        for cx in contexts)


def negotiate(proposed: list[PresentationContext], storage_syntaxes: frozenset[str]) -> list[PresentationContext]:
    """PS3.8 9.3.3.2: accept each context with the requestor's first transfer syntax that telerad accepts
    (for Verification and C-GET: :data:`COMMAND_SYNTAXES`)."""
    results = []
    for cx in proposed:
        abstract = str(cx.abstract_syntax)
        ours = storage_syntaxes if abstract in STORAGE_SOP_CLASSES else COMMAND_SYNTAXES
        out = PresentationContext()
        out.context_id = cx.context_id
        out.abstract_syntax = UID(abstract)
        chosen = next((str(t) for t in cx.transfer_syntax if str(t) in ours), None)
        if abstract not in SERVED:
            out.result = 0x03  # abstract-syntax-not-supported
            out.transfer_syntax = [UID(str(cx.transfer_syntax[0]))] if cx.transfer_syntax else []
        elif chosen is None:
            out.result = 0x04  # transfer-syntaxes-not-supported
            out.transfer_syntax = [UID(str(cx.transfer_syntax[0]))] if cx.transfer_syntax else []
        else:
            out.result = 0x00
            out.transfer_syntax = [UID(chosen)]
        results.append(out)
    return results


class LeanAssociations:
    """The lean associations of one listener: counted against its association limit, ended at shutdown."""

    def __init__(self, rt: Runtime, storage_syntaxes: list[str]) -> None:
        self.rt = rt
        self.storage_syntaxes = frozenset(storage_syntaxes)
        # Abstract syntaxes the listener supports that this path does not serve: such associations go to pynetdicom.
        self.elsewhere = frozenset(str(cx.abstract_syntax) for cx in rt.ae.supported_contexts) - SERVED
        self._active: set[LeanAssociation] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.served = 0  # connections taken by this path (for tests and diagnostics)

    def count(self) -> int:
        with self._lock:
            return len(self._active)

    def serve(self, sock: socket.socket, address: tuple[str, int], request: A_ASSOCIATE) -> None:
        assoc = LeanAssociation(self, sock, address, request)
        with self._lock:
            if self._closed:
                return
            self._active.add(assoc)
            self.served += 1
        try:
            assoc.run()
        finally:
            with self._lock:
                self._active.discard(assoc)

    def shutdown(self) -> None:
        """End every lean association: its socket is shut down, its thread reads end-of-stream and stops."""
        with self._lock:
            self._closed = True
            active = list(self._active)
        for assoc in active:
            with contextlib.suppress(OSError):
                assoc.sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Message:
    """A DIMSE message: its presentation context, command set and Data Set fragments (None: no Data Set)."""

    context_id: int
    command: dict[int, bytes]
    parts: list[memoryview | bytearray] | None
    size: int = 0
    overflow: bool = False  # the Data Set exceeded max_object_bytes and was dropped


class Ended(Exception):
    """The peer released or aborted the association."""


class LeanStoreEvent:
    """What :func:`.storage.handle_store` and :func:`.storage.handle_echo` read from a pynetdicom event."""

    def __init__(self, assoc: LeanAssociation,
                 part10: tuple[tuple[str, str, str], list[memoryview | bytearray]] | None = None) -> None:
        self.assoc = assoc
        self._part10 = part10  # ((SOP Class, SOP Instance, Transfer Syntax UIDs), received Data Set parts)

    def encoded_dataset(self) -> bytes:
        """The received Data Set as a Part 10 object, byte for byte as pynetdicom's ``Event.encoded_dataset``
        builds it (:mod:`.filemeta`)."""
        assert self._part10 is not None
        uids, parts = self._part10
        return b"".join((filemeta.part10_header(*uids), *parts))


class LeanAssociation:
    """One association on the lean path, served on the listener's connection thread."""

    def __init__(self, owner: LeanAssociations, sock: socket.socket, address: tuple[str, int],
                 request: A_ASSOCIATE) -> None:
        self.owner = owner
        self.rt = owner.rt
        self.sock = sock
        self.request = request
        # Read by :mod:`.auth` (calling_ae_of, peer_address) for admission and audit records.
        self.calling_ae_title = str(request.calling_ae_title or "").strip()
        self.peer_ip = str(address[0])
        self.accepted: dict[int, tuple[str, str]] = {}  # context id -> (abstract syntax, transfer syntax)
        self.peer_max = int(request.maximum_length_received or 0)
        settings = self.rt.ctx.settings
        # PS3.8 D.1: PDUs may not exceed the Maximum Length Received telerad announces (never 0 here).
        self.max_pdu = settings.dimse_max_pdu or LEAN_MAX_PDU
        self.max_object = settings.max_object_bytes
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._command_context = 0
        self._pending: Message | None = None
        self._messages: deque[Message] = deque()
        self.sub_op_contexts: dict[tuple[str, str], int] = {}  # (SOP Class, TS) -> context for C-GET sub-ops
        self._message_id = 0

    # -- association ---------------------------------------------------------------------------------------
    def run(self) -> None:
        s = self.rt.ctx.settings
        try:
            self.sock.settimeout(s.dimse_timeout)
            ul.read_pdu(self.sock, MAX_REQUEST_BYTES)  # the A-ASSOCIATE-RQ peeked at, now consumed
            if not self._associate():
                return
            while True:
                self._dispatch(self.next_message())
        except Ended as end:
            log.debug("lean association from %s %s", self.calling_ae_title, end)
        except ul.ProtocolError as exc:
            log.warning("aborting association from %s at %s: %s", self.calling_ae_title, self.peer_ip, exc)
            self._send(ul.abort_pdu(exc.reason))
        except TimeoutError:
            log.warning("aborting association from %s at %s: no PDU for %s s", self.calling_ae_title,
                        self.peer_ip, s.dimse_timeout)
            self._send(ul.abort_pdu())
        except (ul.PeerClosed, OSError) as exc:
            log.info("association from %s at %s dropped: %s", self.calling_ae_title, self.peer_ip, exc)
        except Exception:  # a defect or a failing dependency: this association ends, the listener goes on
            log.exception("aborting association from %s at %s after an internal error", self.calling_ae_title,
                          self.peer_ip)
            self._send(ul.abort_pdu())
        finally:
            if self.accepted:
                self.rt.audit.ended(self)

    def _associate(self) -> bool:
        request = self.request
        if str(request.application_context_name or "") != APPLICATION_CONTEXT:
            self._reject(0x01, 0x01, 0x02)  # application-context-name-not-supported
            return False
        if self.rt.ae.site_of(self) is None:  # admission decided (and a refusal audited) once
            self._reject(0x01, 0x01, 0x03)  # calling-AE-title-not-recognized
            return False
        active = self.owner.count() + sum(1 for a in self.rt.ae.active_associations if a.is_acceptor)
        if active > self.rt.ae.association_limit:
            self._reject(0x02, 0x03, 0x02)  # transient, presentation related, local-limit-exceeded
            return False
        results = negotiate(request.presentation_context_definition_list, self.owner.storage_syntaxes)
        self.accepted = {int(cx.context_id or 0): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                         for cx in results if cx.result == 0x00}
        accept = A_ASSOCIATE()
        accept.application_context_name = UID(APPLICATION_CONTEXT)
        accept.calling_ae_title = request.calling_ae_title
        accept.called_ae_title = request.called_ae_title
        accept.result, accept.result_source = 0x00, 0x01
        accept.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = self.rt.ae.implementation_class_uid
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = self.rt.ae.implementation_version_name
        accept.user_information = [max_length, class_uid, version, *self._roles(results)]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(accept)
        self.sock.sendall(pdu.encode())
        return True

    def _roles(self, results: list[PresentationContext]) -> list[SCP_SCU_RoleSelectionNegotiation]:
        """PS3.7 D.3.3.4: telerad takes either role for storage, so each proposed role selection is accepted as
        proposed, once per SOP Class and only for storage classes with an accepted context. Contexts on which
        the requestor is SCP carry the C-STORE sub-operations of a C-GET."""
        accepted = {str(cx.abstract_syntax) for cx in results if cx.result == 0x00}
        answers = []
        answered: set[str] = set()
        for item in self.request.user_information:
            if not isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                continue
            uid = str(item.sop_class_uid)
            if uid not in STORAGE_SOP_CLASSES or uid not in accepted or uid in answered:
                continue
            answered.add(uid)
            answer = SCP_SCU_RoleSelectionNegotiation()
            answer.sop_class_uid = item.sop_class_uid
            answer.scu_role, answer.scp_role = bool(item.scu_role), bool(item.scp_role)
            answers.append(answer)
            if item.scp_role:
                for cx in results:
                    if cx.result == 0x00 and str(cx.abstract_syntax) == str(item.sop_class_uid):
                        key = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                        self.sub_op_contexts.setdefault(key, int(cx.context_id or 0))
        return answers

    def _reject(self, result: int, source: int, diagnostic: int) -> None:
        reject = A_ASSOCIATE()
        reject.result, reject.result_source, reject.diagnostic = result, source, diagnostic
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(reject)
        self._send(pdu.encode())

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    # -- DIMSE messages (PS3.7 6.3.1, PS3.8 E.2) -------------------------------------------------------------
    def next_message(self) -> Message:
        """The next complete DIMSE message from the peer; :class:`Ended` when it releases or aborts."""
        while not self._messages:
            self._read_pdu()
        return self._messages.popleft()

    def cancel_requested(self, message_id: int) -> bool:
        """Whether a C-CANCEL-RQ for request ``message_id`` has arrived (PS3.7 9.3.2.3), looked for without
        waiting: PDUs already readable are read, and the messages other than that C-CANCEL-RQ stay queued, in
        order, for :meth:`next_message`."""
        while select.select([self.sock], [], [], 0)[0]:
            self._read_pdu()
        for message in self._messages:
            if (ul.command_us(message.command, ul.COMMAND_FIELD) == C_CANCEL_RQ
                    and ul.command_us(message.command, ul.MESSAGE_ID_BEING_RESPONDED_TO) == message_id):
                self._messages.remove(message)
                return True
        return False

    def _read_pdu(self) -> None:
        """Read one PDU: a P-DATA-TF's fragments join the messages; a release or abort ends the association."""
        pdu_type, body = ul.read_pdu(self.sock, self.max_pdu)
        if pdu_type == ul.P_DATA_TF:
            for context_id, control, fragment in ul.pdvs(body):
                self._pdv(context_id, control, fragment)
        elif pdu_type == ul.RELEASE_RQ:
            if self._pending is not None or self._command_parts:
                raise ul.ProtocolError(ul.UNEXPECTED_PDU, "A-RELEASE-RQ inside a DIMSE message")
            self.sock.sendall(ul.RELEASE_RP_PDU)
            raise Ended("released")
        elif pdu_type == ul.ABORT_RQ:
            raise Ended("aborted by the peer")
        else:
            raise ul.ProtocolError(ul.UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02X}")

    def _pdv(self, context_id: int, control: int, fragment: memoryview) -> None:
        if context_id not in self.accepted:
            raise ul.ProtocolError(ul.INVALID_PARAMETER, f"presentation context {context_id} was not accepted")
        pending = self._pending
        if control & 1:  # command fragment (PS3.8 E.2)
            if pending is not None:
                raise ul.ProtocolError(ul.UNEXPECTED_PDU, "command fragment while a Data Set was arriving")
            if self._command_parts and context_id != self._command_context:
                raise ul.ProtocolError(ul.UNEXPECTED_PDU, "command fragments on two presentation contexts")
            self._command_size += len(fragment)
            if self._command_size > MAX_COMMAND_BYTES:
                raise ul.ProtocolError(ul.INVALID_PARAMETER, f"command set over {MAX_COMMAND_BYTES} bytes")
            self._command_context = context_id
            self._command_parts.append(bytes(fragment))
            if control & 2:
                command = ul.decode_command(b"".join(self._command_parts))
                self._command_parts, self._command_size = [], 0
                if ul.command_us(command, ul.COMMAND_DATA_SET_TYPE) == ul.NO_DATA_SET:
                    self._messages.append(Message(context_id, command, None))
                else:
                    self._pending = Message(context_id, command, [])
            return
        if pending is None or pending.context_id != context_id or pending.parts is None:
            raise ul.ProtocolError(ul.UNEXPECTED_PDU, "Data Set fragment without its command")
        pending.size += len(fragment)
        if pending.size > self.max_object:
            pending.overflow, pending.parts = True, []
        elif not pending.overflow and fragment:
            parts = pending.parts
            if len(fragment) >= _VIEW_MIN:
                # A view, not a copy: each PDU is read into its own buffer, never reused (:func:`.ul.read_pdu`),
                # so the fragment stays valid; the object is copied once, when the Part 10 bytes are joined.
                parts.append(fragment)
            elif parts and isinstance(parts[-1], bytearray):
                parts[-1] += fragment  # small fragments are gathered: memory stays that of the data received
            else:
                parts.append(bytearray(fragment))
        if control & 2:
            self._pending = None
            self._messages.append(pending)

    def _dispatch(self, message: Message) -> None:
        command, context_id = message.command, message.context_id
        field = ul.command_us(command, ul.COMMAND_FIELD)
        message_id = ul.command_us(command, ul.MESSAGE_ID) or 0
        abstract, transfer_syntax = self.accepted[context_id]
        sop_class = ul.command_text(command, ul.AFFECTED_SOP_CLASS_UID)
        if field == C_CANCEL_RQ:  # nothing of this association is in progress any more
            return
        if field is None or field & 0x8000:
            raise ul.ProtocolError(ul.INVALID_PARAMETER, "command set without a request Command Field")
        if field == C_ECHO_RQ and message.parts is None:
            self.respond(context_id, field, message_id, {ul.STATUS: handle_echo(LeanStoreEvent(self), self.rt)},
                         sop_class=abstract)
            return
        if field == C_GET_RQ and message.parts is not None and abstract in GET_MODELS:
            serve_get(self, message, message_id, abstract, transfer_syntax)
            return
        if field == C_FIND_RQ and message.parts is not None and abstract in FIND_MODELS:
            serve_find(self, message, message_id, abstract, transfer_syntax)
            return
        if field != C_STORE_RQ or message.parts is None or abstract not in STORAGE_SOP_CLASSES:
            self.respond(context_id, field, message_id,
                         status_elements(_status(UNRECOGNISED_OPERATION, "not supported on this association")),
                         sop_class=sop_class or abstract)
            return
        instance = ul.command_text(command, ul.AFFECTED_SOP_INSTANCE_UID)
        if sop_class != abstract:
            code: int | Dataset = _status(SOP_CLASS_NOT_SUPPORTED,
                                          "Affected SOP Class UID differs from the presentation context")
        elif not instance.strip():
            code = _status(CANNOT_UNDERSTAND, "the C-STORE request has no Affected SOP Instance UID")
        elif message.overflow:
            self.rt.audit.stored(self, None, OUT_OF_RESOURCES)
            code = _status(OUT_OF_RESOURCES, f"object exceeds the maximum of {self.max_object} bytes")
        else:
            uids = (sop_class, instance, transfer_syntax)
            code = handle_store(LeanStoreEvent(self, (uids, message.parts)), self.rt)
        self.respond(context_id, field, message_id, status_elements(code), sop_class=sop_class, instance=instance)

    def respond(self, context_id: int, field: int, message_id: int, elements: dict[int, int | str], *,
                sop_class: str = "", instance: str = "", data_set: bytes | None = None) -> None:
        """The response to a request (PS3.7 9.3, 10.3; Command Field with bit 15 set)."""
        elements = {**elements, ul.COMMAND_FIELD: field | 0x8000, ul.MESSAGE_ID_BEING_RESPONDED_TO: message_id,
                    ul.COMMAND_DATA_SET_TYPE: ul.NO_DATA_SET if data_set is None else 0x0001}
        if sop_class:
            elements[ul.AFFECTED_SOP_CLASS_UID] = sop_class
        if instance:
            elements[ul.AFFECTED_SOP_INSTANCE_UID] = instance
        self.send_message(context_id, ul.encode_command(elements), data_set)

    def send_message(self, context_id: int, command: bytes, data_set: bytes | memoryview | None) -> None:
        """The command and its data set as P-DATA-TF PDUs: headers and slices of ``data_set`` handed to the
        kernel in gathering writes of up to ``_SEND_BATCH`` bytes (no copy of the data set in Python; a C-GET
        sends every stored file through here)."""
        buffers: list[bytes | memoryview] = []
        for head, chunk in ul.p_data_parts(context_id, command, command=True, peer_max=self.peer_max):
            buffers += (head, chunk)
        if data_set is not None:
            size = 0
            for head, chunk in ul.p_data_parts(context_id, data_set, command=False, peer_max=self.peer_max):
                buffers += (head, chunk)
                size += len(chunk)
                if size >= _SEND_BATCH or len(buffers) >= _IOV_MAX:
                    send_gathered(self.sock, buffers)
                    buffers, size = [], 0
        if buffers:
            send_gathered(self.sock, buffers)

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id


def send_gathered(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """``sock.sendall(b"".join(buffers))`` without the join: one gathering write (sendmsg) per call, repeated
    for what a partial write left (a socket with a timeout is non-blocking underneath)."""
    if isinstance(sock, ssl.SSLSocket):  # TLS has no gathering write
        sock.sendall(b"".join(buffers))
        return
    views = [memoryview(b).cast("B") for b in buffers]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first:first + _IOV_MAX])
        while first < len(views) and sent >= views[first].nbytes:
            sent -= views[first].nbytes
            first += 1
        if sent:
            views[first] = views[first][sent:]
