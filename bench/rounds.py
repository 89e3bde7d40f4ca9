"""CT ingest in alternating rounds: each round ingests the same CT files into a fresh server of every kind in turn,
the order rotating from round to round, so that a host whose speed drifts over minutes (seen here: the same
telerad at 154-362 CT/s in consecutive runs) weighs on every server alike. The ratio to report is the median of
the per-round ratios. Used by run.py (``--ingest-rounds``) and ingest_ab.py.

Nothing is deleted between rounds (the rounds' folders go when the run ends), and before each server's turn
the page cache's dirty pages are written back (``settle``). Why: this project's VMs put the bench's files on
ext4 without a journal, whose inode allocator skips every inode freed in the last 60 s (360 s while its inode
table block is dirty) one by one (``recently_deleted`` in fs/ext4/ialloc.c, checked only without a journal).
Removing a round's 1,000 blobs just before the next server's turn made every file that server created scan
past them: perf put ``__ext4_new_inode`` at 11.5 % of all CPU samples during a telerad ingest, and telerad,
whose unnamed temporary files are all made in one directory (hence one block group), ingested 174-319 inst/s
right after such a removal against 233-413 without one (lab, alternating, 2026-12-04). Orthanc, whose
files spread over thousands of directories, was not slowed. Deleting also spared Orthanc the write-back of the
files it never syncs, which the settle before each turn now does outside every measurement."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gen
import measure
import servers

MS = 1000.0


@dataclass
class Rounds:
    """Per server name: one :class:`measure.IngestResult` per round, in round order."""

    results: dict[str, list[measure.IngestResult]] = field(default_factory=dict)

    def rates(self, name: str) -> list[float]:
        return [r.per_s for r in self.results[name]]

    def cpu_ms(self, name: str) -> list[float]:
        return [r.server_cpu / r.instances * MS for r in self.results[name]]

    def ratios(self, name: str, base: str = "orthanc") -> list[float]:
        return [t / o for t, o in zip(self.rates(name), self.rates(base), strict=True)]

    def median_ratio(self, name: str, base: str = "orthanc") -> float:
        return statistics.median(self.ratios(name, base))

    def table(self, base: str = "orthanc") -> str:
        lines = ["| server | inst/s per round | median | median ratio to Orthanc (per-round ratios) | "
                 "server CPU ms/instance, median |", "|---|---|---:|---|---:|"]
        for name in self.results:
            ratios = self.ratios(name, base)
            lines.append(f"| {name} | {', '.join(f'{x:.0f}' for x in self.rates(name))} | "
                         f"{statistics.median(self.rates(name)):.0f} | {statistics.median(ratios):.2f}x "
                         f"({', '.join(f'{x:.2f}' for x in ratios)}) | {statistics.median(self.cpu_ms(name)):.2f} |")
        return "\n".join(lines)


def settle() -> None:
    """Write back what the previous turn left dirty in the page cache (Orthanc writes without fsync), so that
    its write-back does not land in the next server's measurement."""
    os.sync()
    time.sleep(1.0)


def needed_bytes(ct: gen.DataSet, rounds: int, servers_per_round: int) -> int:
    """Disk space the rounds keep until the run ends: each server's copy of the data set, each round."""
    return int(ct.n_bytes * 1.1) * rounds * servers_per_round


def alternate(ct: gen.DataSet, rounds: int, telerad: dict[str, dict[str, str]], workdir: Path,
              log: Callable[[str], None] = print) -> Rounds:
    """``rounds`` rounds of Orthanc and one telerad per entry of ``telerad`` (name -> TELERAD_* settings), each
    a fresh server ingesting ``ct`` with 2 x storescu. Raises RuntimeError when a server misses instances."""
    names = ["orthanc", *telerad]
    out = Rounds({n: [] for n in names})
    workdir.mkdir(parents=True, exist_ok=True)
    need, free = needed_bytes(ct, rounds, len(names)), shutil.disk_usage(workdir).free
    if need > free * 0.8:
        raise RuntimeError(f"the rounds keep {need / 1e9:.1f} GB until they end (nothing is deleted between "
                           f"rounds, see rounds.py); {free / 1e9:.1f} GB are free under {workdir}")
    saved = dict(servers.TELERAD_SETTINGS)
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                wd = workdir / f"round{r + 1}-{name.replace(':', '-')}"
                settle()
                if name == "orthanc":
                    srv = servers.start_orthanc(wd)
                else:
                    servers.TELERAD_SETTINGS.clear()
                    servers.TELERAD_SETTINGS.update(telerad[name])
                    srv = servers.start_telerad(wd)
                try:
                    res = measure.ingest(srv, ct, log_dir=wd)
                finally:
                    srv.stop()
                if res.errors:
                    raise RuntimeError(f"round {r + 1}, {name}: {res.errors}")
                out.results[name].append(res)
                log(f"  round {r + 1} {name:>20}: {res.per_s:6.0f} inst/s, server CPU "
                    f"{res.server_cpu / res.instances * MS:.2f} ms/instance")
    finally:
        servers.TELERAD_SETTINGS.clear()
        servers.TELERAD_SETTINGS.update(saved)
    return out
