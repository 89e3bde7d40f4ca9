"""Storage Commitment Push Model SCP (PS3.4 Annex J).

DCMTK has no Storage Commitment SCU, so the requesting node is a small pynetdicom AE: it sends N-ACTION on
one association and, listening as a registered node, receives the N-EVENT-REPORT the archive sends on a new
association.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from sqlalchemy import select
from support import free_port

from telerad.archive import registry
from telerad.archive.demo import ct_series
from telerad.archive.ingest import store
from telerad.context import Context
from telerad.db.models import Instance

PATIENT = ("Commit^Pat", "CM1", "19900101", "F")
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Report:
    event_type: int
    info: Dataset
    calling_ae: str
    roles: tuple[bool, bool]


class CommitmentSCU:
    """A Storage Commitment SCU: N-ACTION out, N-EVENT-REPORT in (as the SCP of the report association)."""

    def __init__(self, ae_title: str, archive_port: int, archive_ae: str) -> None:
        self.ae_title = ae_title
        self.archive = ("127.0.0.1", archive_port, archive_ae)
        self.port = free_port()
        self.reports: queue.Queue[Report] = queue.Queue()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(StorageCommitmentPushModel)
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])

    def _on_report(self, event: Any) -> tuple[int, None]:
        [cx] = [c for c in event.assoc.accepted_contexts if c.context_id == event.context.context_id]
        self.reports.put(Report(event.event_type, event.event_information,
                                event.assoc.requestor.ae_title, (cx.as_scu, cx.as_scp)))
        return 0x0000, None  # (Status, Event Reply)

    def request(self, refs: list[tuple[str, str]], action_type: int = 1) -> tuple[Dataset, str]:
        info = Dataset()
        info.TransactionUID = generate_uid()
        items = []
        for sop_class, sop_uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            items.append(item)
        info.ReferencedSOPSequence = items
        host, port, called = self.archive
        assoc = self.ae.associate(host, port, ae_title=called)
        assert assoc.is_established
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assoc.release()
        return status, info.TransactionUID

    def report(self, timeout: float = 30) -> Report:
        return self.reports.get(timeout=timeout)

    def close(self) -> None:
        # Let the archive release its report association before this AE aborts whatever is left.
        deadline = time.monotonic() + 10
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self.ae.shutdown()


@pytest.fixture
def scu(ctx: Context, dimse: object, site: registry.Site) -> Iterator[CommitmentSCU]:
    client = CommitmentSCU("GH_MODALITY", ctx.settings.dicom_port, ctx.settings.ae_title)
    registry.add_node(ctx, "GH", "GH_MODALITY", "127.0.0.1", client.port)
    yield client
    client.close()


def stored(ctx: Context, site_id: int, n: int = 2) -> list[tuple[str, str]]:
    refs = []
    for data in ct_series(PATIENT, generate_uid(), "C1", n, size=16):
        r = store(ctx, site_id, data, "fixture")
        assert r.ok
        refs.append((r.sop_class_uid, r.sop_instance_uid))
    return refs


def test_all_committed_event_type_1(ctx: Context, scu: CommitmentSCU, site: registry.Site) -> None:
    refs = stored(ctx, site.id, 3)
    status, transaction = scu.request(refs)
    assert status.Status == 0x0000
    rep = scu.report()
    assert rep.event_type == 1
    assert rep.calling_ae == ctx.settings.ae_title
    # Role selection on the report association: the archive (requestor) is the SCP, this node the SCU.
    assert rep.roles == (True, False)
    assert rep.info.TransactionUID == transaction
    got = {(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in rep.info.ReferencedSOPSequence}
    assert got == set(refs)
    assert "FailedSOPSequence" not in rep.info
    assert rep.info.RetrieveAETitle == ctx.settings.ae_title


def test_failures_event_type_2(ctx: Context, scu: CommitmentSCU, site: registry.Site) -> None:
    ok, corrupt = stored(ctx, site.id, 2)
    wrong_class = stored(ctx, site.id, 1)[0]
    missing = (CT, generate_uid())
    with ctx.db.session() as s:
        key = s.execute(select(Instance.blob_key).where(Instance.sop_uid == corrupt[1])).scalar_one()
    path = ctx.blobs.path(key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # bit rot in the pixel data
    path.chmod(0o644)
    path.write_bytes(bytes(data))

    refs = [ok, corrupt, ("1.2.840.10008.5.1.4.1.1.4", wrong_class[1]), missing]
    status, transaction = scu.request(refs)
    assert status.Status == 0x0000
    rep = scu.report()
    assert rep.event_type == 2
    assert rep.info.TransactionUID == transaction
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in rep.info.ReferencedSOPSequence] == [ok]
    failed = {i.ReferencedSOPInstanceUID: i.FailureReason for i in rep.info.FailedSOPSequence}
    assert failed == {corrupt[1]: 0x0110, wrong_class[1]: 0x0119, missing[1]: 0x0112}


def test_other_sites_instances_are_not_committed(ctx: Context, scu: CommitmentSCU,
                                                 other_site: registry.Site) -> None:
    refs = stored(ctx, other_site.id, 1)
    status, _ = scu.request(refs)
    assert status.Status == 0x0000
    rep = scu.report()
    assert rep.event_type == 2
    assert [i.FailureReason for i in rep.info.FailedSOPSequence] == [0x0112]
    assert "ReferencedSOPSequence" not in rep.info


def test_unregistered_loopback_node_cannot_request(ctx: Context, dimse: object, site: registry.Site) -> None:
    registry.add_site(ctx, "DEMO", "Demo", accept_unregistered_loopback=True)
    client = CommitmentSCU("ANON_SCU", ctx.settings.dicom_port, ctx.settings.ae_title)
    try:
        status, _ = client.request([(CT, generate_uid())])
        assert status.Status == 0x0124  # Refused: not authorised - there is nowhere to send the report
        with pytest.raises(queue.Empty):
            client.report(timeout=1)
    finally:
        client.close()


def test_invalid_requests_are_refused(ctx: Context, scu: CommitmentSCU, site: registry.Site) -> None:
    refs = stored(ctx, site.id, 1)
    status, _ = scu.request([])
    assert status.Status == 0x0115  # Invalid argument value: no Referenced SOP Sequence items
    status, _ = scu.request(refs, action_type=2)
    assert status.Status == 0x0123  # No such action
    with pytest.raises(queue.Empty):
        scu.report(timeout=1)
