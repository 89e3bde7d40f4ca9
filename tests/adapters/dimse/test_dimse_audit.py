"""DIMSE services in the audit trail (IHE ATNA, PS3.15 A.5.3.5 and A.5.3.13), driven by the DCMTK tools.

C-STORE: one record per study per association, written when the association ends (released or aborted);
C-FIND: one record per query; C-GET / C-MOVE: one record per study retrieved. The actor is the calling node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from adapters.dimse.dimse_support import GH_AE, Dcmtk, StoreSCP, sample, write_files
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from support import free_port

from telerad.adapters.dimse.server import DimseServer
from telerad.archive import registry
from telerad.archive.demo import cr_image, ct_series
from telerad.archive.ingest import store
from telerad.context import Context
from telerad.security import audit
from telerad.security.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, Action

PATIENT = ("Audit^Pat", "AUD1", "19600101", "M")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def events(ctx: Context, action: str, wait_for: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The records of ``action``, oldest first; waits until there are at least ``wait_for`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        ctx.audit.flush()
        rows = audit.search(ctx.db, action=action, limit=1000)[1][::-1]
        if len(rows) >= wait_for or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def by_study(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {r["study_uid"]: r for r in rows}
    assert len(out) == len(rows), rows
    return out


def assert_node_actor(row: dict[str, Any], ae: str = GH_AE, site: str = "GH") -> None:
    assert (row["actor_type"], row["actor"], row["source"], row["site"]) == ("node", ae, "127.0.0.1", site)


# --- C-STORE -------------------------------------------------------------------------------------------

def test_store_is_one_record_per_study_per_association(ctx: Context, dcmtk: Dcmtk, gh_node: str,
                                                       tmp_path: Path) -> None:
    a, b = generate_uid(), generate_uid()
    files = write_files(tmp_path / "in", ct_series(PATIENT, a, "A1", slices=3, size=32) + [cr_image(PATIENT, b, "B1")])
    r = dcmtk.store(GH_AE, files)
    assert r.rc == 0, r.out
    rows = by_study(events(ctx, Action.STORE, wait_for=2))
    assert set(rows) == {a, b}
    for uid, n in ((a, 3), (b, 1)):
        row = rows[uid]
        assert_node_actor(row)
        assert row["outcome"] == SUCCESS and row["patient_id"] == PATIENT[1]
        assert row["details"] == {"service": "C-STORE", "instances": n, "stored": n, "duplicates": 0, "failed": 0}

    r = dcmtk.store(GH_AE, files[:3])  # a second association: its own record, duplicates counted
    assert r.rc == 0, r.out
    rows = events(ctx, Action.STORE, wait_for=3)
    assert len(rows) == 3
    assert rows[-1]["study_uid"] == a and rows[-1]["details"]["duplicates"] == 3


def test_store_failures_are_counted_with_their_status(ctx: Context, dcmtk: Dcmtk, gh_node: str,
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="telerad.adapters.dimse")
    study = generate_uid()
    first = cr_image(PATIENT, study, "C1")
    assert dcmtk.store(GH_AE, write_files(tmp_path / "first", [first])).rc == 0
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(first))
    ds.PatientName = "Someone^Else"
    conflict = tmp_path / "conflict.dcm"
    ds.save_as(conflict, enforce_file_format=True)
    fresh = write_files(tmp_path / "fresh", [cr_image(PATIENT, study, "C1")])
    dcmtk.store(GH_AE, [conflict, *fresh], "-nh")  # -nh: go on after the 0111H failure
    rows = events(ctx, Action.STORE, wait_for=2)
    assert len(rows) == 2
    last = rows[-1]
    assert last["study_uid"] == study and last["outcome"] == MINOR_FAILURE
    assert last["details"]["stored"] == 1 and last["details"]["failed"] == 1
    assert last["details"]["failure_statuses"] == {"0111": 1}
    # The log says the same, one line per study and association; stored objects are not logged one by one.
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    summaries = [line for line in lines if line.startswith("C-STORE from")]
    assert summaries[-1] == f"C-STORE from {GH_AE} (127.0.0.1), study {study}: 1 stored, 0 duplicates, 1 failed " \
                            "{'0111': 1}"
    assert not [line for line in lines if line.startswith("C-STORE 1.")]


def test_refused_object_is_a_serious_failure(ctx: Context, dcmtk: Dcmtk, gh_node: str, tmp_path: Path) -> None:
    ctx.settings.max_rows = 16
    files = write_files(tmp_path / "in", ct_series(PATIENT, generate_uid(), "R1", slices=1, size=32))
    assert dcmtk.store(GH_AE, files).rc != 0
    [row] = events(ctx, Action.STORE, wait_for=1)
    assert row["outcome"] == SERIOUS_FAILURE and row["study_uid"] == ""  # not parsed far enough to know
    assert row["details"]["failed"] == 1 and row["details"]["failure_statuses"] == {"A700": 1}


@pytest.mark.parametrize("end", ["release", "abort"])
def test_store_is_recorded_when_the_association_ends(ctx: Context, dimse: DimseServer, gh_node: str,
                                                     end: str) -> None:
    study = generate_uid()
    ae = AE(ae_title=GH_AE)
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", ctx.settings.dicom_port, ae_title=ctx.settings.ae_title)
    assert assoc.is_established
    try:
        for data in ct_series(PATIENT, study, "E1", slices=2, size=32):
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            assert assoc.send_c_store(ds).Status == 0x0000
        assert events(ctx, Action.STORE, timeout=0) == []  # counted in memory only while associated
    finally:
        assoc.release() if end == "release" else assoc.abort()
        ae.shutdown()
    [row] = events(ctx, Action.STORE, wait_for=1)
    assert row["study_uid"] == study and row["details"]["instances"] == 2
    time.sleep(0.3)
    assert len(events(ctx, Action.STORE)) == 1  # released/aborted and connection closed: recorded once


# --- C-FIND --------------------------------------------------------------------------------------------

@pytest.fixture
def gh_study(ctx: Context, site: registry.Site, gh_node: str) -> tuple[str, list[str]]:
    uid = generate_uid()
    sops = []
    for data in ct_series(PATIENT, uid, "Q1", slices=3, size=32) + [cr_image(PATIENT, uid, "Q1")]:
        r = store(ctx, site.id, data, "fixture")
        assert r.ok, r.reason
        sops.append(r.sop_instance_uid)
    return uid, sops


def test_find_is_recorded_with_level_and_keys(ctx: Context, dcmtk: Dcmtk, gh_study: tuple[str, list[str]]) -> None:
    r, rsps = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", f"PatientID={PATIENT[1]}", "PatientName",
                                       "StudyInstanceUID"])
    assert r.rc == 0 and len(rsps) == 1, r.out
    [row] = events(ctx, Action.QUERY, wait_for=1)
    assert_node_actor(row)
    assert row["outcome"] == SUCCESS and row["patient_id"] == PATIENT[1] and row["study_uid"] == ""
    d = row["details"]
    assert d["service"] == "C-FIND" and d["sop_class_uid"] == STUDY_ROOT_FIND and d["level"] == "STUDY"
    assert d["keys"] == {"00100020": PATIENT[1]} and d["returned"] == 1 and d["status"] == "0000"
    assert PATIENT[1] in d["query"]  # the Identifier itself, as DICOM JSON

    r, _ = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={gh_study[0]}"])
    assert r.rc == 0, r.out
    row = events(ctx, Action.QUERY, wait_for=2)[-1]
    assert row["study_uid"] == gh_study[0] and row["patient_id"] == PATIENT[1]  # the writer names the patient
    assert row["details"]["level"] == "SERIES" and row["details"]["returned"] == 2


def test_find_with_wild_cards_names_no_study(ctx: Context, dcmtk: Dcmtk, gh_study: tuple[str, list[str]]) -> None:
    r, _ = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=AUD*"])
    assert r.rc == 0, r.out
    [row] = events(ctx, Action.QUERY, wait_for=1)
    assert row["patient_id"] == "" and row["study_uid"] == "" and row["details"]["keys"] == {"00100020": "AUD*"}


def test_refused_find_is_recorded(ctx: Context, dcmtk: Dcmtk, gh_node: str) -> None:
    r, _ = dcmtk.find(GH_AE, "-S", ["QueryRetrieveLevel=PATIENT"])  # no PATIENT level in Study Root
    assert r.rc == 0 or "0xa900" in r.out.lower()
    [row] = events(ctx, Action.QUERY, wait_for=1)
    assert row["outcome"] == MINOR_FAILURE and row["details"]["status"] == "A900"


# --- C-GET / C-MOVE ------------------------------------------------------------------------------------

def test_get_is_one_record_per_study(ctx: Context, dcmtk: Dcmtk, site: registry.Site, gh_study: tuple[str, list[str]],
                                     tmp_path: Path) -> None:
    other = generate_uid()
    assert store(ctx, site.id, cr_image(PATIENT, other, "Q2"), "fixture").ok
    r, files = dcmtk.get(GH_AE, "-P", ["QueryRetrieveLevel=PATIENT", f"PatientID={PATIENT[1]}"])
    assert r.rc == 0 and len(files) == 5, r.out
    rows = by_study(events(ctx, Action.RETRIEVE, wait_for=2))
    assert set(rows) == {gh_study[0], other}
    for uid, n in ((gh_study[0], 4), (other, 1)):
        row = rows[uid]
        assert_node_actor(row)
        assert row["outcome"] == SUCCESS and row["patient_id"] == PATIENT[1]
        assert row["details"] == {"service": "C-GET", "status": "0000", "instances": n, "completed": n,
                                  "warning": 0, "failed": 0}


def test_failed_get_sub_operations_are_recorded(ctx: Context, dcmtk: Dcmtk, site: registry.Site, gh_node: str,
                                                tmp_path: Path) -> None:
    path, uid = sample("SC_rgb_jpeg_dcmtk.dcm", tmp_path / "src")
    assert store(ctx, site.id, path.read_bytes(), "fixture").ok
    r, files = dcmtk.get(GH_AE, "-S", ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={uid}"])  # JPEG not accepted
    assert files == []
    [row] = events(ctx, Action.RETRIEVE, wait_for=1)
    assert row["outcome"] == SERIOUS_FAILURE
    assert row["details"]["failed"] == 1 and row["details"]["status"] == "A702"


def test_move_names_the_destination(ctx: Context, dcmtk: Dcmtk, gh_study: tuple[str, list[str]],
                                    storescp_factory: Callable[[str], StoreSCP]) -> None:
    scp = storescp_factory("GH_VIEWER")
    registry.add_node(ctx, "GH", "GH_VIEWER", "127.0.0.1", scp.port)
    r = dcmtk.move(GH_AE, "-S", "GH_VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study[0]}"])
    assert r.rc == 0, r.out
    [row] = events(ctx, Action.RETRIEVE, wait_for=1)
    assert_node_actor(row)
    assert row["study_uid"] == gh_study[0] and row["outcome"] == SUCCESS
    assert row["details"] == {"service": "C-MOVE", "destination": "GH_VIEWER", "status": "0000", "instances": 4,
                              "completed": 4, "warning": 0, "failed": 0}


def test_refused_moves_are_recorded(ctx: Context, dcmtk: Dcmtk, gh_study: tuple[str, list[str]]) -> None:
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={gh_study[0]}"]
    r = dcmtk.move(GH_AE, "-S", "NOWHERE", keys)
    assert "0xa801" in r.out.lower()
    registry.add_node(ctx, "GH", "GH_OFFLINE", "127.0.0.1", free_port())  # registered, nothing listening
    r = dcmtk.move(GH_AE, "-S", "GH_OFFLINE", keys)
    assert "0xa801" in r.out.lower()
    unknown, offline = events(ctx, Action.RETRIEVE, wait_for=2)
    assert unknown["outcome"] == MINOR_FAILURE and unknown["study_uid"] == gh_study[0]
    assert unknown["details"]["destination"] == "NOWHERE" and unknown["details"]["status"] == "A801"
    assert unknown["details"]["instances"] == 0
    assert offline["outcome"] == SERIOUS_FAILURE and offline["details"]["status"] == "A801"
    assert offline["details"]["instances"] == 4 and offline["details"]["failed"] == 0
    assert "cannot associate" in offline["details"]["reason"]
