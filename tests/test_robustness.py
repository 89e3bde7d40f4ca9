"""Issue #2 §6: every file of pydicom's own test data, sent by DCMTK ``storescu``, is either stored and then
retrievable byte-identical (apart from the zeroed preamble) through C-GET and WADO-RS, or rejected with a
clear status, and the server answers the next request normally."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from auth_support import add_user, login
from fastapi.testclient import TestClient

from telerad.adapters.dimse.server import start_dimse
from telerad.app import create_app
from telerad.archive import registry

AE = "ROBUST"
ENV = dict(os.environ, TCP_NODELAY="1")
TEST_FILES = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file())


# getscu's option that makes it accept a transfer syntax for the C-GET's storage sub-operations
GETSCU_PREFER = {
    "1.2.840.10008.1.2": "+xi", "1.2.840.10008.1.2.1": "+xe", "1.2.840.10008.1.2.2": "+xb",
    "1.2.840.10008.1.2.1.99": "+xd", "1.2.840.10008.1.2.4.50": "+xy", "1.2.840.10008.1.2.4.51": "+xx",
    "1.2.840.10008.1.2.4.70": "+xs", "1.2.840.10008.1.2.4.80": "+xt", "1.2.840.10008.1.2.4.81": "+xu",
    "1.2.840.10008.1.2.4.90": "+xv", "1.2.840.10008.1.2.4.91": "+xw", "1.2.840.10008.1.2.5": "+xr",
}


def run(*args: str) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=120)
    return f"rc={p.returncode}\n{p.stdout}{p.stderr}"


def dataset_part(part10: bytes) -> bytes:
    """Bytes after the File Meta group (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length:]


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    delim = b"--" + boundary.group(1).encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


@pytest.fixture
def servers(ctx):
    site = registry.add_site(ctx, "GH", "General Hospital")
    registry.add_node(ctx, "GH", AE, "127.0.0.1", 104)
    dimse = start_dimse(ctx)
    try:
        add_user(ctx, "robust", ["site_staff"], ["GH"])
        with TestClient(create_app(ctx)) as client:
            login(client, "robust")
            yield site, client
    finally:
        dimse.shutdown()


@pytest.fixture
def reference_scp(tmp_path):
    """DCMTK's own storescp, bit-preserving: what storescu puts on the wire for a file is the reference
    (storescu re-encodes some files, e.g. drops Data Set Trailing Padding, before sending)."""
    from support import free_port

    port, out = free_port(), tmp_path / "reference"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "REF", "+xa", "+B", "-uf", "-od", str(out), str(port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        for _ in range(100):
            if run("echoscu", "-aec", "REF", "127.0.0.1", str(port)).startswith("rc=0"):
                break
            time.sleep(0.1)
        yield ["-aet", AE, "-aec", "REF", "127.0.0.1", str(port)], out
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_pydicom_test_file(ctx, servers, reference_scp, tmp_path):
    _site, client = servers
    ref_peer, ref_dir = reference_scp
    port = str(ctx.settings.dicom_port)
    peer = ["-aet", AE, "-aec", ctx.settings.ae_title, "127.0.0.1", port]
    stored, rejected, unsendable = [], [], []
    wire: dict[Path, tuple[str, bytes]] = {}  # (transfer syntax, data set) storescu sent, as storescp got them
    for path in TEST_FILES:
        before = set(ref_dir.iterdir())
        run("storescu", "-R", *ref_peer, str(path))
        new = set(ref_dir.iterdir()) - before
        if new:
            received = new.pop()
            ts = str(pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            wire[path] = (ts, dataset_part(received.read_bytes()))
        out = run("storescu", "-v", "-R", *peer, str(path))
        status = re.search(r"Received Store Response \(([^)]*)\)", out)
        if status is None:
            # storescu itself could not read the file or find a SOP class to propose: nothing was sent.
            assert "E:" in out or "W:" in out or "rc=1" in out, out
            unsendable.append(path.name)
        elif status.group(1) == "Success":
            stored.append(path)
        else:
            # Rejected: a named DICOM status reached the sender.
            assert re.search(r"Status|Error|Refused|Warning", out), out
            rejected.append((path.name, status.group(1)))
        echo = run("echoscu", *peer)
        assert echo.startswith("rc=0"), f"server not answering after {path.name}:\n{echo}"

    assert len(stored) > 80, (len(stored), rejected, unsendable)
    assert rejected, "the test data contains objects the archive must refuse (e.g. truncated pixel data)"

    # What was stored comes back byte-identical through C-GET and WADO-RS.
    seen: set[str] = set()
    for path in stored:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        if uid in seen:  # pydicom reuses UIDs across files: the first copy is the one kept
            continue
        seen.add(uid)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        ts, want = wire[path]

        r = client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{uid}",
                       headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200, (path.name, r.status_code, r.text[:300])
        (part,) = multipart_parts(r.content, r.headers["content-type"])
        assert part[:128] == b"\0" * 128
        assert dataset_part(part) == want, path.name

        out_dir = tmp_path / f"get{len(seen)}"
        out_dir.mkdir()
        prefer = GETSCU_PREFER.get(ts)
        got = run("getscu", "-v", *peer, "-S", "-od", str(out_dir), "+B", *([prefer] if prefer else []),
                  "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                  "-k", f"SeriesInstanceUID={series}", "-k", f"SOPInstanceUID={uid}")
        files = list(out_dir.iterdir())
        if prefer is None:
            # getscu cannot offer this transfer syntax: the archive must refuse rather than transcode.
            assert files == [] and "Failed" in got, (path.name, ts, got)
            continue
        assert len(files) == 1, (path.name, got)
        assert dataset_part(files[0].read_bytes()) == want, path.name
