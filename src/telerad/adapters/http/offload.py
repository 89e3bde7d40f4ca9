"""Where a request's blocking work runs: on the event loop when it is short and bounded, else in the thread pool.

A thread-pool hop is not free here: on the 2-vCPU benchmark machine each one added ~0.6 ms to an HTTP request
and most of its tail (a QIDO-RS by PatientID went from 2.1 ms p50 / 3.0 ms p95 with none to 2.7 / 3.9 with
two; measured with ``bench``'s client, docs/benchmarks.md). Work whose cost is bounded by an index lookup (a
bearer-token check, a query on an exact Patient ID or UID) is cheaper than the hop, so it runs inline; its
connections come from the event loop's own pool (:meth:`telerad.db.session.Database.serve_event_loop`).
Anything whose cost grows with the data (a wildcard search, a whole study) keeps the hop, so that it cannot
stall the other requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


async def run(bounded: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, inline when ``bounded``, else in the thread pool."""
    if bounded:
        return fn(*args, **kwargs)
    return await run_in_threadpool(fn, *args, **kwargs)
