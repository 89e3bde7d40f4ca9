"""Paired rounds: every measurement taken on each running server in turn, several times, the order rotating.

On a shared VM the machine's speed drifts over minutes (seen here: the same code, two full runs 30 minutes
apart, gave telerad/Orthanc ingest 1.61x then 1.24x, and WADO-RS 2.63x then 1.32x). When one server's whole
suite runs first and the other's after, that drift lands on the ratio. Here both servers run at once and each
measurement is taken on one, then the other, round after round; a ratio is the median of the per-round ratios,
so a slow minute weighs on one round of both servers rather than on one server. Used by run.py.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class PerRound:
    """figure -> server -> one value per round (None: that round failed on that server)."""

    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)

    def add(self, key: str, server: str, rnd: int, value: float | None) -> None:
        col = self.values.setdefault(key, {}).setdefault(server, [])
        col.extend([None] * (rnd + 1 - len(col)))
        col[rnd] = value

    def series(self, key: str, server: str) -> list[float]:
        return [v for v in self.values.get(key, {}).get(server, []) if v is not None and not math.isnan(v)]

    def median(self, key: str, server: str) -> float | None:
        s = self.series(key, server)
        return statistics.median(s) if s else None

    def ratios(self, key: str, server: str, base: str) -> list[float]:
        """Per-round server/base, for the rounds where both have a value."""
        a = self.values.get(key, {}).get(server, [])
        b = self.values.get(key, {}).get(base, [])
        return [x / y for x, y in zip(a, b, strict=False) if x is not None and y and not math.isnan(x)]

    def median_ratio(self, key: str, server: str, base: str) -> float | None:
        r = self.ratios(key, server, base)
        return statistics.median(r) if r else None


def order(names: list[str], rnd: int) -> list[str]:
    """The servers' order in round ``rnd``: rotated by one each round, so no server always goes first."""
    k = rnd % len(names)
    return names[k:] + names[:k]


def run_rounds(names: list[str], rounds: int, fn: Callable[[str, int], dict[str, float]],
               per: PerRound, on_error: Callable[[str, int, BaseException], None],
               before: Callable[[str, int], None] | None = None) -> None:
    """``rounds`` rounds of ``fn(server, round)`` on every server, the order rotating; the figures go to
    ``per``. A failure is reported through ``on_error`` and leaves that round of that server empty."""
    for rnd in range(rounds):
        for name in order(names, rnd):
            if before is not None:
                before(name, rnd)
            try:
                figures = fn(name, rnd)
            except Exception as exc:  # noqa: BLE001 - one broken endpoint must not end the run
                on_error(name, rnd, exc)
                continue
            for key, value in figures.items():
                per.add(key, name, rnd, value)
