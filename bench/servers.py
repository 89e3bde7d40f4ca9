"""Start and stop the two archives under test: Orthanc (Debian package + DICOMweb plugin) and telerad.

Both run with ``TCP_NODELAY=1`` in their environment: Debian builds DCMTK (which Orthanc and the DCMTK
command-line tools use for DIMSE) without disabling Nagle's algorithm unless that variable is set, and
small DIMSE PDUs then wait for delayed ACKs - about ten times slower on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_AE = "BENCH"  # calling AE title of storescu/findscu/getscu
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TCP_NODELAY = "1"  # "1", "0" or "unset" (run.py --tcp-nodelay), for showing what Nagle costs


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if TCP_NODELAY != "unset":
        env["TCP_NODELAY"] = TCP_NODELAY
    return env


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"port {port} did not open within {timeout:.0f} s")


@dataclass
class Server:
    name: str
    ae_title: str
    http_port: int
    dicom_port: int
    workdir: Path
    headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def storage_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.workdir.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- Orthanc
def dicomweb_plugin() -> str:
    for cand in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",):
        if Path(cand).exists():
            return cand
    out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libOrthancDicomWeb.so" in line:
            return line.strip()
    raise RuntimeError("Orthanc DICOMweb plugin not found (apt-get install orthanc-dicomweb)")


def orthanc_version() -> str:
    out = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def start_orthanc(workdir: Path, client_ports: tuple[int, ...] = (0,)) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    config = {
        "Name": "bench-orthanc",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),  # SQLite index (the default back end)
        "TemporaryDirectory": str(workdir),
        "Plugins": [dicomweb_plugin()],
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        # The benchmark's DCMTK clients (storescu/findscu/getscu) call as BENCH from loopback.
        "DicomModalities": {
            "bench": {"AET": BENCH_AE, "Host": "127.0.0.1", "Port": client_ports[0] or 11113,
                      "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True,
                      "AllowStore": True},
        },
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Host": "127.0.0.1", "Ssl": False},
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=base_env(), cwd=workdir)
    srv = Server("orthanc", "ORTHANC", http_port, dicom_port, workdir, proc=proc, log_path=log)
    try:
        wait_tcp(dicom_port, 60, proc)
        _wait_http(f"{srv.base_url}/system", {}, 60, proc)
    except Exception:
        print(srv.log_tail(), file=sys.stderr)
        srv.stop()
        raise
    return srv


# --------------------------------------------------------------------------------------------- telerad
SITE = "B"


# Settings given with run.py --telerad-setting (TELERAD_* name -> value); none: telerad's defaults.
TELERAD_SETTINGS: dict[str, str] = {}


def telerad_env(home: Path, http_port: int, dicom_port: int) -> dict[str, str]:
    env = base_env()
    for k in list(env):
        if k.startswith("TELERAD_"):
            del env[k]
    env.update(TELERAD_SETTINGS)
    env.update({
        "TELERAD_HOME": str(home),
        "TELERAD_HTTP_PORT": str(http_port),
        "TELERAD_DICOM_PORT": str(dicom_port),
        "TELERAD_AE_TITLE": "TELERAD",
    })
    return env


def telerad_cmd() -> list[str]:
    exe = VENV_BIN / "telerad"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "telerad.cli"]


def telerad_prepare(workdir: Path) -> tuple[Path, dict[str, str], int, int]:
    home = workdir / "home"
    http_port, dicom_port = free_port(), free_port()
    env = telerad_env(home, http_port, dicom_port)
    for args in (["init"], ["site", "add", "--code", SITE, "--name", "Bench", "--accept-unregistered-loopback"],
                 ["user", "add", "--username", "bench", "--role", "site_staff", "--site", SITE, "--no-password"]):
        r = subprocess.run(telerad_cmd() + args, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"telerad {' '.join(args)} failed: {r.stdout}{r.stderr}")
    # DICOMweb needs credentials: a bearer token of a site_staff user (``token create`` prints only the token).
    r = subprocess.run(telerad_cmd() + ["token", "create", "--user", "bench", "--site", SITE], env=env,
                       capture_output=True, text=True, check=True)
    (home / "bench-token").write_text(r.stdout.strip())
    return home, env, http_port, dicom_port


def start_telerad(workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    home, env, http_port, dicom_port = telerad_prepare(workdir)
    return _spawn_telerad(workdir, env, http_port, dicom_port)


def restart_telerad(srv: Server) -> Server:
    srv.stop()
    env = telerad_env(srv.workdir / "home", srv.http_port, srv.dicom_port)
    return _spawn_telerad(srv.workdir, env, srv.http_port, srv.dicom_port)


def _spawn_telerad(workdir: Path, env: dict[str, str], http_port: int, dicom_port: int) -> Server:
    log = workdir / "telerad.log"
    proc = subprocess.Popen(telerad_cmd() + ["serve"], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env=env, cwd=workdir)
    srv = Server("telerad", "TELERAD", http_port, dicom_port, workdir,
                 headers={"Authorization": "Bearer " + (workdir / "home" / "bench-token").read_text().strip()},
                 proc=proc, log_path=log)
    try:
        wait_tcp(dicom_port, 60, proc)
        _wait_http(f"{srv.dicomweb}/studies?limit=1", srv.headers, 60, proc)
    except Exception:
        print(srv.log_tail(), file=sys.stderr)
        srv.stop()
        raise
    return srv


def telerad_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted src changes" if dirty else "")
    except OSError:
        return "unknown"


def _wait_http(url: str, headers: dict[str, str], timeout: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = httpx.get(url, headers=headers, timeout=5)
            if r.status_code < 500:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready within {timeout:.0f} s: {last}")


def which(tool: str) -> str:
    p = shutil.which(tool)
    if not p:
        raise RuntimeError(f"{tool} not found (apt-get install dcmtk)")
    return p
