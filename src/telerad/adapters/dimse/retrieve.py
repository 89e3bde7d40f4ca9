"""Query/Retrieve MOVE and GET SCPs (PS3.4 C.4.2, C.4.3), Patient Root and Study Root (PS3.4 C.6.1, C.6.2).

Retrieval is hierarchical (PS3.4 C.4.2.2.1, C.4.3.2.1): the Identifier carries the unique keys of the
Query/Retrieve Level and the levels above it, the level's own unique key is required (a single value or a
list of UIDs, PS3.4 C.2.2.2.2) and wild cards are not allowed. Instances are found with the shared matcher
(:func:`telerad.archive.query.find_stored`, IMAGE level) within the calling node's site only, and their stored
files are sent byte for byte (:mod:`.rawsend`) in C-STORE sub-operations:

- C-MOVE: to the Move Destination, which must be a registered node of the *same* site as the calling node
  (PS3.4 C.4.2.1.4: otherwise 0xA801 Move Destination unknown), over a new association whose presentation
  contexts propose each instance's stored SOP Class and Transfer Syntax, so nothing is transcoded.
- C-GET: over the same association, with the storage contexts the requestor negotiated with SCP/SCU role
  selection (PS3.4 C.4.3.1.3, PS3.7 D.3.3.4).
  Over plain TCP a C-GET association is served by :mod:`.lean_get` instead (same selection, same audit
  records, sent without pynetdicom's per-PDU queues); this handler serves C-GET over TLS and on associations
  that also propose FIND or MOVE.

Sub-operation counts and the final status (0x0000, 0xB000 with Failed SOP Instance UID List, 0xA702 when all
failed, 0xFE00 after C-CANCEL) follow PS3.4 C.4.2.1.4-5 / C.4.3.1.3 and are kept by pynetdicom.

Every C-GET and C-MOVE of an admitted node is audited when it ends (PS3.15 A.5.3.5 DICOM Instances
Transferred, ``Action.RETRIEVE``): one record per study, with the sub-operation counts of that study as the
peer's C-STORE responses reported them (:func:`.rawsend.sent_status`), the Move Destination, and the final
status; a refused or unmatched request is recorded once.

Limitation (pynetdicom 3.0): the handler cannot answer 0xA900 with an Error Comment before the sub-operation
count, so an invalid retrieve Identifier is answered with pynetdicom's 0xC5xx / 0xC4xx "Unable to process".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STATUS_FAILURE, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

from telerad.adapters.dimse.audit import Peer, outcome_of
from telerad.adapters.dimse.common import Runtime
from telerad.adapters.dimse.find import (
    CANCEL,
    MODEL_LEVELS,
    IdentifierError,
    model_of,
    parse_identifier,
    single_value,
)
from telerad.adapters.dimse.rawsend import StoredFile, sent_status
from telerad.archive import registry
from telerad.archive.query import find_stored
from telerad.archive.retrieve import read_ahead
from telerad.security.audit import MINOR_FAILURE, SUCCESS, Action, Event

log = logging.getLogger(__name__)

PENDING = 0xFF00
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
SUBOPERATIONS_FAILED = 0xA702  # PS3.4 C.4.2.1.5, C.4.3.1.4: unable to perform sub-operations
SUBOPERATIONS_WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
UNIQUE_KEYS = {"PATIENT": "00100020", "STUDY": "0020000D", "SERIES": "0020000E", "IMAGE": "00080018"}


@dataclass(frozen=True)
class StoredInstance:
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    study_uid: str = ""


def retrieve_keys(identifier: Dataset, model: str) -> dict[str, str]:
    """The unique keys of a retrieve Identifier, checked as PS3.4 C.4.2.2.1 requires."""
    level, keys, _ = parse_identifier(identifier, model)
    levels = MODEL_LEVELS[model]
    out: dict[str, str] = {}
    for lvl in levels[: levels.index(level) + 1]:
        tag = UNIQUE_KEYS[lvl]
        value = keys.get(tag, "").strip()
        if any(c in value for c in "*?"):
            raise IdentifierError(f"wild card in unique key ({tag[:4]},{tag[4:]}) of a retrieve")
        if value:
            out[tag] = value
    if UNIQUE_KEYS[level] not in out:
        tag = UNIQUE_KEYS[level]
        raise IdentifierError(f"retrieve at {level} level needs ({tag[:4]},{tag[4:]})")
    return out


def matching_instances(rt: Runtime, site_id: int, identifier: Dataset, model: str) -> list[StoredInstance]:
    """Stored instances of ``site_id`` selected by a retrieve Identifier, in archive order."""
    found = [StoredInstance(*row) for row in find_stored(rt.ctx, site_id, retrieve_keys(identifier, model))]
    read_ahead(rt.ctx, site_id, [i.blob_key for i in found])
    return found


def storage_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """One presentation context per stored (SOP Class, Transfer Syntax) pair: the files go out unchanged."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    if len(pairs) > MAX_CONTEXTS:
        log.warning("C-MOVE needs %d presentation contexts, proposing the first %d", len(pairs), MAX_CONTEXTS)
    return [build_context(sop_class, [ts]) for sop_class, ts in list(pairs)[:MAX_CONTEXTS]]


