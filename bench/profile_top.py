"""Summarise py-spy ``--format raw`` (collapsed stacks) output: top functions by own and total time.

    .venv/bin/python bench/profile_top.py profile.txt [--top 20]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path:line)`` -> ``func (pkg/module.py)`` without the line, so a function is one entry."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return samples, own, total


def report(path: Path, top: int = 15) -> str:
    samples, own, total = summarise(path.read_text(errors="replace"))
    if not samples:
        return "(no samples)"
    lines = [f"{samples} samples (non-idle threads)", "", "| own % | function (self time) |", "|---:|---|"]
    lines += [f"| {100 * n / samples:5.1f} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| total % | function (inclusive) |", "|---:|---|"]
    skip = ("process ", "Thread.", "run (threading.py)", "_bootstrap", "<module>", "main (", "serve (", "invoke (",
            "__call__ (click", "_main (click")
    inc = [(f, n) for f, n in total.most_common(top * 3) if not f.startswith(skip)][:top]
    lines += [f"| {100 * n / samples:5.1f} | `{f}` |" for f, n in inc]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print(report(a.raw, a.top))
