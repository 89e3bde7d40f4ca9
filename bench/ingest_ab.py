"""CT ingest only, Orthanc and telerad (one or more telerad settings) in alternating rounds.

On a shared or throttled machine one run of bench/run.py can see Orthanc's ingest rate change by a third between
runs minutes apart, so one ratio says little. This runs the ingest step of the suite (2 x storescu of the same
CT files into a fresh server) for every server in turn, ``--rounds`` times, rotating the order each round, and
prints each round's rates and ratios and their medians:

    .venv/bin/python bench/ingest_ab.py --rounds 4 --variant buffered:blob_direct_write=false

Each variant is ``NAME:SETTING=VALUE[,SETTING=VALUE...]`` for a telerad run with those settings (``default`` is
always included). Not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402
import rounds  # noqa: E402
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
    tmp = Path(tempfile.mkdtemp(prefix="telerad-ingest-ab-"))
    try:
        ct = gen.make_ct(tmp / "data", args.studies, args.instances // args.studies)
        telerad = {f"telerad:{name}": settings for name, settings in variants.items()}
        try:
            result = rounds.alternate(ct, args.rounds, telerad, tmp)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        print("\n" + result.table())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
