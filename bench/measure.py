"""The measurements, each run the same way against either server (a :class:`servers.Server`)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from gen import DataSet, StudyInfo
from servers import BENCH_AE, Server, base_env

DICOM_JSON = "application/dicom+json"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"'
STUDY_ACCEPT = 'multipart/related; type="application/dicom"'
MB = 1e6


class BenchError(RuntimeError):
    """A server answered wrongly: the message says which URL/command and what came back."""


@dataclass
class Latency:
    samples: list[float] = field(default_factory=list)  # seconds

    def pct(self, q: float) -> float:
        s = sorted(self.samples)
        if not s:
            return float("nan")
        k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
        return s[k]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p95(self) -> float:
        return self.pct(95)


def _excerpt(r: httpx.Response) -> str:
    try:
        body = r.text[:300]
    except Exception:
        body = repr(r.content[:300])
    return f"{r.request.method} {r.request.url} -> {r.status_code}: {body!r}"


def client(srv: Server) -> httpx.Client:
    return httpx.Client(base_url=srv.dicomweb, headers=srv.headers, timeout=600,
                        limits=httpx.Limits(max_keepalive_connections=4))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its running descendants (telerad's
    DIMSE worker processes, with ``dimse_workers`` > 1)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total + sum(cpu_seconds(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in task.read_text().split()]
        except OSError:
            continue
    return kids


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's children that ended and were waited for (the DCMTK clients)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------------------------------------ DIMSE
def storescu(srv: Server, folders: list[str], progress: Callable[[], str] | None = None,
             log_dir: Path | None = None, timeout: float | None = None) -> tuple[float, list[str]]:
    """One storescu per folder, all at once; returns (wall seconds, per-process error excerpts).

    With ``timeout``, the senders are stopped after that many seconds (the caller counts what arrived).
    """
    procs = []
    logs = []
    t0 = time.perf_counter()
    for i, folder in enumerate(folders):
        log = tempfile.TemporaryFile() if log_dir is None else (log_dir / f"storescu-{srv.name}-{i}.log").open("w+b")
        logs.append(log)
        procs.append(subprocess.Popen(
            ["storescu", "-aet", BENCH_AE, "-aec", srv.ae_title, "-nh", "+sd", "+r", "-to", "120",
             "127.0.0.1", str(srv.dicom_port), folder],
            stdout=log, stderr=subprocess.STDOUT, env=base_env()))
    # Each sender's exit time is taken by a thread blocked in waitpid: polling every 50 ms, as this loop did,
    # rounded every rate to 2 % steps at 1,000 CT (4 % at 500), larger than the differences measured.
    ended = [t0] * len(procs)

    def wait(i: int) -> None:
        procs[i].wait()
        ended[i] = time.perf_counter()

    waiters = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(procs))]
    for w in waiters:
        w.start()
    last = time.monotonic()
    timed_out = False
    while alive := [w for w in waiters if w.is_alive()]:
        alive[0].join(0.05)  # returns as soon as that sender ends
        if timeout is not None and time.perf_counter() - t0 > timeout and not timed_out:
            timed_out = True
            print(f"    stopping the senders after {timeout:.0f} s (--scale-timeout)", flush=True)
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if progress is not None and time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"    {time.perf_counter() - t0:6.0f} s  {progress()}", flush=True)
    wall = max(ended) - t0
    errors = []
    for p, log in zip(procs, logs, strict=True):
        log.seek(0)
        out = log.read().decode(errors="replace")
        log.close()
        bad = [ln for ln in out.splitlines() if ln.startswith(("E:", "F:"))]
        if timed_out:
            continue
        if p.returncode != 0 or bad:
            errors.append(f"storescu rc={p.returncode}: " + " | ".join(bad[:5] or out.splitlines()[-5:]))
    return wall, errors


def count_study_instances(srv: Server, studies: list[StudyInfo]) -> int:
    n = 0
    with client(srv) as c:
        for s in studies:
            r = c.get("/studies", params={"StudyInstanceUID": s.study_uid, "includefield": "00201208"},
                      headers={"Accept": DICOM_JSON})
            if r.status_code == 204:
                continue
            if r.status_code != 200:
                raise BenchError("QIDO count: " + _excerpt(r))
            for item in r.json():
                v = item.get("00201208", {}).get("Value", [0])
                n += int(v[0])
    return n


@dataclass
class IngestResult:
    instances: int
    stored: int
    bytes: int
    wall: float
    server_cpu: float
    errors: list[str]
    client_cpu: float = float("nan")  # the storescu processes'

    @property
    def per_s(self) -> float:
        return self.instances / self.wall

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.wall


def ingest(srv: Server, data: DataSet, log_dir: Path | None = None) -> IngestResult:
    cpu0, clients0 = cpu_seconds(srv.pid), children_cpu_seconds()
    wall, errors = storescu(srv, data.groups, log_dir=log_dir)
    cpu, clients = cpu_seconds(srv.pid) - cpu0, children_cpu_seconds() - clients0
    stored = count_study_instances(srv, data.studies)
    if stored != data.n_instances:
        errors.append(f"only {stored} of {data.n_instances} instances found by QIDO after C-STORE")
    return IngestResult(data.n_instances, stored, data.n_bytes, wall, cpu, errors, clients)


def findscu_once(srv: Server, patient_id: str, verbose: bool = False) -> tuple[float, str]:
    cmd = ["findscu", "-S", "-aet", BENCH_AE, "-aec", srv.ae_title, "-k", "QueryRetrieveLevel=STUDY",
           "-k", f"PatientID={patient_id}", "-k", "StudyInstanceUID", "-k", "StudyDate",
           "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(srv.dicom_port)]
    if verbose:
        cmd.insert(1, "-v")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=base_env())
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} -> rc {r.returncode}: {(r.stdout + r.stderr)[-400:]}")
    return wall, r.stdout + r.stderr


def cfind(srv: Server, patient_id: str, runs: int, expect: int) -> Latency:
    _, out = findscu_once(srv, patient_id, verbose=True)
    got = out.count("(Pending)")
    if got != expect:
        raise BenchError(f"C-FIND PatientID={patient_id} on {srv.name}: {got} matches, expected {expect}; "
                         f"output tail: {out[-400:]!r}")
    lat = Latency()
    for _ in range(runs):
        lat.samples.append(findscu_once(srv, patient_id)[0])
    return lat


@dataclass
class Transfer:
    walls: list[float]
    bytes: int
    files: int = 0

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.wall


SHM = Path("/dev/shm")


def cget_dir(fallback: Path, need: int) -> tuple[Path, bool]:
    """Where getscu writes what it retrieves: memory (``/dev/shm``, when it has room for ``need`` bytes four
    times over) or ``fallback``; and whether that is memory. getscu's own file writes were most of a C-GET's
    wall time on disk, and they moved with the VM's dirty-page writeback (one server's C-GET of the same study
    took 0.24 s and 0.50 s minutes apart; the first round of a run was 2-3x faster than the next ones for both
    servers): in memory the figure is the servers'."""
    try:
        if SHM.is_dir() and os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free > 4 * need:
            return SHM, True
    except OSError:
        pass
    return fallback, False


