"""Upper bounds on CT ingest for any archive that keeps telerad's durability, measured in the same run.

A DIMSE sender without asynchronous operations (storescu's default, PS3.7 10.3.3) sends an object only once the
previous one's C-STORE response arrived, and the issue forbids answering success before the object and its index
row are durable. Each sender's objects therefore go through one strictly sequential cycle: the transfer, then the
durable steps, then the response. Two parts of that cycle need no archive at all:

* **transport**: the same storescu processes and files into DCMTK's ``storescp --ignore``, which receives every
  object and throws it away (C++, no file written): what sending and receiving alone allow;
* **durable steps**: processes that hold the same objects in memory and do only what the issue mandates per
  object: the SHA-256 content key, the blob written to a temporary file and synced, named (linked, or renamed
  where there is no ``O_TMPFILE``), the directory synced (telerad's own ``FileSystemStore.put``, as configured
  for the run), and one SQLite row committed in WAL mode with ``synchronous=FULL`` (telerad's pragmas), one
  database for all processes.

Both are measured with one participant and with two at once. A cycle cannot be shorter than its transport
part plus its durable part, so two senders cannot exceed ``2 / (1/transport_1 + 1/durable_1)`` (nothing shared
between them: the optimistic bound) nor, as measured with the two contending, ``1 / (1/transport_2 +
1/durable_2)``. Parsing, indexing and logging come on top of both. If the optimistic bound is below 1.5x
Orthanc's rate, no archive with these durability rules reaches the ingest goal on this machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from measure import storescu
from servers import Server, base_env, free_port, wait_tcp

FLOOR_AE = "FLOOR"


@dataclass
class IngestFloor:
    transport_1: float  # inst/s, one storescu into storescp --ignore
    transport_2: float  # inst/s, both storescu at once
    durable_1: float  # inst/s, one process doing the durable steps
    durable_2: float  # inst/s, two such processes at once
    direct_write: bool

    @property
    def optimistic(self) -> float:
        """Two senders whose cycles share nothing: each at 1 / (1/transport_1 + 1/durable_1)."""
        return 2 / (1 / self.transport_1 + 1 / self.durable_1)

    @property
    def contended(self) -> float:
        """Two senders, each part measured with both at once."""
        return 1 / (1 / self.transport_2 + 1 / self.durable_2)


def _files(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def transport_rate(folders: list[str], workdir: Path) -> float:
    """inst/s of one storescu per folder, all at once, into ``storescp --ignore``."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "storescp.log").open("wb") as log:
        proc = subprocess.Popen(["storescp", "--ignore", "-aet", FLOOR_AE, str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env=base_env(), cwd=workdir)
        try:
            wait_tcp(port, 30, proc)
            srv = Server("storescp", FLOOR_AE, 0, port, workdir)
            wall, errors = storescu(srv, folders)
            if errors:
                raise RuntimeError("; ".join(errors))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return sum(len(_files(f)) for f in folders) / wall


def _durable_worker(files: list[str], blobs: str, db: str, direct_write: bool, start: object,
                    out: object) -> None:
    from telerad.storage.filesystem import FileSystemStore

    store = FileSystemStore(Path(blobs), direct_write=direct_write)
    data = [Path(f).read_bytes() for f in files]
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    start.wait()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for obj in data:
        key, size = store.put(obj)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO blob (key, size) VALUES (?, ?)", (key, size))
        conn.execute("COMMIT")
    out.put(time.perf_counter() - t0)  # type: ignore[attr-defined]
    conn.close()
    store.close()


def durable_rate(folders: list[str], workdir: Path, direct_write: bool) -> float:
    """inst/s of one process per folder, all at once, doing only the mandated durable steps."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = str(workdir / "floor.db")
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE blob (id INTEGER PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL)")
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(len(folders)), ctx.Queue()
    groups = [[str(p) for p in _files(f)] for f in folders]
    procs = [ctx.Process(target=_durable_worker, args=(g, str(workdir / "blobs"), db, direct_write, start, out))
             for g in groups]
    for p in procs:
        p.start()
    walls = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"durable-steps process exited with {p.exitcode}")
    return sum(len(g) for g in groups) / max(walls)


def measure_floor(folders: list[str], workdir: Path, direct_write: bool) -> IngestFloor:
    """The four rates: each part with the first folder alone, then with all folders at once."""
    try:
        t1 = transport_rate(folders[:1], workdir / "t1")
        t2 = transport_rate(folders, workdir / "t2")
        d1 = durable_rate(folders[:1], workdir / "d1", direct_write)
        d2 = durable_rate(folders, workdir / "d2", direct_write)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return IngestFloor(t1, t2, d1, d2, direct_write)


if __name__ == "__main__":  # a quick look: python bench/ingest_floor.py FOLDER [FOLDER...]
    import sys
    import tempfile

    f = measure_floor(sys.argv[1:], Path(tempfile.mkdtemp(prefix="ingest-floor-")), os.environ.get(
        "TELERAD_BLOB_DIRECT_WRITE", "true").lower() in ("1", "true", "yes"))
    print(f, f"optimistic {f.optimistic:.0f} inst/s, contended {f.contended:.0f} inst/s")
