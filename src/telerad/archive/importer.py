"""``telerad import``: feed files, folders and zip archives through the one ingest path."""

from __future__ import annotations

import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from telerad.archive.ingest import Outcome, StoreResult, store
from telerad.context import Context


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def add(self, name: str, result: StoreResult) -> None:
        self.counts[result.outcome.value] += 1
        if not result.ok:
            self.failures.append((name, f"{result.outcome.value} 0x{result.status:04X}: {result.reason}"))


def iter_sources(paths: list[Path]) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """Yield (display name, size, reader) for every file in the paths, descending into folders and zips.

    The size is known before anything is read (a zip member's declared size), so an oversized object, or a
    zip bomb, is refused without being inflated."""
    for path in paths:
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    yield from _file(p)
        elif path.is_file():
            yield from _file(path)
        else:
            raise FileNotFoundError(str(path))


def _file(p: Path) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield f"{p}!{info.filename}", info.file_size, partial(zf.read, info)
    else:
        yield str(p), p.stat().st_size, p.read_bytes


def count_sources(paths: list[Path]) -> int:
    return sum(1 for _ in iter_sources(paths))


DEFAULT_JOBS = 4  # objects stored at once: each one's syncs wait on the disk, not on the CPU


def import_paths(
    ctx: Context, site_id: int, paths: list[Path], progress: Callable[[str], None] | None = None,
    jobs: int = DEFAULT_JOBS,
) -> ImportSummary:
    """Store every object found in ``paths`` for the site, up to ``jobs`` at once.

    Each object goes through :func:`store` whole (durable before it counts as stored), so ``jobs`` objects'
    blob and index syncs overlap instead of queueing one after another; files are read on this thread, in
    order, so at most ``jobs`` objects are held in memory. ``progress`` is called once per source, in order.
    """
    summary = ImportSummary()
    limit = ctx.settings.max_object_bytes
    pending: deque[tuple[str, Future[StoreResult]]] = deque()

    def done(name: str, result: StoreResult | None = None, failure: str = "") -> None:
        if result is not None:
            summary.add(name, result)
        else:
            summary.counts[Outcome.REJECTED.value] += 1
            summary.failures.append((name, failure))
        if progress:
            progress(name)

    def finish_oldest() -> None:
        name, future = pending.popleft()
        done(name, future.result())

    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="import") as pool:
        for name, size, read in iter_sources(paths):
            if size > limit:
                while pending:  # the summary and the progress stay in source order
                    finish_oldest()
                done(name, failure=f"rejected: {size} bytes exceed the maximum object size of {limit}")
                continue
            try:
                data = read()
            except OSError as exc:
                while pending:
                    finish_oldest()
                done(name, failure=f"cannot read: {exc}")
                continue
            pending.append((name, pool.submit(store, ctx, site_id, data, "import")))
            while len(pending) >= max(jobs, 1):
                finish_oldest()
        while pending:
            finish_oldest()
    if summary.counts[Outcome.STORED.value]:
        ctx.db.analyze()  # a bulk load changes the index's shape: plan queries on fresh statistics
    return summary