def cget(srv: Server, study: StudyInfo, runs: int, tmp: Path, need: int = 0) -> Transfer:
    """C-GET of a whole study ``runs`` times into :func:`cget_dir`. Files received in memory are removed after
    each run; on disk they stay until the work dir is removed at the end of the run: deleting them there would
    slow the next server's ingest on some file systems (ext4 without a journal skips recently freed inodes when
    it allocates new ones)."""
    walls = []
    nbytes = nfiles = 0
    base, in_memory = cget_dir(tmp, need)
    for i in range(runs):
        base.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=f"cget-{srv.name}-{i}-", dir=base))  # new even in a reused --workdir
        try:
            cmd = ["getscu", "-S", "-aet", BENCH_AE, "-aec", srv.ae_title, "-od", str(out),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
                   "127.0.0.1", str(srv.dicom_port)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=base_env())
            walls.append(time.perf_counter() - t0)
            files = [p for p in out.iterdir() if p.is_file()]
            nfiles, nbytes = len(files), sum(p.stat().st_size for p in files)
            if r.returncode != 0 or nfiles != len(study.sop_uids):
                raise BenchError(f"C-GET study {study.study_uid} from {srv.name}: rc {r.returncode}, "
                                 f"{nfiles} of {len(study.sop_uids)} files; output tail: "
                                 f"{(r.stdout + r.stderr)[-400:]!r}")
        finally:
            if in_memory:
                shutil.rmtree(out, ignore_errors=True)
    return Transfer(walls, nbytes, nfiles)


