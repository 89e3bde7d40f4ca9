"""CT ingest only, Orthanc and telerad (one or more telerad settings) in alternating rounds.

On a shared or throttled machine one run of bench/run.py can see Orthanc's ingest rate change by a third between
runs minutes apart, so one ratio says little. This runs the ingest step of the suite (2 x storescu of the same
CT files into a fresh server) for every server in turn, ``--rounds`` times, rotating the order each round, and
prints each round's rates and ratios and their medians:

    .venv/bin/python bench/ingest_ab.py --rounds 4 --variant direct:blob_direct_write=true

Each variant is ``NAME:SETTING=VALUE[,SETTING=VALUE...]`` for a telerad run with those settings (``default`` is
always included). Not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402
import measure  # noqa: E402
import servers  # noqa: E402


def _variants(specs: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"default": {}}
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if not sep or not name:
            raise SystemExit(f"--variant {spec!r}: expected NAME:SETTING=VALUE[,...]")
        settings = {}
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"--variant {spec!r}: {item!r} is not SETTING=VALUE")
            settings["TELERAD_" + key.strip().upper().removeprefix("TELERAD_")] = value.strip()
        out[name] = settings
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:SETTING=VALUE[,...]")
    args = ap.parse_args()
    for tool in ("storescu", "Orthanc"):
        servers.which(tool)
    variants = _variants(args.variant)
    names = ["orthanc", *(f"telerad:{v}" for v in variants)]
    tmp = Path(tempfile.mkdtemp(prefix="telerad-ingest-ab-"))
    try:
        ct = gen.make_ct(tmp / "data", args.studies, args.instances // args.studies)
        rates: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                workdir = tmp / f"{r}-{name.replace(':', '-')}"
                if name == "orthanc":
                    srv = servers.start_orthanc(workdir)
                else:
                    servers.TELERAD_SETTINGS.clear()
                    servers.TELERAD_SETTINGS.update(variants[name.split(":", 1)[1]])
                    srv = servers.start_telerad(workdir)
                try:
                    res = measure.ingest(srv, ct, log_dir=workdir)
                finally:
                    srv.stop()
                if res.errors:
                    raise SystemExit(f"round {r + 1}, {name}: {res.errors}")
                rates[name].append(res.per_s)
                cpus[name].append(res.server_cpu / res.instances * 1000)
                print(f"round {r + 1} {name:>20}: {res.per_s:6.0f} inst/s, server CPU "
                      f"{cpus[name][-1]:.2f} ms/instance", flush=True)
        print("\n| server | inst/s per round | median | median ratio to Orthanc (per-round ratios) | "
              "server CPU ms/instance, median |")
        print("|---|---|---:|---|---:|")
        for name in names:
            ratios = [t / o for t, o in zip(rates[name], rates["orthanc"], strict=True)]
            print(f"| {name} | {', '.join(f'{x:.0f}' for x in rates[name])} | {statistics.median(rates[name]):.0f} "
                  f"| {statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) "
                  f"| {statistics.median(cpus[name]):.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
