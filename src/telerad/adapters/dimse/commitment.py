"""Storage Commitment Push Model SCP (PS3.4 Annex J, SOP Class 1.2.840.10008.1.20.1).

N-ACTION Request Storage Commitment (Action Type ID 1, PS3.4 J.3.2.1) is answered at once; the commitment
itself is checked afterwards (PS3.4 J.3.2.1.2: the N-ACTION response only acknowledges the request): every
referenced instance must be stored for the calling node's site with the same SOP Class, and its blob must
still hash to its key (the bytes on disk are the bytes received). The result goes to the requesting node in an
N-EVENT-REPORT (PS3.4 J.3.3.1): Event Type 1 when all instances are committed, 2 when some failed, with
Failed SOP Sequence items carrying a Failure Reason (PS3.4 J.3.3.1.1.2: 0112H no such object instance,
0119H class/instance conflict, 0110H processing failure).

The report is sent on a new association to the node's registered address, with SCP/SCU Role Selection
proposing the SCP role for the archive (PS3.4 J.3.4, PS3.7 D.3.3.4): the requesting AE acts as the SCP of the
N-EVENT-REPORT. A node that is not registered (an unregistered loopback AE) has no address and is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from sqlalchemy import select

from telerad.adapters.dimse.common import NOT_AUTHORISED, Runtime, status
from telerad.archive import registry
from telerad.db.models import Instance

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # well-known SOP Instance (PS3.4 J.3.5)
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 Table J.3-1)
ALL_SUCCESS, SOME_FAILURE = 1, 2  # Event Type IDs (PS3.4 Table J.3-2)
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT = 0x0115
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REPORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_uid: str


def handle_n_action(event: Any, rt: Runtime) -> tuple[int | Dataset, Dataset | None]:
    """N-ACTION SCP: validate the request, queue the commitment check, answer Success (PS3.4 J.3.2.1.2)."""
    site_id = rt.site_of(event)
    calling = rt.calling_ae(event)
    if site_id is None:
        return status(NOT_AUTHORISED, "calling AE title not recognised"), None
    if event.action_type != REQUEST_COMMITMENT:
        return status(NO_SUCH_ACTION, f"unknown Action Type ID {event.action_type}"), None
    node = registry.find_node(rt.ctx, calling)
    if node is None or node.site_id != site_id:
        return status(NOT_AUTHORISED, "storage commitment needs a registered node to report to"), None
    try:
        info = event.action_information
        transaction_uid = str(info.TransactionUID).strip("\0 ")
        refs = [Reference(str(i.ReferencedSOPClassUID).strip("\0 "), str(i.ReferencedSOPInstanceUID).strip("\0 "))
                for i in info.ReferencedSOPSequence]
    except Exception as exc:
        return status(INVALID_ARGUMENT, f"invalid Action Information: {exc}"), None
    if not transaction_uid or not refs:
        return status(INVALID_ARGUMENT, "Transaction UID and Referenced SOP Sequence are required"), None
    rt.executor.submit(_commit_and_report, rt, site_id, node, transaction_uid, refs)
    log.info("storage commitment %s from %s: %d instances queued", transaction_uid, calling, len(refs))
    return 0x0000, None


def check(rt: Runtime, site_id: int, refs: list[Reference]) -> list[tuple[Reference, int]]:
    """Each reference with 0 when committed, else its Failure Reason."""
    uids = list({r.sop_uid for r in refs})
    stored: dict[str, tuple[str, str]] = {}
    with rt.ctx.db.session() as s:
        for i in range(0, len(uids), 500):
            q = select(Instance.sop_uid, Instance.sop_class_uid, Instance.blob_key).where(
                Instance.site_id == site_id, Instance.sop_uid.in_(uids[i: i + 500]))
            stored.update({uid: (cls, key) for uid, cls, key in s.execute(q)})
    out = []
    for ref in refs:
        if ref.sop_uid not in stored:
            out.append((ref, NO_SUCH_OBJECT))
            continue
        sop_class, key = stored[ref.sop_uid]
        if sop_class != ref.sop_class_uid:
            out.append((ref, CLASS_INSTANCE_CONFLICT))
        elif not rt.ctx.blobs.verify(key):
            log.error("storage commitment: blob %s of %s fails verification", key, ref.sop_uid)
            out.append((ref, PROCESSING_FAILURE))
        else:
            out.append((ref, 0))
    return out


def event_information(transaction_uid: str, results: list[tuple[Reference, int]], ae_title: str) -> Dataset:
    """Event Information of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok = [r for r, reason in results if reason == 0]
    failed = [(r, reason) for r, reason in results if reason != 0]
    if ok:
        ds.RetrieveAETitle = ae_title
        ds.ReferencedSOPSequence = [_item(r) for r in ok]
    if failed:
        items = []
        for r, reason in failed:
            item = _item(r)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_uid
    return item


def _commit_and_report(rt: Runtime, site_id: int, node: registry.NodeInfo, transaction_uid: str,
                       refs: list[Reference]) -> bool:
    try:
        results = check(rt, site_id, refs)
    except Exception:
        log.exception("storage commitment %s: check failed", transaction_uid)
        results = [(r, PROCESSING_FAILURE) for r in refs]
    ds = event_information(transaction_uid, results, rt.ae_title)
    event_type = ALL_SUCCESS if all(reason == 0 for _, reason in results) else SOME_FAILURE
    for attempt in range(1, REPORT_ATTEMPTS + 1):
        try:
            if send_report(rt, node, ds, event_type):
                log.info("storage commitment %s reported to %s (event type %d)", transaction_uid, node.ae_title,
                         event_type)
                return True
        except Exception:
            log.exception("storage commitment %s: report to %s failed", transaction_uid, node.ae_title)
        time.sleep(attempt)
    log.error("storage commitment %s: could not report to %s", transaction_uid, node.ae_title)
    return False


def send_report(rt: Runtime, node: registry.NodeInfo, ds: Dataset, event_type: int) -> bool:
    """Send one N-EVENT-REPORT on a new association; True when the peer answered Success."""
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = STORAGE_COMMITMENT_PUSH
    role.scu_role = False
    role.scp_role = True
    assoc = rt.ae.associate(node.host, node.port, contexts=[build_context(STORAGE_COMMITMENT_PUSH)],
                            ae_title=node.ae_title, ext_neg=[role])
    if not assoc.is_established:
        log.warning("storage commitment: association with %s at %s:%d failed", node.ae_title, node.host, node.port)
        return False
    try:
        rsp, _ = assoc.send_n_event_report(ds, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
        return bool(rsp) and int(getattr(rsp, "Status", -1)) == 0x0000
    finally:
        assoc.release()