# ---------------------------------------------------------------------------------------------- DICOMweb
def qido(srv: Server, patient_id: str, n: int, expect: int, warmup: int = 10) -> Latency:
    lat = Latency()
    with client(srv) as c:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r = c.get("/studies", params={"PatientID": patient_id}, headers={"Accept": DICOM_JSON})
            dt = time.perf_counter() - t0
            if i == 0:
                if r.status_code != 200 or len(r.json()) != expect:
                    raise BenchError(f"QIDO expected {expect} studies: " + _excerpt(r))
            if i >= warmup:
                lat.samples.append(dt)
    return lat


def metadata(srv: Server, study: StudyInfo, n: int, lean: bool = True) -> Latency:
    """The study's /metadata, ``n`` times after a warm-up that checks it: through :class:`LeanClient` (``lean``,
    the goal's figure) or through httpx like the other steps. httpx alone adds ~3 ms to a 600 KB response
    here (a 250-slice CT study's metadata: 2.1-2.5 ms through http.client, 5.3-5.9 ms through httpx, the same
    server), more than half of what the goal leaves telerad against Orthanc's ~70 ms."""
    lat = Latency()
    path = f"/studies/{study.study_uid}/metadata"
    lc = LeanClient(srv.dicomweb, srv.headers) if lean else None
    try:
        with client(srv) as c:
            for i in range(n + 1):  # first request is a warm-up
                t0 = time.perf_counter()
                if lc is not None:
                    status, body = lc.get(path, {"Accept": DICOM_JSON})
                else:
                    r = c.get(path, headers={"Accept": DICOM_JSON})
                    status, body = r.status_code, r.content
                dt = time.perf_counter() - t0
                if i == 0:
                    if status != 200:
                        raise BenchError(f"metadata -> {status}: {body[:300]!r}")
                    items = json.loads(body)
                    if len(items) != len(study.sop_uids):
                        raise BenchError(f"metadata: {len(items)} items for {len(study.sop_uids)} instances")
                else:
                    lat.samples.append(dt)
    finally:
        if lc is not None:
            lc.close()
    return lat


class LeanClient:
    """One keep-alive HTTP/1.1 connection through the standard library's ``http.client``: for the frames
    loop, where httpx alone costs more per request (~1 ms for a 512 KB response here) than the goal allows
    a server, and would hide the servers' difference (see reference.py)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        self.prefix = url.path.rstrip("/")
        self.headers = headers
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=600)

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.conn.request("GET", self.prefix + path, headers={**self.headers, **headers})
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def frames(srv: Server, study: StudyInfo, frame_bytes: int, lean: bool = True) -> Latency:
    """frames/1 of every instance of the series, one after another, as a viewer scrolls a stack: through
    :class:`LeanClient` (``lean``, the goal's figure) or through httpx like the other steps."""
    lat = Latency()
    urls = [f"/studies/{study.study_uid}/series/{study.series_uid}/instances/{sop}/frames/1"
            for sop in [study.sop_uids[0], *study.sop_uids]]  # the first is a warm-up
    if lean:
        lc = LeanClient(srv.dicomweb, srv.headers)
        try:
            for i, url in enumerate(urls):
                t0 = time.perf_counter()
                status, body = lc.get(url, {"Accept": FRAME_ACCEPT})
                dt = time.perf_counter() - t0
                if status != 200 or len(body) < frame_bytes:
                    raise BenchError(f"frame {url} -> {status}, {len(body)} bytes (expected >= {frame_bytes}): "
                                     f"{body[:300]!r}")
                if i:
                    lat.samples.append(dt)
        finally:
            lc.close()
        return lat
    with client(srv) as c:
        for i, url in enumerate(urls):
            t0 = time.perf_counter()
            r = c.get(url, headers={"Accept": FRAME_ACCEPT})
            dt = time.perf_counter() - t0
            if r.status_code != 200 or len(r.content) < frame_bytes:
                raise BenchError(f"frame ({len(r.content)} bytes, expected >= {frame_bytes}): " + _excerpt(r))
            if i:
                lat.samples.append(dt)
    return lat


def wado_study(srv: Server, study: StudyInfo, runs: int, min_bytes: int) -> Transfer:
    walls = []
    size = 0
    with client(srv) as c:
        for _ in range(runs):
            size = 0
            t0 = time.perf_counter()
            with c.stream("GET", f"/studies/{study.study_uid}", headers={"Accept": STUDY_ACCEPT}) as r:
                if r.status_code != 200:
                    r.read()
                    raise BenchError("WADO-RS study: " + _excerpt(r))
                ctype = r.headers.get("content-type", "")
                for chunk in r.iter_raw(1 << 20):
                    size += len(chunk)
            walls.append(time.perf_counter() - t0)
            if size < min_bytes or "multipart/related" not in ctype:
                raise BenchError(f"WADO-RS study {study.study_uid}: {size} bytes (expected >= {min_bytes}), "
                                 f"content-type {ctype!r}")
    return Transfer(walls, size)


def wado_study_curl(srv: Server, study: StudyInfo, runs: int, min_bytes: int) -> Transfer:
    """The same request with ``curl`` writing to /dev/null: a C client, so the figure is the server's rather
    than the Python client's (httpx reads a response at ~0.7-1.2 GB/s on this machine). curl's own
    ``time_total`` is used, which excludes its process start."""
    walls = []
    size = 0
    headers = [a for k, v in {**srv.headers, "Accept": STUDY_ACCEPT}.items() for a in ("-H", f"{k}: {v}")]
    for _ in range(runs):
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                            *headers, f"{srv.dicomweb}/studies/{study.study_uid}"],
                           capture_output=True, text=True, timeout=600)
        code, got, total = r.stdout.split()
        size = int(got)
        if code != "200" or size < min_bytes:
            raise BenchError(f"WADO-RS study (curl): HTTP {code}, {size} bytes; {r.stderr[-300:]}")
        walls.append(float(total))
    return Transfer(walls, size)


