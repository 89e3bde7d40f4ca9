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
from test_server import dcmtk, site_with_ct, start, stop


def _pids(pattern: str, text: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, text)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_dimse_workers_share_the_port_and_are_supervised(settings, ctx, tmp_path):
    """dimse_workers = 2: `telerad serve` and one `telerad dimse-worker` both accept associations on the DICOM
    port; a killed worker is restarted; stopping `telerad serve` stops its worker."""
    auth, files = site_with_ct(ctx, tmp_path, ("Workers^Test", "WRK1", "19700101", "F"), 24, 16)
    port, http = str(settings.dicom_port), f"http://127.0.0.1:{settings.http_port}"
    log = tmp_path / "serve.log"
    proc = start(settings, log, TELERAD_DIMSE_WORKERS="2")
    try:
        deadline = time.monotonic() + 60
        while "DIMSE worker listening" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        [worker] = _pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())
        for f in files:  # one association per object: the kernel spreads the connections over both listeners
            sent = dcmtk("storescu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port, str(f))
            assert sent.returncode == 0, sent.stderr
        r = httpx.get(f"{http}/dicom-web/studies", params={"PatientID": "WRK1"}, headers=auth)
        assert r.status_code == 200 and r.json()[0]["00201208"]["Value"] == [len(files)]
        storing = set(_pids(r"\[(\d+)\] telerad\.adapters\.dimse\.storage: C-STORE", log.read_text()))
        assert storing == {proc.pid, worker}  # 2^-23 that the kernel gave all 24 to one of them

        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        restarted = _pids(r"DIMSE worker 1 started \(pid (\d+)\)", log.read_text())[-1]
        assert restarted != worker and _alive(restarted)
        assert "exited with -9; restarting" in log.read_text()
        deadline = time.monotonic() + 30
        while log.read_text().count("DIMSE worker listening") < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        for _ in range(8):
            echo = dcmtk("echoscu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port)
            assert echo.returncode == 0, echo.stderr
    finally:
        stop(proc)
    assert not _alive(restarted)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", settings.dicom_port), timeout=2)


def test_dimse_worker_stops_when_its_parent_is_gone(settings, ctx, tmp_path):
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
           "TELERAD_DICOM_PORT": str(settings.dicom_port)}
    log = tmp_path / "worker.log"
    parent = subprocess.run(["sh", "-c", f"{sys.executable} -m telerad.cli dimse-worker >{log} 2>&1 & "
                                         "echo $!; sleep 4"], env=env, capture_output=True, text=True, timeout=60)
    worker = int(parent.stdout.strip())
    assert "DIMSE worker listening" in log.read_text()  # it was serving when its parent went
    deadline = time.monotonic() + 20
    while _alive(worker):  # the worker saw its parent go and stopped by itself
        assert time.monotonic() < deadline, "orphaned DIMSE worker still running"
        time.sleep(0.2)
    assert "is gone; the DIMSE worker stops" in log.read_text()


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