def _load(rt: Runtime, inst: StoredInstance) -> Dataset:
    """The stored file, to be sent byte for byte (:mod:`.rawsend`)."""
    path = rt.ctx.blobs.path(inst.blob_key)
    if path.is_file():
        return StoredFile(path, inst.sop_class_uid, inst.sop_uid, inst.transfer_syntax_uid)
    log.error("stored file of instance %s (blob %s) is missing", inst.sop_uid, inst.blob_key)
    # Without File Meta pynetdicom cannot send it: the sub-operation counts as failed with this UID
    # in the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2).
    ds = Dataset()
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.sop_uid
    return ds


@dataclass
class _StudyTransfer:
    instances: int = 0
    completed: int = 0
    warning: int = 0
    failed: int = 0


@dataclass
class _RetrieveRecord:
    """What the audit records of one C-GET or C-MOVE say (PS3.15 A.5.3.5)."""

    service: str  # "C-GET" or "C-MOVE"
    destination: str = ""  # Move Destination AE title
    studies: dict[str, _StudyTransfer] = field(default_factory=dict)
    status: int | None = None  # None: ended before the final response (association aborted)
    reason: str = ""
    study_uid: str = ""  # named by the Identifier, for a request that matched nothing

    def expect(self, instances: list[StoredInstance]) -> None:
        for inst in instances:
            self.studies.setdefault(inst.study_uid, _StudyTransfer()).instances += 1

    def settle(self, inst: StoredInstance, item: Dataset) -> None:
        """Count the sub-operation that sent ``item`` by its C-STORE response's category, as pynetdicom does
        (an unknown status, an exception or no response is a failure)."""
        self.settle_status(inst, sent_status(item))

    def settle_status(self, inst: StoredInstance, code: int | None) -> None:
        """Count a sub-operation by the Status of its C-STORE response (None: not sent or no response)."""
        category = STORAGE_SERVICE_CLASS_STATUS.get(code, (STATUS_FAILURE, ""))[0] if code is not None \
            else STATUS_FAILURE
        counts = self.studies.setdefault(inst.study_uid, _StudyTransfer())
        if category == STATUS_FAILURE:
            counts.failed += 1
        elif category == STATUS_WARNING:
            counts.warning += 1
        else:
            counts.completed += 1

    def finish(self) -> None:
        """The final status pynetdicom sends once every sub-operation is done (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
        done = sum(c.completed + c.warning + c.failed for c in self.studies.values())
        failed = sum(c.failed for c in self.studies.values())
        warned = sum(c.warning for c in self.studies.values())
        if not failed and not warned:
            self.status = 0x0000
        else:
            self.status = SUBOPERATIONS_FAILED if failed == done else SUBOPERATIONS_WARNING

    def events(self, peer: Peer) -> list[Event]:
        base: dict[str, Any] = {"service": self.service,
                                "status": "incomplete" if self.status is None else f"{self.status:04X}"}
        if self.destination:
            base["destination"] = self.destination
        if self.reason:
            base["reason"] = self.reason
        if not self.studies:
            outcome = SUCCESS if self.status in (0x0000, CANCEL) else MINOR_FAILURE
            return [peer.event(Action.RETRIEVE, outcome, self.study_uid, instances=0, **base)]
        out = []
        for study_uid, c in self.studies.items():
            sent = c.completed + c.warning
            unsent = 0 if self.status == CANCEL else c.instances - sent - c.failed
            out.append(peer.event(Action.RETRIEVE, outcome_of(sent, c.failed + unsent), study_uid,
                                  instances=c.instances, completed=c.completed, warning=c.warning, failed=c.failed,
                                  **base))
        return out


def _send(event: Any, rt: Runtime, instances: list[StoredInstance],
          record: _RetrieveRecord) -> Iterator[tuple[int, Dataset | None]]:
    """(Pending, file) per instance; pynetdicom performs each C-STORE sub-operation before resuming here."""
    for inst in instances:
        if event.is_cancelled:
            record.status = CANCEL
            yield CANCEL, None
            return
        item = _load(rt, inst)
        try:
            yield PENDING, item
        finally:  # resumed after the sub-operation, or closed when the association ended during it
            record.settle(inst, item)
    record.finish()


def _audited(event: Any, rt: Runtime, record: _RetrieveRecord, body: Iterator[Any]) -> Iterator[Any]:
    """Run a retrieve handler body and record its audit events when it ends, however it ends."""
    try:
        record.study_uid = single_value(str(event.identifier.get("StudyInstanceUID", "") or ""))
    except Exception:  # an undecodable identifier is refused by the body
        record.study_uid = ""
    try:
        yield from body
    except IdentifierError as exc:
        record.reason = str(exc)
        raise
    finally:
        rt.audit.record_all(record.events(rt.peer(event)))


def handle_move(event: Any, rt: Runtime) -> Iterator[Any]:
    """C-MOVE SCP: yield the destination, the number of sub-operations, then (Pending, dataset) per instance."""
    site_id = rt.site_of(event)
    dest_ae = str(event.move_destination or "").strip()
    if site_id is None:  # not reached: the association was not admitted
        yield None, None
        return
    record = _RetrieveRecord("C-MOVE", destination=dest_ae)
    yield from _audited(event, rt, record, _move(event, rt, site_id, dest_ae, record))


def _move(event: Any, rt: Runtime, site_id: int, dest_ae: str, record: _RetrieveRecord) -> Iterator[Any]:
    node = registry.find_node(rt.ctx, dest_ae) if dest_ae else None
    if node is None or node.site_id != site_id:
        log.warning("C-MOVE from %s to %r refused: not a node of the caller's site", rt.calling_ae(event), dest_ae)
        record.status, record.reason = MOVE_DESTINATION_UNKNOWN, "move destination is not a node of the site"
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    try:
        instances = matching_instances(rt, site_id, event.identifier, model_of(event.request.AffectedSOPClassUID))
    except IdentifierError as exc:
        log.warning("C-MOVE identifier refused: %s", exc)
        raise
    record.expect(instances)
    log.info("C-MOVE by %s of %d instances to %s (%s:%d)", rt.calling_ae(event), len(instances), dest_ae,
             node.host, node.port)
    # With no match pynetdicom answers Success (0 sub-operations) without associating.
    yield node.host, node.port, {"contexts": storage_contexts(instances)}
    if not instances:
        record.status = 0x0000
    try:
        yield len(instances)
    except GeneratorExit:  # pynetdicom stopped before the sub-operations
        if instances and event.assoc.is_established:  # it could not associate and answered 0xA801
            record.status, record.reason = MOVE_DESTINATION_UNKNOWN, "cannot associate with the move destination"
        raise
    yield from _send(event, rt, instances, record)


def handle_get(event: Any, rt: Runtime) -> Iterator[Any]:
    """C-GET SCP: yield the number of sub-operations, then (Pending, dataset) per instance."""
    site_id = rt.site_of(event)
    if site_id is None:
        yield 0
        return
    record = _RetrieveRecord("C-GET")
    yield from _audited(event, rt, record, _get(event, rt, site_id, record))


def _get(event: Any, rt: Runtime, site_id: int, record: _RetrieveRecord) -> Iterator[Any]:
    try:
        instances = matching_instances(rt, site_id, event.identifier, model_of(event.request.AffectedSOPClassUID))
    except IdentifierError as exc:
        log.warning("C-GET identifier refused: %s", exc)
        raise
    record.expect(instances)
    log.info("C-GET by %s of %d instances", rt.calling_ae(event), len(instances))
    if not instances:
        record.status = 0x0000
    yield len(instances)
    yield from _send(event, rt, instances, record)
