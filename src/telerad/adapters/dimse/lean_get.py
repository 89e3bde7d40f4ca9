"""C-GET SCP on the lean path (PS3.4 C.4.3; Patient Root and Study Root, PS3.4 C.6.1.1.3, C.6.2.1.3).

The instances are selected exactly as on the pynetdicom path (:func:`.retrieve.matching_instances`: the
calling node's site only, unique keys as PS3.4 C.4.2.2.1 requires) and sent in C-STORE sub-operations on the
same association (PS3.4 C.4.3.1.3), over the storage contexts on which the requestor accepted the SCP role
(:meth:`.lean.LeanAssociation._roles`) with the stored transfer syntax: each stored file goes out byte for byte
(its Data Set after the File Meta group, PS3.10 7.1), never transcoded; an instance without such a context
fails its sub-operation. After each sub-operation a Pending response carries the counts (PS3.7 9.3.3.2);
a C-CANCEL-RQ stops before the next one (0xFE00). The final status: 0x0000, 0xB000 when some failed or
warned, 0xA702 when all failed, each with the Failed SOP Instance UID List (0008,0058) when there are
failures; a refused Identifier 0xC000 with an Error Comment; an undecodable one 0xA900.
Every C-GET is audited when it ends, as on the pynetdicom path (:class:`.retrieve._RetrieveRecord`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from pynetdicom.status import STATUS_FAILURE, STORAGE_SERVICE_CLASS_STATUS

from telerad.adapters.dimse import ul
from telerad.adapters.dimse.common import status
from telerad.adapters.dimse.find import CANCEL, IdentifierError, model_of, single_value
from telerad.adapters.dimse.retrieve import (
    PENDING,
    SUBOPERATIONS_FAILED,
    SUBOPERATIONS_WARNING,
    StoredInstance,
    _RetrieveRecord,
    matching_instances,
)
from telerad.archive.parse import file_meta_elements

if TYPE_CHECKING:
    from telerad.adapters.dimse.lean import LeanAssociation, Message

log = logging.getLogger(__name__)

C_GET_RQ, C_STORE_RSP, C_CANCEL_RQ = 0x0010, 0x8001, 0x0FFF
UNABLE_TO_PROCESS = 0xC000
IDENTIFIER_DOES_NOT_MATCH = 0xA900


def data_set_offset(part10: bytes) -> int:
    """Where the Data Set of a Part 10 file starts: after the preamble, "DICM" and the File Meta elements
    (group 0002, always Explicit VR Little Endian, PS3.10 7.1), walked element by element."""
    return file_meta_elements(part10).end


class _Get:
    def __init__(self, assoc: LeanAssociation, message: Message, message_id: int, model: str, ts: str) -> None:
        self.assoc, self.rt = assoc, assoc.rt
        self.context_id, self.message_id, self.model, self.ts = message.context_id, message_id, model, ts
        self.message = message
        self.record = _RetrieveRecord("C-GET")
        self.cancelled = False
        self.failed_uids: list[str] = []

    def run(self) -> None:
        try:
            self._run()
        finally:  # also when the association ends in the middle: the record says "incomplete"
            self.rt.audit.record_all(self.record.events(self.rt.audit.peer(self.assoc)))

    def _run(self) -> None:
        try:
            identifier = decode(BytesIO(b"".join(self.message.parts or [])), self.ts == ImplicitVRLittleEndian, True)
            self.record.study_uid = single_value(str(identifier.get("StudyInstanceUID", "") or ""))
        except Exception as exc:
            self._refuse(IDENTIFIER_DOES_NOT_MATCH, f"cannot decode the Identifier: {exc}")
            return
        site_id = self.rt.ae.site_of(self.assoc)
        try:
            if site_id is None:  # not reached: the association was admitted
                raise IdentifierError("calling AE title not recognised")
            instances = matching_instances(self.rt, site_id, identifier, model_of(self.model))
        except IdentifierError as exc:
            log.warning("C-GET identifier refused: %s", exc)
            self._refuse(UNABLE_TO_PROCESS, str(exc))
            return
        except Exception:  # the index unavailable, a defect: this C-GET fails, the association goes on
            log.exception("C-GET by %s: cannot select the instances", self.assoc.calling_ae_title)
            self._refuse(UNABLE_TO_PROCESS, "cannot select the instances (server error)")
            return
        self.record.expect(instances)
        log.info("C-GET by %s of %d instances", self.assoc.calling_ae_title, len(instances))
        # The next file is read while the requestor stores the current one (between our C-STORE-RQ and its
        # response): at most two files are held.
        loaded: dict[int, tuple[bytes, int] | None] = {}

        def load(i: int) -> None:
            if i < len(instances) and i not in loaded:
                loaded[i] = self._read(instances[i])

        for done, inst in enumerate(instances):
            if self.cancelled:
                self.record.status = CANCEL
                self._final(CANCEL, remaining=len(instances) - done)
                return
            load(done)
            status = self._sub_operation(inst, loaded.pop(done), functools.partial(load, done + 1))
            self.record.settle_status(inst, status)
            if done + 1 < len(instances):
                self._respond(PENDING, remaining=len(instances) - done - 1)
        self.record.finish()
        self._final(self.record.status or 0)

    def _counts(self) -> tuple[int, int, int]:
        studies = self.record.studies.values()
        return (sum(c.completed for c in studies), sum(c.failed for c in studies), sum(c.warning for c in studies))

    def _respond(self, status: int, remaining: int | None = None, comment: str = "",
                 data_set: bytes | None = None) -> None:
        # The Number of ... Sub-operations are US (PS3.7 C.4.3.1.3 / E.1): a retrieve of more than 65535
        # instances reports 65535 until its counts fall below it.
        completed, failed, warning = (min(n, 0xFFFF) for n in self._counts())
        elements: dict[int, int | str] = {ul.STATUS: status, ul.COMPLETED: completed, ul.FAILED: failed,
                                          ul.WARNING: warning}
        if remaining is not None:
            elements[ul.REMAINING] = min(remaining, 0xFFFF)
        if comment:
            elements[ul.ERROR_COMMENT] = comment[:64]
        self.assoc.respond(self.context_id, C_GET_RQ, self.message_id, elements, sop_class=self.model,
                           data_set=data_set)

    def _final(self, status: int, remaining: int | None = None) -> None:
        data_set = None
        if self.failed_uids and status in (CANCEL, SUBOPERATIONS_FAILED, SUBOPERATIONS_WARNING):
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = self.failed_uids
            data_set = encode(ds, self.ts == ImplicitVRLittleEndian, True)
        self._respond(status, remaining, data_set=data_set)

    def _refuse(self, code: int, reason: str) -> None:
        self.record.status, self.record.reason = code, reason
        self.assoc.respond(self.context_id, C_GET_RQ, self.message_id,
                           {ul.STATUS: code, ul.ERROR_COMMENT: str(status(code, reason).ErrorComment)},
                           sop_class=self.model)

    def _read(self, inst: StoredInstance) -> tuple[bytes, int] | None:
        """The stored file and where its data set starts; None when it cannot be read (logged)."""
        try:
            data = self.rt.ctx.blobs.path(inst.blob_key).read_bytes()
            return data, data_set_offset(data)
        except (OSError, ValueError) as exc:
            log.error("stored file of instance %s (blob %s) unreadable: %s", inst.sop_uid, inst.blob_key, exc)
            return None

    def _sub_operation(self, inst: StoredInstance, stored: tuple[bytes, int] | None,
                       while_waiting: Callable[[], None]) -> int | None:
        """One C-STORE sub-operation of ``stored`` (from :meth:`_read`); the Status of the requestor's response,
        None when it could not be sent. ``while_waiting`` runs once the request is out."""
        context_id = self.assoc.sub_op_contexts.get((inst.sop_class_uid, inst.transfer_syntax_uid))
        if context_id is None:
            log.warning("C-GET: no accepted context for %s in %s", inst.sop_class_uid, inst.transfer_syntax_uid)
            self.failed_uids.append(inst.sop_uid)
            return None
        if stored is None:
            self.failed_uids.append(inst.sop_uid)
            return None
        data, offset = stored
        message_id = self.assoc.next_message_id()
        command = ul.encode_command({
            ul.AFFECTED_SOP_CLASS_UID: inst.sop_class_uid, ul.COMMAND_FIELD: 0x0001, ul.MESSAGE_ID: message_id,
            ul.PRIORITY: 0, ul.COMMAND_DATA_SET_TYPE: 0x0001, ul.AFFECTED_SOP_INSTANCE_UID: inst.sop_uid})
        self.assoc.send_message(context_id, command, memoryview(data)[offset:])
        del data, stored  # the next file may be read meanwhile: hold one at a time here
        while_waiting()
        status = self._store_response(message_id)
        if status is None or STORAGE_SERVICE_CLASS_STATUS.get(status, (STATUS_FAILURE, ""))[0] == STATUS_FAILURE:
            self.failed_uids.append(inst.sop_uid)  # counted as failed by _RetrieveRecord.settle_status too
        return status

    def _store_response(self, message_id: int) -> int | None:
        """Read until the C-STORE-RSP of ``message_id``; a C-CANCEL-RQ for this C-GET on the way is noted."""
        while True:
            msg = self.assoc.next_message()
            field = ul.command_us(msg.command, ul.COMMAND_FIELD)
            responded = ul.command_us(msg.command, ul.MESSAGE_ID_BEING_RESPONDED_TO)
            if field == C_CANCEL_RQ and responded == self.message_id:
                self.cancelled = True
            elif field == C_STORE_RSP and responded == message_id:
                return ul.command_us(msg.command, ul.STATUS)
            else:
                raise ul.ProtocolError(ul.UNEXPECTED_PDU, f"unexpected DIMSE message 0x{field or 0:04X} in a C-GET")


def serve_get(assoc: LeanAssociation, message: Message, message_id: int, model: str, ts: str) -> None:
    _Get(assoc, message, message_id, model, ts).run()
