"""Helpers shared by tests (importable as ``support``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_thread(app: Any, port: int | None = None, **config: Any) -> Iterator[int]:
    """A real uvicorn server for ``app`` on 127.0.0.1 in a thread, started before the block and stopped after
    it; the block gets the port. ``config``: more uvicorn.Config arguments (http protocol, TLS files...)."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped before it started"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def resident_pages(path: Path | str) -> int:
    """Pages of ``path`` in the page cache, by util-linux ``fincore``."""
    out = subprocess.run(["fincore", "--raw", "--noheadings", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def pages_in_large_folios(path: Path | str) -> int:
    """Pages of ``path`` in the page cache that belong to a folio of more than one page: the file is mapped and
    every page touched, each page's frame looked up in ``/proc/self/pagemap`` and its flags in
    ``/proc/kpageflags`` (KPF_COMPOUND_HEAD or KPF_COMPOUND_TAIL; Documentation/admin-guide/mm/pagemap.rst).
    Needs root: others read frame numbers as 0."""
    import mmap
    import struct

    size = os.stat(path).st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        pages = -(-size // mmap.PAGESIZE)
        for i in range(pages):
            m[i * mmap.PAGESIZE]  # map the page
        start = next(int(line.split("-")[0], 16) for line in Path("/proc/self/maps").read_text().splitlines()
                     if line.endswith(" " + str(Path(path).resolve())))
        count = 0
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as kpageflags:
            for i in range(pages):
                pagemap.seek((start // mmap.PAGESIZE + i) * 8)
                pfn = struct.unpack("Q", pagemap.read(8))[0] & ((1 << 55) - 1)
                assert pfn, "frame numbers are hidden: reading them needs root"
                kpageflags.seek(pfn * 8)
                flags = struct.unpack("Q", kpageflags.read(8))[0]
                count += bool(flags & (0b11 << 15))
        return count


def transparent_hugepages_enabled() -> bool:
    """Whether the kernel may allocate large folios for a mapping advised MADV_HUGEPAGE."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[never]" not in setting.read_text()


def written_through_cache(path: Path | str) -> int:
    """Pages of a blob written with O_DIRECT that are in the page cache once it is written: its last partial
    page, written through the cache (storage/direct.py), or none."""
    return 1 if os.stat(path).st_size % 4096 else 0


def wait_until_resident(paths: list[Path], timeout: float = 10.0) -> bool:
    """Wait for every page of each of ``paths`` to be in the page cache (background reads complete on the
    disk's time); False if that did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if all(resident_pages(p) == -(-p.stat().st_size // 4096) for p in paths):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def leftovers(root) -> list[str]:
    """Temporary files left behind: named ones in ``tmp/``, and unnamed ones this process still holds open
    (their descriptors read as ``<root>/tmp/#<inode> (deleted)``)."""
    tmp = f"{root}/tmp/"
    found = [str(p) for p in (root / "tmp").iterdir()]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tmp):
                found.append(target)
    return found


def rewritten(raw: bytes, transfer_syntax: str = "", **attributes: object) -> bytes:
    """The Part 10 object ``raw`` written again by pydicom, as another writer would: its own File Meta
    (Implementation Version Name, Source AE Title), optionally another transfer syntax and changed attributes."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.file_meta.ImplementationVersionName = "OTHER_WRITER"
    ds.file_meta.SourceApplicationEntityTitle = "SITE_PACS"
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
