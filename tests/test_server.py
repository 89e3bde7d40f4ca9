"""``telerad serve`` as a user starts it: HTTP and DICOM from one command, and a restart keeps everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from auth_support import add_user, bearer
from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"telerad serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"port {port} not listening after {timeout}s")


def start(settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
           "TELERAD_HTTP_PORT": str(settings.http_port), "TELERAD_DICOM_PORT": str(settings.dicom_port), **extra}
    proc = subprocess.Popen([sys.executable, "-m", "telerad.cli", "serve"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_port(settings.http_port, proc)
    wait_port(settings.dicom_port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})


def site_with_ct(ctx, tmp_path: Path, patient: tuple[str, str, str, str], slices: int,
                 size: int) -> tuple[dict[str, str], list[Path]]:
    """Site GH with node GH_CT and a site_staff token (its headers); a CT series written to files to send."""
    from telerad.archive import registry

    registry.add_site(ctx, "GH", "General Hospital")
    registry.add_node(ctx, "GH", "GH_CT", "127.0.0.1", 11113)
    add_user(ctx, "ris", ["site_staff"], ["GH"])
    files = []
    for i, data in enumerate(ct_series(patient, generate_uid(), "ACC9", slices, size)):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(data)
    return bearer(ctx, "ris", "GH"), files


def test_serve_dimse_and_http_then_restart(settings, ctx, tmp_path):
    auth, files = site_with_ct(ctx, tmp_path, ("Serve^Test", "SRV1", "19700101", "F"), 3, 32)
    port, http = str(settings.dicom_port), f"http://127.0.0.1:{settings.http_port}"
    log = tmp_path / "serve.log"
    proc = start(settings, log)
    try:
        echo = dcmtk("echoscu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port)
        assert echo.returncode == 0, echo.stderr
        sent = dcmtk("storescu", "-aet", "GH_CT", "-aec", "TELERAD", "127.0.0.1", port, *map(str, files))
        assert sent.returncode == 0, sent.stderr
        r = httpx.get(f"{http}/dicom-web/studies", params={"PatientID": "SRV1"}, headers=auth)
        assert r.status_code == 200 and r.json()[0]["00201208"]["Value"] == [3]
    finally:
        stop(proc)
    assert "GET /dicom-web/studies" not in log.read_text()  # no access lines by default: URLs carry PHI
    proc = start(settings, log)
    try:
        r = httpx.get(f"{http}/dicom-web/studies", params={"PatientID": "SRV1"}, headers=auth)
        assert r.status_code == 200 and len(r.json()) == 1, log.read_text()[-3000:]
    finally:
        stop(proc)


def test_access_log_is_opt_in(settings, ctx):
    from telerad.server import http_config

    assert http_config(ctx).access_log is False
    ctx.settings.http_access_log = True
    assert http_config(ctx).access_log is True


def test_settle_heap_takes_the_start_up_heap_out_of_full_collections():
    import gc

    from telerad.server import settle_heap

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # the modules, routes and mappers this process has loaded
    finally:
        gc.unfreeze()
