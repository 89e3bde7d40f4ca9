"""DIMSE worker processes (telerad/workers.py), driven through the real `telerad serve` and DCMTK tools."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from test_server import dcmtk, site_with_ct, start, stop


def _pids(pattern: str, text: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, text)]


def _stores(log: Path, at_least: int = 0) -> list[tuple[int, int]]:
    """(process id, objects stored or duplicate) of each C-STORE summary in the log, in order: the process that
    served an association logs one per study when the association ends. Waits for ``at_least`` of them."""
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text()
        found = re.findall(r"\[(\d+)\] telerad\.adapters\.dimse\.audit: C-STORE from .*?: (\d+) stored, (\d+) "
                           r"duplicates", text)
        if len(found) >= at_least:
            return [(int(pid), int(stored) + int(duplicates)) for pid, stored, duplicates in found]
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.1)


def _hold_association(port: int, store: Path | None = None) -> Association:
    """An association left open; with ``store``, one C-STORE on it first (its summary, logged when the
    association ends, tells who served it): a copy of that file under a new SOP Instance UID."""
    ae = AE(ae_title="GH_CT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="TELERAD")
    assert assoc.is_established
    if store is not None:
        ds = dcmread(store)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assert assoc.send_c_store(ds).Status == 0
    return assoc


def _server_side_connections(port: int) -> int:
    """Connections to ``port`` that a process here still holds open (ESTABLISHED or CLOSE_WAIT on the server
    side), from /proc/net/tcp{,6}: the connections telerad serve and its workers are still serving."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08")
    return count


def _wait_idle(port: int) -> None:
    """Until no process serves a connection on ``port`` (e.g. the readiness probe of `start`, or the last
    DCMTK tool's association): the loads that pick the next process are all zero again."""
    deadline = time.monotonic() + 30
    while _server_side_connections(port):
        assert time.monotonic() < deadline, "connections to the DICOM port still open after 30 s"
        time.sleep(0.05)
    time.sleep(0.2)  # a connection's load is counted down just after its socket is closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_dimse_workers_get_connections_by_load_and_are_supervised(settings, ctx, tmp_path):
    """dimse_workers = 2: `telerad serve` accepts every association and hands it to the process serving the
    fewest (itself on a tie); a killed worker is restarted; stopping `telerad serve` stops its worker."""
    auth, files = site_with_ct(ctx, tmp_path, ("Workers^Test", "WRK1", "19700101", "F"), 24, 16)
    port, http = str(settings.dicom_port), f"http://127.0.0.1:{settings.http_port}"
    log = tmp_path / "serve.log"
    proc = start(settings, log, TELERAD_DIMSE_WORKERS="2")
    try:
        deadline = time.monotonic() + 60
        while "DIMSE worker ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        [worker] = _pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())

        # Both idle, telerad serve keeps the next association itself. Held open, it keeps telerad serve
        # busier than the worker: the next association (one storescu sending all but one file) goes to the
        # worker.
        _wait_idle(settings.dicom_port)
        held = _hold_association(settings.dicom_port, store=files[0])
        try:
            sent = dcmtk("storescu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port, *map(str, files[:-1]))
            assert sent.returncode == 0, sent.stderr
            assert _stores(log, 1) == [(worker, len(files) - 1)]  # the held association is not over yet
        finally:
            held.release()
        assert _stores(log, 2)[1] == (proc.pid, 1)  # telerad serve had the held one
        _wait_idle(settings.dicom_port)  # both idle again: telerad serve keeps the next
        sent = dcmtk("storescu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port, str(files[-1]))
        assert sent.returncode == 0, sent.stderr
        assert _stores(log, 3)[2] == (proc.pid, 1)
        r = httpx.get(f"{http}/dicom-web/studies", params={"PatientID": "WRK1"}, headers=auth)
        assert r.status_code == 200 and r.json()[0]["00201208"]["Value"] == [len(files) + 1]  # + the held one's

        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        restarted = _pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())[-1]
        assert restarted != worker and _alive(restarted)
        assert "exited with -9; restarting" in log.read_text()
        deadline = time.monotonic() + 30
        while log.read_text().count("DIMSE worker ready") < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        for _ in range(8):
            echo = dcmtk("echoscu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port)
            assert echo.returncode == 0, echo.stderr
        _wait_idle(settings.dicom_port)  # the restarted worker gets connections too
        before = len(_stores(log))
        held = _hold_association(settings.dicom_port, store=files[1])
        try:
            sent = dcmtk("storescu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port, str(files[0]))
            assert sent.returncode == 0, sent.stderr
            assert _stores(log, before + 1)[before:] == [(restarted, 1)]  # a duplicate, counted as such
        finally:
            held.release()
        assert _stores(log, before + 2)[before + 1] == (proc.pid, 1)
    finally:
        stop(proc)
    assert not _alive(restarted)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", settings.dicom_port), timeout=2)


def test_dimse_worker_stops_when_its_parent_is_gone(settings, ctx, tmp_path):
    """A worker whose parent has gone stops, even while the other end of its hand-off pair stays open
    (here: held by the test, not by the parent)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
           "TELERAD_DICOM_PORT": str(settings.dicom_port), "TELERAD_WORKER_HANDOFF_FD": str(theirs.fileno())}
    log = tmp_path / "worker.log"
    try:
        parent = subprocess.run(["sh", "-c", f"{sys.executable} -m telerad.cli dimse-worker >{log} 2>&1 & "
                                             "echo $!; sleep 4"], env=env, capture_output=True, text=True,
                                timeout=60, pass_fds=(theirs.fileno(),))
        worker = int(parent.stdout.strip())
        assert "DIMSE worker ready" in log.read_text()  # it was serving when its parent went
        deadline = time.monotonic() + 20
        while _alive(worker):  # the worker saw its parent go and stopped by itself
            assert time.monotonic() < deadline, "orphaned DIMSE worker still running"
            time.sleep(0.2)
        assert "is gone; the DIMSE worker stops" in log.read_text()
    finally:
        ours.close()
        theirs.close()


def test_dimse_worker_started_by_hand_says_how_it_is_started(settings, ctx):
    env = {k: v for k, v in os.environ.items() if k != "TELERAD_WORKER_HANDOFF_FD"}
    env.update(TELERAD_HOME=str(settings.home), TELERAD_DATABASE_URL=settings.database_url)
    r = subprocess.run([sys.executable, "-m", "telerad.cli", "dimse-worker"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "started by telerad serve" in r.stderr and "Traceback" not in r.stderr


def test_second_serve_on_the_same_dicom_port_refuses_to_start(settings, ctx, tmp_path):
    """With SO_REUSEPORT the kernel would let a second telerad serve (here: its own HTTP port) join the DICOM
    port and take half of the associations; it stops at start instead."""
    log = tmp_path / "serve.log"
    proc = start(settings, log, TELERAD_DIMSE_WORKERS="2")
    try:
        second = subprocess.run(
            [sys.executable, "-m", "telerad.cli", "serve"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
                 "TELERAD_HTTP_PORT": str(_free_port()), "TELERAD_DICOM_PORT": str(settings.dicom_port),
                 "TELERAD_DIMSE_WORKERS": "2"})
        assert second.returncode == 3
        assert f"another telerad serve already serves DICOM port {settings.dicom_port}" in second.stderr
        assert proc.poll() is None  # the first one goes on
    finally:
        stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
