"""CT ingest in alternating rounds: each round ingests the same CT files into a fresh server of every kind in turn,
the order rotating from round to round, so that a host whose speed drifts over minutes (seen here: the same
telerad at 154-362 CT/s in consecutive runs) weighs on every server alike. The ratio to report is the median of
the per-round ratios. Used by run.py (``--ingest-rounds``) and ingest_ab.py."""

from __future__ import annotations

import shutil
import statistics
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


def alternate(ct: gen.DataSet, rounds: int, telerad: dict[str, dict[str, str]], workdir: Path,
              log: Callable[[str], None] = print) -> Rounds:
    """``rounds`` rounds of Orthanc and one telerad per entry of ``telerad`` (name -> TELERAD_* settings), each
    a fresh server ingesting ``ct`` with 2 x storescu. Raises RuntimeError when a server misses instances."""
    names = ["orthanc", *telerad]
    out = Rounds({n: [] for n in names})
    saved = dict(servers.TELERAD_SETTINGS)
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                wd = workdir / f"round{r + 1}-{name.replace(':', '-')}"
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
                    shutil.rmtree(wd, ignore_errors=True)  # half a GB per round and server
                if res.errors:
                    raise RuntimeError(f"round {r + 1}, {name}: {res.errors}")
                out.results[name].append(res)
                log(f"  round {r + 1} {name:>20}: {res.per_s:6.0f} inst/s, server CPU "
                    f"{res.server_cpu / res.instances * MS:.2f} ms/instance")
    finally:
        servers.TELERAD_SETTINGS.clear()
        servers.TELERAD_SETTINGS.update(saved)
    return out