# -------------------------------------------------------------------------------------------- scale load
def total_instances(srv: Server) -> int:
    """How many instances the server holds now (Orthanc: /statistics; telerad: its SQLite index)."""
    if srv.name == "orthanc":
        return int(httpx.get(f"{srv.base_url}/statistics", timeout=30).json()["CountInstances"])
    db = srv.workdir / "home" / "telerad.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
    finally:
        con.close()


def instance_count_fn(srv: Server) -> Callable[[], str]:
    """A progress probe (best effort)."""
    def probe() -> str:
        try:
            return f"{total_instances(srv):,} instances in {srv.name}"
        except Exception as exc:  # progress only
            return f"(count unavailable: {exc})"
    return probe


def scale_load(srv: Server, folders: list[str], log_dir: Path | None = None,
               timeout: float | None = None) -> tuple[float, float, list[str]]:
    """Load the small instances through concurrent storescu; returns (wall, server CPU s, errors)."""
    cpu0 = cpu_seconds(srv.pid)
    wall, errors = storescu(srv, folders, progress=instance_count_fn(srv), log_dir=log_dir, timeout=timeout)
    return wall, cpu_seconds(srv.pid) - cpu0, errors


def telerad_import(srv: Server, folders: list[str], log_dir: Path,
                   timeout: float | None = None) -> tuple[float, list[str]]:
    """Bulk load through telerad's own ingest service: one ``telerad import`` process per folder."""
    from servers import SITE, telerad_cmd, telerad_env

    env = telerad_env(srv.workdir / "home", srv.http_port, srv.dicom_port)
    procs, logs = [], []
    t0 = time.perf_counter()
    for i, folder in enumerate(folders):
        log = (log_dir / f"telerad-import-{i}.log").open("w+b")
        logs.append(log)
        procs.append(subprocess.Popen(telerad_cmd() + ["import", "--site", SITE, folder], stdout=log,
                                      stderr=subprocess.STDOUT, env=env))
    probe = instance_count_fn(srv)
    last = time.monotonic()
    timed_out = False
    while any(p.poll() is None for p in procs):
        time.sleep(0.1)
        if timeout is not None and time.perf_counter() - t0 > timeout and not timed_out:
            timed_out = True
            print(f"    stopping the imports after {timeout:.0f} s (--scale-timeout)", flush=True)
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"    {time.perf_counter() - t0:6.0f} s  {probe()}", flush=True)
    wall = time.perf_counter() - t0
    errors = []
    for p, log in zip(procs, logs, strict=True):
        log.seek(0)
        out = log.read().decode(errors="replace")
        log.close()
        if p.returncode != 0 and not timed_out:
            errors.append(f"telerad import rc={p.returncode}: {out[-300:]}")
    return wall, errors


class Sampler(threading.Thread):
    """Samples machine load while a phase runs (to spot interference from other processes)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.loads: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(5):
            self.loads.append(os.getloadavg()[0])
