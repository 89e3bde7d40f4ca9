"""The ``telerad`` command as a user runs it (a real subprocess, real data directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pydicom.data
from pydicom.uid import generate_uid

from telerad.archive.demo import ct_series

TELERAD = [sys.executable, "-m", "telerad.cli"]


def run(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url}
    p = subprocess.run([*TELERAD, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"telerad {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_init_is_idempotent_and_registry(settings):
    run(settings, "init")
    run(settings, "init")
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    dup = run(settings, "site", "add", "--code", "GH", "--name", "Again", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    run(settings, "node", "add", "--site", "GH", "--ae", "GH_CT", "--host", "127.0.0.1", "--port", "11113")
    bad = run(settings, "node", "add", "--site", "GH", "--ae", "BAD\\AE", "--host", "h", "--port", "1", check=False)
    assert bad.returncode != 0 and "AE title" in bad.stderr
    assert "GH\tGH_CT\t127.0.0.1:11113" in run(settings, "node", "list").stdout
    assert "General Hospital" in run(settings, "site", "list").stdout


def test_import_folders_and_zip_then_check(settings, tmp_path: Path):
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    files = ct_series(("Imp^Ort", "IMP1", "", "O"), generate_uid(), "ACC", 4, 16)
    for i, data in enumerate(files[:2]):
        (folder / "sub" / f"{i}.dcm").write_bytes(data)
    (folder / "notes.txt").write_text("not DICOM")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        for i, data in enumerate(files[2:]):
            zf.writestr(f"z/{i}.dcm", data)
        zf.writestr("z/dup.dcm", files[0])
    p = run(settings, "import", "--site", "GH", str(folder), str(tmp_path / "more.zip"), check=False)
    assert p.returncode == 1  # one file was rejected, and the user is told which and why
    assert "stored 4, duplicate 1, conflict 0, rejected 1" in p.stdout
    assert "notes.txt" in p.stderr and "not a DICOM object" in p.stderr

    ok = run(settings, "check")
    assert "checked 4: 0 missing, 0 corrupt" in ok.stdout
    blob = next(p for p in (settings.home / "blobs").rglob("*") if p.is_file() and len(p.name) == 64)
    blob.write_bytes(b"corrupted")
    bad = run(settings, "check", check=False)
    assert bad.returncode == 1 and "CORRUPT" in bad.stdout


def test_check_removes_orphans_on_request(settings, tmp_path: Path):
    """The same instance imported again in another encoding is a duplicate; its copy, indexed by nothing, is an
    orphan that ``check --remove-orphans`` removes once older than ``--older-than`` minutes."""
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    first = tmp_path / "first.dcm"
    first.write_bytes(ct_series(("Orph^An", "ORPH1", "", "O"), generate_uid(), "ACC", 1, 16)[0])
    ds = pydicom.dcmread(first)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(tmp_path / "again.dcm", enforce_file_format=True)
    run(settings, "import", "--site", "GH", str(first))
    p = run(settings, "import", "--site", "GH", str(tmp_path / "again.dcm"))
    assert "stored 0, duplicate 1, conflict 0, rejected 0" in p.stdout
    assert "checked 1: 0 missing, 0 corrupt, 1 orphan\n" in run(settings, "check").stdout
    young = run(settings, "check", "--remove-orphans")  # written a moment ago, under the default hour
    assert "checked 1: 0 missing, 0 corrupt, 1 orphan, 0 orphan removed" in young.stdout
    too_soon = run(settings, "check", "--remove-orphans", "--older-than", "0", check=False)
    assert too_soon.returncode == 2 and "--older-than" in too_soon.stderr
    [orphan] = [p for p in (settings.home / "blobs").rglob("*") if len(p.name) == 64 and p.name in young.stdout]
    os.utime(orphan, (time.time() - 11 * 60,) * 2)  # last written or wanted 11 minutes ago
    gone = run(settings, "check", "--remove-orphans", "--older-than", "10")
    assert f"removed orphan blob {orphan.name}" in gone.stdout and "0 orphan, 1 orphan removed" in gone.stdout
    assert not orphan.exists()
    assert "checked 1: 0 missing, 0 corrupt, 0 orphan\n" in run(settings, "check").stdout


def test_import_pydicom_test_files_never_crashes(settings, tmp_path: Path):
    run(settings, "site", "add", "--code", "GH", "--name", "General Hospital")
    src = Path(pydicom.data.__file__).parent / "test_files"
    shutil.copytree(src, tmp_path / "tf")
    p = run(settings, "import", "--site", "GH", str(tmp_path / "tf"), check=False)
    assert p.returncode == 1, p.stderr[-2000:]
    stored = int(p.stdout.split("stored ")[1].split(",")[0])
    assert stored > 100
    assert "Traceback" not in p.stderr


def test_demo_loads_once_with_a_demo_user(settings):
    first = run(settings, "demo")
    assert "instances stored" in first.stdout and "demo user 'demo'" in first.stdout
    again = run(settings, "demo")
    assert "not loaded again" in again.stdout and "demo user" not in again.stdout
    token_file = settings.home / "demo-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    from fastapi.testclient import TestClient

    from telerad.app import create_app
    from telerad.context import Context

    ctx = Context.open(settings)
    try:
        client = TestClient(create_app(ctx))
        auth = {"Authorization": "Bearer " + token_file.read_text().strip()}
        assert len(client.get("/dicom-web/studies", headers=auth).json()) >= 1
        password = (settings.home / "demo-password").read_text().strip()
        assert client.post("/api/auth/login", json={"username": "demo", "password": password}).status_code == 200
    finally:
        ctx.close()
