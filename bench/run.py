"""telerad vs Orthanc: the same work on both archives, one run, a table of figures and ratios.

    .venv/bin/python bench/run.py [--instances 1000] [--scale-instances 100000]

See bench/README.md. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402
import measure  # noqa: E402
import paired  # noqa: E402
import rounds  # noqa: E402
import servers  # noqa: E402
from ingest_floor import IngestFloor, durable_rate, measure_floor, transport_rate  # noqa: E402
from profile_top import report as profile_report  # noqa: E402
from reference import NginxStudy, Reference, asgi_frame_floor, frame_floor, measure_reference, nginx_exe  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
MS = 1000.0


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


@dataclass
class Results:
    """Figures per server: name -> value (None when the step failed), plus the failures."""

    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: paired.PerRound = field(default_factory=paired.PerRound)  # the paired rounds' figures

    def put(self, server: str, key: str, value: float | None) -> None:
        self.values.setdefault(server, {})[key] = value

    def get(self, server: str, key: str) -> float | None:
        return self.values.get(server, {}).get(key)

    def fail(self, server: str, step: str, exc: BaseException) -> None:
        msg = f"{step}: {exc}"
        if not isinstance(exc, measure.BenchError):
            msg += " | " + traceback.format_exc().strip().splitlines()[-1]
        self.errors.setdefault(server, []).append(msg)
        log(f"  {server} {step} FAILED: {exc}")


def step(res: Results, server: str, name: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one broken endpoint must not end the run
        res.fail(server, name, exc)


# ----------------------------------------------------------------------------------------------- suite
@dataclass
class Small:
    sample: list[str]  # folders sent to both servers with storescu (a comparable small-instance ingest rate)
    n_sample: int
    bulk: list[str]  # folders of the rest, loaded the fastest way each server offers
    n_bulk: int


class Suite:
    """The measurements, each on one server and returning its figures; run.py takes them in paired rounds
    (paired.py) on both servers at once. ``cts[r]`` / ``cts_after[r]`` are the CT data sets of ingest round
    ``r`` (the first is the one every other measurement reads)."""

    def __init__(self, cts: list[gen.DataSet], cts_after: list[gen.DataSet], small: Small,
                 args: argparse.Namespace, res: Results, tmp: Path) -> None:
        self.cts, self.cts_after, self.small, self.args, self.res, self.tmp = cts, cts_after, small, args, res, tmp
        self.study = cts[0].studies[0]
        self.frame_bytes = args.size * args.size * 2

    def ingest(self, srv: servers.Server, rnd: int, scale: bool = False) -> dict[str, float]:
        data = (self.cts_after if scale else self.cts)[rnd]
        r = measure.ingest(srv, data, log_dir=self.tmp)
        what = "ingest at scale" if scale else "ingest"
        log(f"  {srv.name} {what}: {r.instances} instances, {r.bytes / 1e6:.0f} MB in {r.wall:.1f} s = "
            f"{r.per_s:.1f} inst/s, {r.mb_s:.1f} MB/s (server CPU {r.server_cpu / r.instances * MS:.2f} ms/inst)")
        if r.errors:
            raise measure.BenchError("; ".join(r.errors))
        if scale:
            return {"ingest_per_s_scale": r.per_s, "ingest_mb_s_scale": r.mb_s}
        return {"ingest_per_s": r.per_s, "ingest_mb_s": r.mb_s, "ingest_cpu_ms": r.server_cpu / r.instances * MS,
                "ingest_client_cpu_ms": r.client_cpu / r.instances * MS}

    def ingest_scale(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        return self.ingest(srv, rnd, scale=True)

    def qido(self, srv: servers.Server, rnd: int, suffix: str = "") -> dict[str, float]:
        lat = measure.qido(srv, self.study.patient_id, self.args.qido_requests, expect=1)
        log(f"  {srv.name} QIDO{suffix}: p50 {lat.p50 * MS:.2f} ms, p95 {lat.p95 * MS:.2f} ms")
        return {f"qido_p50{suffix}": lat.p50 * MS, f"qido_p95{suffix}": lat.p95 * MS}

    def qido_scale(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        return self.qido(srv, rnd, "_scale")

    def metadata(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        n = self.args.metadata_requests
        if rnd == 0:  # Orthanc's first loop on a study was its slowest (260.8 then 101.9 ms): one unrecorded
            measure.metadata(srv, self.study, n)
        httpx_lat = measure.metadata(srv, self.study, n, lean=False)
        lat = measure.metadata(srv, self.study, n)
        log(f"  {srv.name} metadata ({len(self.study.sop_uids)} instances): p50 {lat.p50 * MS:.1f} ms "
            f"(http.client), {httpx_lat.p50 * MS:.1f} ms (httpx)")
        return {"metadata_p50": lat.p50 * MS, "metadata_httpx_p50": httpx_lat.p50 * MS}

    def frames(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        lat = measure.frames(srv, self.study, self.frame_bytes)
        lat_x = measure.frames(srv, self.study, self.frame_bytes, lean=False)
        log(f"  {srv.name} frames/1 over {len(self.study.sop_uids)} instances: p50 {lat.p50 * MS:.2f} ms, "
            f"p95 {lat.p95 * MS:.2f} ms (http.client); p50 {lat_x.p50 * MS:.2f} ms (httpx)")
        return {"frame_p50": lat.p50 * MS, "frame_p95": lat.p95 * MS, "frame_httpx_p50": lat_x.p50 * MS}

    def wado(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        """Whole-study WADO-RS through httpx, ``--wado-runs`` requests in a row (curl: :meth:`wado_curl`)."""
        size = len(self.study.sop_uids) * self.frame_bytes
        t = measure.wado_study(srv, self.study, self.args.wado_runs, size)
        log(f"  {srv.name} WADO-RS study (httpx), {t.bytes / 1e6:.0f} MB: {t.mb_s:.0f} MB/s")
        return {"wado_mb_s": t.mb_s, "wado_s": t.wall}

    def wado_curl(self, srvs: dict[str, servers.Server], order: list[str],
                  nginx: NginxStudy | None) -> dict[str, dict[str, float]]:
        """One round of whole-study WADO-RS with curl, the participants' requests interleaved: one request each in
        ``order``, ``--wado-runs`` times (``BOUND``: nginx with ``sendfile off``). Each one's MB/s (median) and CPU
        per request.

        Why interleaved: in turns of 15 requests each, the VM's speed changed between one turn and the next by as
        much as the servers differ (a lab, turns alternating: nginx 1,807-2,967 MB/s, telerad 2,220-3,562 with the
        same code and bytes; single requests alternating: medians 2,671 and 2,724)."""
        size = len(self.study.sop_uids) * self.frame_bytes
        walls: dict[str, list[float]] = {n: [] for n in order}
        got: dict[str, int] = {}
        cpu = dict.fromkeys(order, 0.0)
        for _ in range(self.args.wado_runs):
            for name in order:
                if name == BOUND:
                    assert nginx is not None
                    pid = nginx.pid
                    c0 = measure.cpu_seconds(pid)
                    walls[name].append(nginx.seconds("sendfile off"))
                    got[name] = nginx.size
                else:
                    pid = srvs[name].pid
                    c0 = measure.cpu_seconds(pid)
                    t = measure.wado_study_curl(srvs[name], self.study, 1, size)
                    walls[name].append(t.walls[0])
                    got[name] = t.bytes
                cpu[name] += measure.cpu_seconds(pid) - c0
        out = {}
        for name in order:
            mb_s = got[name] / statistics.median(walls[name]) / 1e6
            cpu_ms = cpu[name] / self.args.wado_runs * MS
            log(f"  {name} WADO-RS study (curl, interleaved): {mb_s:.0f} MB/s (CPU {cpu_ms:.1f} ms/request)")
            out[name] = {"wado_curl_mb_s": mb_s, "wado_curl_cpu_ms": cpu_ms}
        return out

    def cfind(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        lat = measure.cfind(srv, self.study.patient_id, self.args.cfind_runs, expect=1)
        log(f"  {srv.name} C-FIND: p50 {lat.p50 * MS:.1f} ms, p95 {lat.p95 * MS:.1f} ms")
        return {"cfind_p50": lat.p50 * MS}

    def cget(self, srv: servers.Server, rnd: int) -> dict[str, float]:
        runs = self.args.cget_runs
        cpu0 = measure.cpu_seconds(srv.pid)
        need = sum(Path(f).stat().st_size for f in self.study.files)
        t = measure.cget(srv, self.study, runs, self.tmp, need)
        cpu_ms = (measure.cpu_seconds(srv.pid) - cpu0) / (runs * max(t.files, 1)) * MS
        log(f"  {srv.name} C-GET study: {t.files} files, {t.bytes / 1e6:.0f} MB in {t.wall:.2f} s = "
            f"{t.mb_s:.0f} MB/s (server CPU {cpu_ms:.2f} ms/instance)")
        return {"cget_s": t.wall, "cget_mb_s": t.mb_s, "cget_cpu_ms": cpu_ms}

    def scale_sample(self, srv: servers.Server) -> None:
        name, small = srv.name, self.small
        n0 = measure.total_instances(srv)
        log(f"  {name} small-instance ingest: {small.n_sample:,} instances via {len(small.sample)} storescu ...")
        wall, cpu, errors = measure.scale_load(srv, small.sample, log_dir=self.tmp)
        loaded = measure.total_instances(srv) - n0
        self.res.put(name, "small_per_s", loaded / wall)
        self.res.put(name, "small_cpu_ms", cpu / max(loaded, 1) * MS)
        log(f"  {name} small-instance ingest: {loaded:,} in {wall:.1f} s = {loaded / wall:.0f} inst/s "
            f"(server CPU {cpu / max(loaded, 1) * MS:.1f} ms/instance)")
        if loaded != small.n_sample:
            errors.append(f"{loaded} of {small.n_sample} small instances stored")
        if errors:
            raise measure.BenchError("; ".join(errors))

    def scale_bulk(self, srv: servers.Server) -> None:
        name, small, args = srv.name, self.small, self.args
        if not small.n_bulk:
            return
        n0 = measure.total_instances(srv)
        how = args.telerad_bulk if name == "telerad" else "storescu"
        log(f"  {name} bulk load: {small.n_bulk:,} small instances via 2 x {how} (progress every 30 s) ...")
        if how == "import":
            wall, errors = measure.telerad_import(srv, small.bulk, self.tmp, timeout=args.scale_timeout)
        else:
            wall, _cpu, errors = measure.scale_load(srv, small.bulk, log_dir=self.tmp, timeout=args.scale_timeout)
        loaded = measure.total_instances(srv) - n0
        self.res.put(name, "bulk_loaded", loaded)
        self.res.put(name, "bulk_s", wall)
        self.res.put(name, "bulk_per_s", loaded / wall)
        self.res.info.setdefault(name, {})["bulk_method"] = how
        log(f"  {name} bulk load: {loaded:,} instances in {wall:.0f} s = {loaded / wall:.0f} inst/s; index now "
            f"{measure.total_instances(srv):,} instances")
        if errors:
            raise measure.BenchError("; ".join(errors))


EMPTY = "telerad-empty"  # the scale phase's empty telerad (run_paired)
BOUND = "no archive"  # the third participant of the ingest, frames and WADO-RS rounds (Bounds)


class Bounds:
    """In the rounds of the goals the machine may put out of any server's reach, the same measurement with no
    archive at all, taken between the servers' (the order rotating): what no server passes that round.

    * ingest: the same storescu processes and files into ``storescp --ignore`` and, after that, processes doing
      only the mandated durable steps on them, both with two at once (bench/ingest_floor.py); a sender's cycle
      is at least the one plus the other, so two senders reach at most ``1 / (1/transport + 1/durable)``;
    * frames: the frames client against a socket server sending the same-sized body from memory (the client
      floor), and against a minimal ASGI application under uvicorn (bench/reference.py);
    * WADO-RS: curl against nginx serving the study as one file with ``sendfile off`` (the faster of its two
      ways on loopback here), started once for the rounds (:meth:`serving`); its requests interleave with the
      servers' one by one (:meth:`Suite.wado_curl`).

    Taken once after the rounds (as before), the bounds and the servers' figures were minutes apart, and the
    VM's speed changes by the minute: at 16:11 on 2026-12-04 nginx sent the study at 3,019 MB/s in the reference
    step, while alternating with telerad on the same VM minutes later both ran at ~2,250."""

    def __init__(self, suite: Suite, tmp: Path) -> None:
        self.suite, self.tmp = suite, tmp

    def ingest(self, rnd: int, scale: bool = False) -> dict[str, float]:
        groups = (self.suite.cts_after if scale else self.suite.cts)[rnd].groups
        direct = servers.TELERAD_SETTINGS.get("TELERAD_BLOB_DIRECT_WRITE", "true").lower() in ("1", "true", "yes",
                                                                                             "on")
        # Kept until the run ends, not removed here: see rounds.py, "Nothing is deleted between rounds".
        work = self.tmp / f"bound-ingest-{'scale-' if scale else ''}{rnd}"
        transport = transport_rate(groups, work / "transport")
        durable = durable_rate(groups, work / "durable", direct)
        bound = 1 / (1 / transport + 1 / durable)
        log(f"  {BOUND} ingest{' at scale' if scale else ''}: transport {transport:.0f} inst/s, durable steps "
            f"{durable:.0f} inst/s, so at most {bound:.0f} inst/s")
        if scale:  # the same steps: the index's size is not part of them
            return {"ingest_per_s_scale": bound}
        return {"ingest_per_s": bound, "ingest_transport_per_s": transport, "ingest_durable_per_s": durable}

    def ingest_scale(self, rnd: int) -> dict[str, float]:
        return self.ingest(rnd, scale=True)

    def frames(self, rnd: int) -> dict[str, float]:
        n, size = len(self.suite.study.sop_uids), self.suite.frame_bytes
        floor = frame_floor(size, measure.FRAME_ACCEPT, n) * MS
        asgi = asgi_frame_floor(size, measure.FRAME_ACCEPT, n) * MS
        log(f"  {BOUND} frames/1: client floor p50 {floor:.2f} ms, minimal ASGI app p50 {asgi:.2f} ms")
        return {"frame_p50": floor, "frame_p50_asgi": asgi}

    def serving(self) -> NginxStudy | None:
        """nginx with the study, for the WADO-RS rounds; None where it is not installed."""
        return NginxStudy(self.suite.study.files) if nginx_exe() else None


def settle(_name: str, _rnd: int) -> None:
    """Before each ingest: write back what the previous one left dirty in the page cache (rounds.settle)."""
    rounds.settle()


def run_paired(srvs: dict[str, servers.Server], suite: Suite, args: argparse.Namespace, res: Results) -> None:
    """Every measurement in paired rounds on the running servers (paired.py), then the scale phase.

    For the scale phase an *empty* telerad joins (``EMPTY``, added to ``srvs``): it holds the first CT data set
    and gets the same at-scale ingest, and its QIDO and ingest are measured in the same rounds as the loaded
    servers', so that telerad's "at scale against empty" is a ratio of figures taken minutes, not a quarter
    of an hour, apart (the VM's drift put 1.89x on it in one run and 0.78x in the next)."""
    names = list(srvs)

    def rounds_of(label: str, rounds: int, fn: Callable[[servers.Server, int], dict[str, float]],
                  before: Callable[[str, int], None] | None = None, names: list[str] = names,
                  bound: Callable[[int], dict[str, float]] | None = None) -> None:
        taking = [*names, BOUND] if bound is not None else names
        log(f"{label}: {rounds} round(s), {' / '.join(taking)} alternating")

        def on_error(name: str, rnd: int, exc: BaseException) -> None:
            res.fail(name, f"{label} (round {rnd + 1})", exc)

        def one(name: str, rnd: int) -> dict[str, float]:
            if name == BOUND and bound is not None:
                return bound(rnd)
            return fn(srvs[name], rnd)

        paired.run_rounds(taking, rounds, one, res.rounds, on_error, before)

    bounds = Bounds(suite, suite.tmp) if args.bounds else None
    rounds_of("ingest", args.ingest_rounds, suite.ingest, settle, bound=bounds.ingest if bounds else None)
    rounds_of("QIDO", args.rounds, suite.qido)
    rounds_of("metadata", args.rounds, suite.metadata)
    rounds_of("frames", args.rounds, suite.frames, bound=bounds.frames if bounds else None)
    rounds_of("WADO-RS (httpx)", args.rounds, suite.wado)
    nginx = bounds.serving() if bounds else None
    with nginx or contextlib.nullcontext():
        taking = [*names, BOUND] if nginx is not None else names
        log(f"WADO-RS (curl): {args.rounds} round(s), {' / '.join(taking)} interleaved request by request")
        for rnd in range(args.rounds):
            try:
                figures = suite.wado_curl(srvs, paired.order(taking, rnd), nginx)
            except Exception as exc:  # noqa: BLE001 - one broken endpoint must not end the run
                res.fail(",".join(taking), f"WADO-RS curl (round {rnd + 1})", exc)
                continue
            for name, values in figures.items():
                for key, value in values.items():
                    res.rounds.add(key, name, rnd, value)
    rounds_of("C-FIND", args.rounds, suite.cfind)
    rounds_of("C-GET", args.rounds, suite.cget)
    if suite.small.n_sample or suite.small.n_bulk:
        for name in names:
            if suite.small.n_sample:
                step(res, name, "small-instance ingest", functools.partial(suite.scale_sample, srvs[name]))
        for name in names:
            step(res, name, "bulk load", functools.partial(suite.scale_bulk, srvs[name]))
        scale_names = names
        if "telerad" in srvs and args.empty_baseline:
            log("starting an empty telerad, the baseline of telerad's at-scale figures ...")
            srvs[EMPTY] = servers.start_telerad(suite.tmp / EMPTY)
            srvs[EMPTY].name = EMPTY
            step(res, EMPTY, "ingest", functools.partial(suite.ingest, srvs[EMPTY], 0))
            scale_names = [*names, EMPTY]
        rounds_of("QIDO at scale", args.rounds, suite.qido_scale, names=scale_names)
        rounds_of("ingest at scale", args.ingest_rounds, suite.ingest_scale, settle, names=scale_names,
                  bound=bounds.ingest_scale if bounds else None)
    for key, by_server in res.rounds.values.items():
        for name in by_server:
            res.put(name, key, res.rounds.median(key, name))
        if {"orthanc", "telerad"} <= set(by_server):
            res.put("telerad", key + ":ratio", res.rounds.median_ratio(key, "telerad", "orthanc"))
        if {EMPTY, "telerad"} <= set(by_server):
            res.put("telerad", key + ":vs_empty", res.rounds.median_ratio(key, "telerad", EMPTY))


def profile_telerad(srv: servers.Server, data: gen.DataSet, seconds: int, out: Path) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "(py-spy not installed: `.venv/bin/pip install py-spy`)"
    raw = out / "telerad-ingest-profile.txt"
    prof = subprocess.Popen([spy, "record", "-p", str(srv.pid), "-d", str(seconds), "-r", "100", "-f", "raw",
                             "-o", str(raw), "--nonblocking", "--subprocesses"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    t0 = time.perf_counter()
    rounds = 0
    while time.perf_counter() - t0 < seconds - 1 and prof.poll() is None:
        clone = gen.clone(data, out / f"profile-set-{rounds}", patient_prefix=f"PROF{rounds:02d}")
        measure.storescu(srv, clone.groups)
        rounds += 1
    out_txt = prof.communicate(timeout=seconds + 60)[0].decode(errors="replace")
    if not raw.exists():
        return f"(py-spy failed: {out_txt[-400:]})"
    return profile_report(raw)


# ---------------------------------------------------------------------------------------------- report
ROWS: list[tuple[str, str, str, str, float | None]] = [
    # key, label, unit, better ("hi"/"lo"), goal ratio telerad/Orthanc
    ("ingest_per_s", "Ingest CT, 2 x storescu", "inst/s", "hi", 1.5),
    ("ingest_mb_s", "Ingest CT, 2 x storescu", "MB/s", "hi", None),
    ("ingest_cpu_ms", "Ingest CT: server CPU per instance", "ms", "lo", None),
    ("ingest_client_cpu_ms", "Ingest CT: the 2 storescu's CPU per instance", "ms", "lo", None),
    ("qido_p50", "QIDO-RS studies?PatientID=", "p50 ms", "lo", None),
    ("qido_p95", "QIDO-RS studies?PatientID=", "p95 ms", "lo", 1.0),
    ("metadata_p50", "Study /metadata (http.client)", "p50 ms", "lo", 0.1),
    ("metadata_httpx_p50", "Study /metadata (httpx client)", "p50 ms", "lo", None),
    ("frame_p50", "frames/1 (octet-stream; http.client)", "p50 ms", "lo", 0.1),
    ("frame_p95", "frames/1 (octet-stream; http.client)", "p95 ms", "lo", None),
    ("frame_httpx_p50", "frames/1 (octet-stream; httpx client)", "p50 ms", "lo", None),
    ("wado_mb_s", "WADO-RS whole study (httpx client)", "MB/s", "hi", 1.5),
    ("wado_curl_mb_s", "WADO-RS whole study (curl client)", "MB/s", "hi", 1.5),
    ("wado_curl_cpu_ms", "WADO-RS (curl): server CPU per request", "ms", "lo", None),
    ("cfind_p50", "C-FIND study by PatientID (findscu process)", "p50 ms", "lo", None),
    ("cget_mb_s", "C-GET whole study (getscu process)", "MB/s", "hi", 1.0),
    ("cget_s", "C-GET whole study (getscu process)", "s", "lo", None),
    ("cget_cpu_ms", "C-GET: server CPU per instance sent", "ms", "lo", None),
    ("small_per_s", "Ingest small (16x16) instances, 2 x storescu", "inst/s", "hi", None),
    ("small_cpu_ms", "Ingest small: server CPU per instance", "ms", "lo", None),
    ("bulk_per_s", "Bulk load for the scale test (see method)", "inst/s", "hi", None),
    ("qido_p50_scale", "QIDO-RS at scale", "p50 ms", "lo", None),
    ("qido_p95_scale", "QIDO-RS at scale", "p95 ms", "lo", 1.0),
    ("ingest_per_s_scale", "Ingest CT at scale, 2 x storescu", "inst/s", "hi", 1.5),
    ("ingest_per_s_fresh", "Ingest CT into fresh servers (--fresh-rounds)", "inst/s", "hi", None),
]


def fmt(v: float | None, ran: bool = True) -> str:
    if not ran:
        return "n/a"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "FAILED"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def verdict(ratio: float | None, better: str, goal: float | None) -> str:
    if goal is None or ratio is None:
        return ""
    ok = ratio >= goal if better == "hi" else ratio <= goal
    return ("met" if ok else "**missed**") + f" ({'>=' if better == 'hi' else '<='} {goal:g}x)"


def table(res: Results, sizes: dict[str, Any]) -> str:
    o, t = "orthanc", "telerad"
    lines = ["| Measure | Unit | Orthanc | telerad | telerad/Orthanc | Goal |", "|---|---|---:|---:|---:|---|"]
    for key, label, unit, better, goal in ROWS:
        a, b = res.get(o, key), res.get(t, key)
        if a is None and b is None and key not in res.values.get(o, {}) and key not in res.values.get(t, {}):
            continue
        ratio = res.get(t, key + ":ratio") or (b / a if a and b is not None else None)  # a median of ratios
        lines.append(f"| {label} | {unit} | {fmt(a, o in res.info)} | {fmt(b, t in res.info)} | "
                     f"{fmt(ratio) + 'x' if ratio else '-'} | "
                     f"{verdict(ratio, better, goal)} |")
    # at scale vs empty, per server
    baseline = ("telerad: median of per-round ratios to an empty telerad measured in the same rounds; "
                if res.get(t, "qido_p50_scale:vs_empty") else "")
    lines += ["", f"At scale (~{sizes['scale']:,} extra instances) vs empty index, per server ({baseline}"
              "Orthanc: its at-scale figures over its empty-index ones; goal for telerad: no more than 1.5x "
              "slower):", "",
              "| Measure | Orthanc scale/empty | telerad scale/empty | telerad goal |", "|---|---:|---:|---|"]
    for label, k_empty, k_scale, slower in (
        ("QIDO p50 latency", "qido_p50", "qido_p50_scale", "lat"),
        ("QIDO p95 latency", "qido_p95", "qido_p95_scale", "lat"),
        ("Ingest time per instance (1 / throughput)", "ingest_per_s", "ingest_per_s_scale", "thr"),
    ):
        cells: list[float | None] = []
        for srv in (o, t):
            e, s = res.get(srv, k_empty), res.get(srv, k_scale)
            paired_ratio = res.get(srv, k_scale + ":vs_empty")  # against the empty telerad, same rounds
            if paired_ratio:
                cells.append(paired_ratio if slower == "lat" else 1 / paired_ratio)
            elif e and s:
                cells.append(s / e if slower == "lat" else e / s)
            else:
                cells.append(None)
        ok = "" if cells[1] is None else ("met (<= 1.5x)" if cells[1] <= 1.5 else "**missed** (<= 1.5x)")
        shown = [fmt(c) + "x" if c is not None else "-" for c in cells]
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | {ok} |")
    lines += ["", "Bulk load for the scale test: " + "; ".join(
        f"{srv} {int(res.get(srv, 'bulk_loaded') or 0):,} instances in {fmt(res.get(srv, 'bulk_s'))} s "
        f"via 2 x {res.info.get(srv, {}).get('bulk_method', '?')}"
        for srv in (o, t) if res.get(srv, "bulk_s") is not None)]
    return "\n".join(lines)


def rounds_table(res: Results) -> str:
    """Each goal's figure round by round: the spread the medians above come from."""
    o, t = "orthanc", "telerad"
    lines = ["Paired rounds (both servers running; each round measures one then the other, the order rotating; "
             "the ratios above are medians of these per-round ratios):", "",
             "| Measure | Unit | Orthanc per round | telerad per round | telerad/Orthanc per round |",
             "|---|---|---|---|---|"]
    for key, label, unit, _better, goal in ROWS:
        if goal is None or key not in res.rounds.values:
            continue
        cells = []
        for srv in (o, t):
            col = res.rounds.values[key].get(srv, [])
            cells.append(", ".join(fmt(v) if v is not None else "FAILED" for v in col) or "-")
        ratios = res.rounds.ratios(key, t, o)
        lines.append(f"| {label} | {unit} | {cells[0]} | {cells[1]} | "
                     f"{', '.join(f'{r:.2f}' for r in ratios) or '-'} |")
        if EMPTY in res.rounds.values[key]:
            empty = ", ".join(fmt(v) if v is not None else "FAILED" for v in res.rounds.values[key][EMPTY])
            ratios = res.rounds.ratios(key, t, EMPTY)
            lines.append(f"| ... the empty telerad, same rounds | {unit} | | {empty} | telerad/empty: "
                         f"{', '.join(f'{r:.2f}' for r in ratios) or '-'} |")
    return "\n".join(lines)


BOUNDED = [  # the goals with a no-archive participant in their rounds: key, label, unit, better, goal ratio
    ("ingest_per_s", "Ingest CT, 2 x storescu", "inst/s", "hi", 1.5),
    ("ingest_per_s_scale", "Ingest CT at scale, 2 x storescu", "inst/s", "hi", 1.5),
    ("frame_p50", "frames/1 p50 (http.client)", "ms", "lo", 0.1),
    ("wado_curl_mb_s", "WADO-RS whole study (curl)", "MB/s", "hi", 1.5),
]
ASGI_OUT = "out of an ASGI server's reach"
_BOUND_WHAT = {"ingest_per_s": "transport + durable steps", "ingest_per_s_scale": "transport + durable steps",
               "frame_p50": "client floor (minimal ASGI app)",
               "wado_curl_mb_s": "nginx, sendfile off"}


def bounds_table(res: Results) -> str:
    """Round by round, each bounded goal's need (its ratio times Orthanc's figure that round), what no archive
    passes that round (Bounds), telerad's figure, and which of the three it was: met, out of any server's reach,
    or missed although reachable."""
    per = res.rounds.values
    if not any(BOUND in per.get(key, {}) for key, *_ in BOUNDED):
        return ""
    lines = [f"Round by round, with no archive (`{BOUND}`, measured between the servers in the same rounds; "
             "bench/run.py `Bounds`): a goal is out of reach in a round where even that misses what the goal "
             "needs.", "",
             "| Goal | Round | Needs | No archive | telerad | That round |", "|---|---:|---:|---|---:|---|"]
    summary = []
    for key, label, unit, better, goal in BOUNDED:
        cols = per.get(key, {})
        if BOUND not in cols:
            continue
        counts: dict[str, int] = {"met": 0, "out of reach": 0, "missed": 0}
        n = max(len(v) for v in cols.values())
        for rnd in range(n):
            o, b, t = (_at(cols.get(name, []), rnd) for name in ("orthanc", BOUND, "telerad"))
            if o is None or t is None:
                lines.append(f"| {label} | {rnd + 1} | | | | failed |")
                continue
            need = goal * o

            def ok(v: float, need: float = need, hi: bool = better == "hi") -> bool:
                return v >= need if hi else v <= need

            asgi = _at(per.get("frame_p50_asgi", {}).get(BOUND, []), rnd) if key == "frame_p50" else None
            if ok(t):
                outcome = "met"
            elif b is not None and not ok(b):
                outcome = "out of reach"
            elif asgi is not None and not ok(asgi):
                outcome = ASGI_OUT
            else:
                outcome = "missed"
            counts[outcome] = counts.get(outcome, 0) + 1
            bound = fmt(b) if b is not None else "failed"
            if asgi is not None:
                bound += f" ({fmt(asgi)})"
            elif key == "ingest_per_s":
                tr = _at(per.get("ingest_transport_per_s", {}).get(BOUND, []), rnd)
                du = _at(per.get("ingest_durable_per_s", {}).get(BOUND, []), rnd)
                bound += f" ({fmt(tr)} + {fmt(du)})" if tr is not None and du is not None else ""
            mine = fmt(t)
            if key == "wado_curl_mb_s":  # CPU per request, where the two differ
                cpu = {name: _at(per.get("wado_curl_cpu_ms", {}).get(name, []), rnd) for name in (BOUND, "telerad")}
                bound += f" (CPU {fmt(cpu[BOUND])} ms)" if cpu[BOUND] is not None else ""
                mine += f" (CPU {fmt(cpu['telerad'])} ms)" if cpu["telerad"] is not None else ""
            cmp = ">=" if better == "hi" else "<="
            lines.append(f"| {label} | {rnd + 1} | {cmp} {fmt(need)} {unit} | {bound} | {mine} | "
                         f"{'**missed**' if outcome == 'missed' else outcome} |")
        asgi_note = (f", out of an ASGI server's reach in {counts[ASGI_OUT]}" if counts.get(ASGI_OUT) else "")
        summary.append(f"- {label} ({_BOUND_WHAT[key]}): met in {counts['met']} of {n} rounds, out of any "
                       f"server's reach in {counts['out of reach']}{asgi_note}, missed although reachable in "
                       f"{counts['missed']}.")
    return "\n".join(lines + [""] + summary)


def _at(col: list[float | None], rnd: int) -> float | None:
    v = col[rnd] if rnd < len(col) else None
    return None if v is None or math.isnan(v) else v


def reference_table(res: Results, ref: Reference) -> str:
    """What the goals ask of a server, next to what the machine and clients allow (bench/reference.py)."""
    o_frame, o_wado = res.get("orthanc", "frame_p50"), res.get("orthanc", "wado_curl_mb_s")
    lines = ["Reference, same run: the same clients against servers with no archive (bench/reference.py): a socket "
             "server that only sends bytes from memory; a minimal ASGI application under uvicorn (uvloop, "
             "httptools); nginx sending the study as one static file.", "",
             "| Goal | Needs | Reference (no archive) | Reachable here |", "|---|---:|---|---|"]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    if o_frame:
        need = 0.1 * o_frame
        floor, asgi = ref.frame_floor_p50_ms, ref.asgi_frame_floor_p50_ms
        lines.append(f"| frames/1 p50 <= 0.1x Orthanc | <= {fmt(need)} ms | client floor {fmt(floor)} ms "
                     f"(httpx: {fmt(ref.frame_floor_httpx_p50_ms)} ms) | by any server: {yes(floor <= need)} |")
        if asgi is not None:
            lines.append(f"| | | minimal ASGI app under uvicorn {fmt(asgi)} ms | by an ASGI server: "
                         f"{yes(asgi <= need)} |")
    if o_wado:
        need = 1.5 * o_wado
        ceiling = ref.study_ceiling_mb_s
        lines.append(f"| WADO-RS study (curl) >= 1.5x Orthanc | >= {fmt(need)} MB/s | loopback ceiling "
                     f"{fmt(ceiling)} MB/s (from memory) | from memory: {yes(ceiling >= need)} |")
        best = ref.nginx_best_mb_s
        if best is not None:
            detail = ", ".join(f"{mode} {fmt(v)}" for mode, v in ref.nginx_study_mb_s.items())
            lines.append(f"| | | nginx, the study as one file: {detail} MB/s | by a file server: "
                         f"{yes(best >= need)} |")
        else:
            lines.append("| | | nginx not installed (`apt-get install nginx-light`) | by a file server: not measured |")
    return "\n".join(lines)


def floor_table(res: Results, f: IngestFloor) -> str:
    """The ingest goal next to what transport and the mandated durable steps allow (bench/ingest_floor.py)."""
    rate = res.get("orthanc", "ingest_per_s")
    how = "direct" if f.direct_write else "buffered"
    lines = ["Ingest floor, same run (bench/ingest_floor.py): each sender's cycle is at least its transfer plus "
             "the durable steps; parsing and indexing come on top.", "",
             "| Part | one at a time, inst/s | two at once, inst/s |", "|---|---:|---:|",
             f"| storescu into `storescp --ignore` (transport) | {fmt(f.transport_1)} | {fmt(f.transport_2)} |",
             f"| SHA-256, {how} write + fsync, naming (link), directory fsync, SQLite commit (durable steps) | "
             f"{fmt(f.durable_1)} | {fmt(f.durable_2)} |", ""]
    if rate:
        need = 1.5 * rate
        verdict = ("no" if f.optimistic < need else
                   "only if the senders did not slow each other" if f.contended < need else "yes")
        lines.append(f"Ingest goal: >= {fmt(need)} inst/s (1.5x Orthanc's {fmt(rate)}); transport + durable steps "
                     f"allow at most {fmt(f.optimistic)} inst/s with nothing shared between the two senders, "
                     f"{fmt(f.contended)} inst/s with both parts contended as measured. Reachable here: {verdict}.")
    return "\n".join(lines)


def ingest_budget(res: Results) -> str:
    """What the ingest goal leaves each instance in CPU time: at 1.5x Orthanc's rate the machine's cores give
    ``cpus / rate`` seconds per instance, to share between the senders (measured: the storescu processes) and
    the server. A server needing more than the rest cannot reach the rate, however its work overlaps."""
    rate, cpus = res.get("orthanc", "ingest_per_s"), os.cpu_count() or 1
    clients = [v for v in (res.get(n, "ingest_client_cpu_ms") for n in ("orthanc", "telerad")) if v]
    if not rate or not clients:
        return ""
    allowed = cpus / (1.5 * rate) * MS
    left = allowed - max(clients)
    rows = [f"Ingest CPU budget: at 1.5x Orthanc's rate ({fmt(1.5 * rate)} inst/s) the {cpus} cores give "
            f"{fmt(allowed)} ms of CPU per instance; the senders used {fmt(max(clients))} ms, so a server may use "
            f"at most {fmt(left)} ms with every core busy all the time.", "",
            "| Server | CPU per instance | Within the budget |", "|---|---:|---|"]
    for n in ("orthanc", "telerad"):
        used = res.get(n, "ingest_cpu_ms")
        if used:
            rows.append(f"| {n} | {fmt(used)} ms | {'yes' if used <= left else 'no'} |")
    return "\n".join(rows)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": str(os.cpu_count()), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version()}


def wait_quiet(limit: float, budget: float) -> float:
    """Wait (at most ``budget`` s) for the 1-minute load average to fall below ``limit``; return the wait."""
    t0 = time.monotonic()
    if budget <= 0 or os.getloadavg()[0] < limit:
        return 0.0
    log(f"load average {os.getloadavg()[0]:.2f}: waiting up to {budget / 60:.0f} min for it to fall below {limit}")
    while time.monotonic() - t0 < budget and os.getloadavg()[0] >= limit:
        time.sleep(10)
    log(f"waited {time.monotonic() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=1000, help="CT instances (512x512 16-bit) to ingest")
    ap.add_argument("--studies", type=int, default=4, help="CT studies the instances are split into")
    ap.add_argument("--size", type=int, default=512, help="CT rows/columns")
    ap.add_argument("--scale-instances", type=int, default=100_000,
                    help="small (16x16 8-bit) instances loaded for the at-scale figures; 0 to skip")
    ap.add_argument("--scale-per-study", type=int, default=10, help="small instances per study")
    ap.add_argument("--scale-sample", type=int, default=5000,
                    help="of the scale instances, this many go to both servers through 2 x storescu "
                         "(a comparable small-instance ingest rate); the rest is the bulk load")
    ap.add_argument("--telerad-bulk", choices=("import", "storescu"), default="import",
                    help="how the bulk of the scale instances reaches telerad: 2 x `telerad import` (in-process "
                         "ingest service, default) or 2 x storescu; Orthanc always gets storescu")
    ap.add_argument("--scale-timeout", type=float, default=1200,
                    help="stop a server's bulk load after this many seconds and report what was reached")
    ap.add_argument("--after-instances", type=int, default=500, help="CT instances ingested at scale")
    ap.add_argument("--qido-requests", type=int, default=200)
    ap.add_argument("--metadata-requests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired rounds of each retrieval measurement (QIDO, metadata, frames, WADO-RS, C-FIND, "
                         "C-GET, QIDO at scale), the servers alternating; ratios are medians of per-round ratios")
    ap.add_argument("--ingest-rounds", type=int, default=5,
                    help="paired rounds of CT ingest, empty and at scale, each round a new copy of the data")
    ap.add_argument("--fresh-rounds", type=int, default=0,
                    help="after the suite, CT ingest into fresh servers in this many alternating rounds (0: none)")
    ap.add_argument("--empty-baseline", type=int, choices=(0, 1), default=1,
                    help="1: telerad's at-scale figures are compared with an empty telerad measured in the same "
                         "rounds; 0: with its own empty-index figures from the start of the run")
    ap.add_argument("--wado-runs", type=int, default=15,
                    help="whole-study WADO-RS requests per server per round, for each client (median per round); "
                         "the same 131 MB study took 44-135 ms from one request to the next on the AMD VM, for "
                         "nginx as for telerad, so a median of 3 moved with the machine more than with the servers")
    ap.add_argument("--bounds", type=int, choices=(0, 1), default=1,
                    help="1: the ingest, frames and WADO-RS rounds also measure what no archive passes (Bounds)")
    ap.add_argument("--cfind-runs", type=int, default=50)
    ap.add_argument("--cget-runs", type=int, default=3)
    ap.add_argument("--servers", default="orthanc,telerad", help="comma-separated subset to run")
    ap.add_argument("--profile-seconds", type=int, default=20,
                    help="py-spy telerad serve during an extra CT ingest for this long; 0 to skip")
    ap.add_argument("--tcp-nodelay", choices=("1", "0", "unset"), default="1",
                    help="TCP_NODELAY in the environment of both servers and the DCMTK tools (default 1)")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="before each server's phase, wait up to this many minutes in all for the 1-min load "
                         "average to fall below --quiet-load (others' test suites skew the figures)")
    ap.add_argument("--quiet-load", type=float, default=0.8)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (data, server storage, logs)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    ap.add_argument("--telerad-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a telerad setting for this run (e.g. blob_direct_write=false; repeatable); the report "
                         "lists them. Default: telerad's defaults")
    args = ap.parse_args()

    for tool in ("storescu", "findscu", "getscu", "Orthanc"):
        servers.which(tool)
    servers.TCP_NODELAY = args.tcp_nodelay
    for item in args.telerad_setting:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            ap.error(f"--telerad-setting {item!r}: expected NAME=VALUE")
        servers.TELERAD_SETTINGS["TELERAD_" + name.strip().upper().removeprefix("TELERAD_")] = value.strip()
    which = [s.strip() for s in args.servers.split(",") if s.strip()]
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="telerad-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now()
    t_start = time.monotonic()
    log(f"work dir {tmp}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    # ---- data, generated once
    studies = max(1, args.studies)
    slices = max(1, args.instances // studies)
    args.rounds, args.ingest_rounds = max(1, args.rounds), max(1, args.ingest_rounds)
    log(f"generating {studies} CT studies x {slices} slices ({args.size}x{args.size} 16-bit) "
        f"and {args.ingest_rounds - 1} copies with new UIDs ...")
    ct = gen.make_ct(tmp / "data" / "ct", studies, slices, size=args.size)
    cts = [ct] + [gen.clone(ct, tmp / "data" / f"ct-{r}", patient_prefix=f"BENCHE{r}")
                  for r in range(1, args.ingest_rounds)]
    # at least one study per sender folder: storescu fails on an empty one
    need = min(len(ct.studies), max(len(ct.groups), math.ceil(args.after_instances / slices)))
    ct_after_src = gen.DataSet(ct.root, ct.studies[:need], ct.groups)
    cts_after = [gen.clone(ct_after_src, tmp / "data" / f"ct-after-{r}", patient_prefix=f"BENCHA{r}")
                 for r in range(args.ingest_rounds)] if args.scale_instances > 0 else []
    small = Small([], 0, [], 0)
    if args.scale_instances > 0:
        log(f"generating {args.scale_instances:,} small instances ...")
        n_sample = min(args.scale_sample, args.scale_instances)
        n_bulk = args.scale_instances - n_sample
        per = args.scale_per_study
        sample = gen.make_small(tmp / "data" / "small-sample", n_sample, per_study=per) if n_sample else []
        first_bulk = (n_sample + per - 1) // per
        bulk = (gen.make_small(tmp / "data" / "small-bulk", n_bulk, per_study=per, first_study=first_bulk)
                if n_bulk else [])
        small = Small(sample, n_sample, bulk, n_bulk)
    after_n = cts_after[0].n_instances if cts_after else 0
    log(f"data ready: {args.ingest_rounds} x {ct.n_instances} CT ({ct.n_bytes / 1e6:.0f} MB each), "
        f"{args.ingest_rounds} x {after_n} CT for the at-scale ingest, {args.scale_instances:,} small "
        f"({time.monotonic() - t_start:.0f} s)")

    res = Results()
    profile = ""
    versions = {"orthanc": servers.orthanc_version(), "telerad": servers.telerad_rev()}
    try:
        versions["dicomweb_plugin"] = Path(os.path.realpath(servers.dicomweb_plugin())).name
    except RuntimeError:
        pass
    sizes = {"instances": ct.n_instances, "studies": studies, "slices": slices, "scale": args.scale_instances,
             "after": after_n}

    wait_quiet(args.quiet_load, args.quiet_wait * 60)
    srvs: dict[str, servers.Server] = {}
    sampler = measure.Sampler()
    sampler.start()
    t0 = time.monotonic()
    try:
        for name in which:
            log(f"starting {name} ...")
            if name == "orthanc":
                srvs[name] = servers.start_orthanc(tmp / "orthanc")
            elif name == "telerad":
                srvs[name] = servers.start_telerad(tmp / "telerad")
            else:
                raise SystemExit(f"unknown server {name}")
        run_paired(srvs, Suite(cts, cts_after, small, args, res, tmp), args, res)
        if "telerad" in srvs and args.profile_seconds > 0:
            log(f"profiling telerad serve with py-spy for {args.profile_seconds} s during CT ingest ...")
            profile = profile_telerad(srvs["telerad"], ct, args.profile_seconds, tmp / "profile")
            raw = tmp / "profile" / "telerad-ingest-profile.txt"
            if raw.exists():
                shutil.copy(raw, args.out / f"telerad-ingest-profile-{started:%Y%m%d-%H%M}.txt")
    except Exception as exc:  # noqa: BLE001
        res.fail(",".join(srvs) or "servers", "server", exc)
    finally:
        for name, srv in srvs.items():
            if srv.proc is not None and srv.proc.poll() is not None:
                res.fail(name, "server", RuntimeError(f"server process exited early (rc "
                                                      f"{srv.proc.returncode}); log tail:\n{srv.log_tail()}"))
            srv.stop()
            if srv.log_path:
                shutil.copy(srv.log_path, args.out / f"{name}-{started:%Y%m%d-%H%M}.log")
        sampler.stop.set()
        loads = sampler.loads
        res.info["servers"] = {"phase_s": round(time.monotonic() - t0),
                               "load_avg_max": round(max(loads), 2) if loads else None}
        for name in srvs:
            res.info.setdefault(name, {})
        log(f"paired phase done in {time.monotonic() - t0:.0f} s")

    # ---- optionally, CT ingest again into fresh servers in alternating rounds (as bench/ingest_ab.py)
    ingest_rounds = None
    if args.fresh_rounds > 0 and {"orthanc", "telerad"} <= set(which):
        log(f"CT ingest in {args.fresh_rounds} alternating rounds, fresh servers ...")
        try:
            ingest_rounds = rounds.alternate(ct, args.fresh_rounds, {"telerad": dict(servers.TELERAD_SETTINGS)},
                                             tmp / "rounds", log)
            for n in ("orthanc", "telerad"):
                res.put(n, "ingest_per_s_fresh", statistics.median(ingest_rounds.rates(n)))
            res.put("telerad", "ingest_per_s_fresh:ratio", ingest_rounds.median_ratio("telerad"))
        except Exception as exc:  # noqa: BLE001
            res.fail("rounds", "ingest rounds", exc)

    # ---- the same clients against a server that does nothing but send bytes from memory
    reference = None
    try:
        study0 = ct.studies[0]
        log("measuring the client floor and the loopback ceiling (no archive; nginx when installed) ...")
        reference = measure_reference(args.size * args.size * 2, study0.files, measure.FRAME_ACCEPT,
                                      len(study0.sop_uids), 3 * args.wado_runs)
    except Exception as exc:  # noqa: BLE001
        res.fail("reference", "reference", exc)

    # ---- what sending alone and the mandated durable steps alone allow CT ingest (bench/ingest_floor.py)
    floor = None
    try:
        log("measuring the ingest floor (storescu into storescp --ignore; the durable steps alone) ...")
        direct = servers.TELERAD_SETTINGS.get("TELERAD_BLOB_DIRECT_WRITE", "true").lower() in ("1", "true", "yes", "on")
        floor = measure_floor(ct.groups, tmp / "floor", direct)
        for k in ("transport_1", "transport_2", "durable_1", "durable_2", "optimistic", "contended"):
            res.put("ingest_floor", k, getattr(floor, k))
    except Exception as exc:  # noqa: BLE001
        res.fail("floor", "ingest floor", exc)

    # ---- report
    m = machine()
    total = time.monotonic() - t_start
    head = [
        f"# telerad vs Orthanc benchmark, {started:%Y-%m-%d %H:%M}",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, Python {m['python']}",
        f"- Versions: {versions['orthanc']} with {versions.get('dicomweb_plugin', 'DICOMweb plugin')}; "
        f"telerad git {versions['telerad']}",
        f"- Data: {sizes['instances']} CT instances ({studies} studies x {slices} slices, {args.size}x{args.size} "
        f"16-bit, {ct.n_bytes / 1e6:.0f} MB); scale: {args.scale_instances:,} instances of 16x16 8-bit "
        f"({args.scale_per_study} per study; {small.n_sample:,} of them sent with 2 x storescu to both, the rest "
        f"bulk-loaded: Orthanc 2 x storescu, telerad 2 x `telerad {args.telerad_bulk}`); "
        f"at-scale ingest: {after_n} CT instances per round",
        "- telerad settings: " + (", ".join(f"`{k}={v}`" for k, v in servers.TELERAD_SETTINGS.items())
                                  or "defaults"),
        f"- Runs: both servers up at once, each measurement in paired rounds (the servers alternating, the "
        f"order rotating): ingest {args.ingest_rounds} rounds (empty and at scale, a new copy of the data "
        f"each), the rest {args.rounds} rounds of: QIDO {args.qido_requests} requests, metadata "
        f"{args.metadata_requests}, frames {slices} (one per instance of a series), WADO-RS {args.wado_runs}, "
        f"C-FIND {args.cfind_runs}, C-GET {args.cget_runs}; TCP_NODELAY={args.tcp_nodelay}; total wall time "
        f"{total / 60:.1f} min",
        f"- Paired phase: {res.info.get('servers', {}).get('phase_s')} s, max 1-min load average "
        f"{res.info.get('servers', {}).get('load_avg_max')}",
        "",
    ]
    body = table(res, sizes)
    if reference is not None:
        body += "\n\n" + reference_table(res, reference)
    if floor is not None:
        body += "\n\n" + floor_table(res, floor)
    body += "\n\n" + rounds_table(res)
    limits = bounds_table(res)
    if limits:
        body += "\n\n" + limits
    if ingest_rounds is not None:
        body += (f"\n\nCT ingest in {args.fresh_rounds} alternating rounds (fresh servers, order rotating):\n\n"
                 + ingest_rounds.table())
    budget = ingest_budget(res)
    if budget:
        body += "\n\n" + budget
    notes = []
    for srv_name, errs in res.errors.items():
        for e in errs:
            notes.append(f"- {srv_name}: {e}")
    text = "\n".join(head) + "\n" + body + "\n"
    if notes:
        text += "\n## Failures\n\n" + "\n".join(notes) + "\n"
    if profile:
        text += f"\n## telerad serve during CT ingest (py-spy, {args.profile_seconds} s)\n\n{profile}\n"
    print("\n" + text)
    out_md = args.out / f"results-{started:%Y-%m-%d-%H%M}.md"
    out_md.write_text(text)
    (args.out / f"results-{started:%Y-%m-%d-%H%M}.json").write_text(json.dumps(
        {"started": started.isoformat(), "args": {k: str(v) for k, v in vars(args).items()}, "machine": m,
         "versions": versions, "sizes": sizes, "values": res.values, "errors": res.errors, "info": res.info},
        indent=2))
    log(f"wrote {out_md}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
