"""Stored files sent with sendfile(2): uvicorn's httptools protocol with one more ASGI extension.

A whole-study WADO-RS response is the stored files back to back, each after a few bytes of multipart framing.
Through ASGI every byte is read from the page cache into a Python buffer and then copied again into the
socket. Measured on the 2-vCPU benchmark machine (curl, a 131 MB study of 250 CT files, page cache warm):
read + write from a bare uvicorn app 3.0-3.6 GB/s median, ``sendfile`` from the same app 5.3-5.6 GB/s
(docs/benchmarks.md). The kernel then moves the file pages to the socket without a copy in user space.

ASGI servers may offer extensions in ``scope["extensions"]`` (ASGI HTTP spec, "Extensions"). uvicorn has no
zero-copy send, so :class:`SendfileProtocol` (uvicorn's httptools protocol, given to ``uvicorn.Config(http=)``)
offers :data:`EXTENSION` on plain-TCP connections: ``scope["extensions"][EXTENSION]["send"]`` is an async
callable taking a sequence of segments, each ``bytes`` or a :class:`FilePart` (and, optionally, ``size=`` their
total, when the application knows it). An application sends
``http.response.start`` (with Content-Length) as usual, then any number of segment batches, then the final
empty ``http.response.body``. Over TLS (the kernel cannot encrypt) and under other servers the extension is
absent and the application streams as before.

How a batch is sent: once uvicorn's own write buffer is empty, a worker thread writes the segments straight
to the socket (``os.write`` for bytes, ``os.sendfile`` for files; the files are opened there, as disk reads
can block). When the socket is full the thread waits up to :data:`THREAD_WAIT_S` for room (a client reading
at full speed makes room within microseconds; a trip back to the event loop per socket buffer made a study
~5% slower and its time less even, measured with curl); a slower client is waited for by the event loop
instead, so no thread is held while it reads, and then the thread goes on. Reading from the connection is
paused meanwhile, so nothing else can write to it. A file shorter than its promised size raises
:class:`OSError` (the Content-Length is already sent: uvicorn then closes the connection rather than send a
short body); a client that goes away ends the response quietly, as uvicorn does.

The socket is corked (``TCP_CORK``) while a batch is written. Without it, each part's multipart head went out
as a TCP segment of its own before the file's bytes; over loopback (a local reverse proxy, the benchmark's
curl) every such segment wakes the reader. Measured with curl, a 125-instance CT study, 60 requests each,
alternating: 1,714 -> 1,894 MB/s median (docs/benchmarks.md).

To a loopback peer (a reverse proxy on the same host, which is how TLS is usually put in front of a service;
the benchmark's clients) files are not sent with sendfile but copied: read (``pread``) into a buffer of
:data:`COPY_BYTES` one after another, framing included, and written a full buffer at a time, as nginx does with
``sendfile off``. Over loopback the reader copies every byte out of the socket again; from the file's own
pages (sendfile) that copy ran slower, a bare Python server with curl on the Intel VM: sendfile 1.68-1.72
GB/s, writes from a mapping of each file 2.69-3.32; nginx on the AMD VM, 131 MB: ``sendfile on`` 1,650 MB/s,
off with 1 MB buffers 3,085. The buffer against a mapping of each file (the previous way here: page faults,
unmapping, a write per part), A/B with curl on the AMD VM, a 250-instance CT study: 1,902 -> 2,244 and
1,763 -> 2,264 MB/s median, the server's CPU per request 65.8 -> 58.5 and 72.8 -> 62.4 ms; 2 MB did as well,
4 and 8 MB less (docs/benchmarks.md).
A file whose ``FilePart.view`` gives its bytes mapped (the read-ahead's mappings, :mod:`telerad.storage.mappings`)
is written from the mapping instead, in one ``writev`` with the buffer's bytes before it: one copy in the server
rather than two; A/B on the AMD VM, the study read again: 2,421 -> 3,378 MB/s, 51.5 -> 37.5 ms of CPU per request.
A run of such files and the framing between them is gathered into one ``writev`` (:func:`_gather`), not one
call per file: the sending thread's user CPU 6.3 -> 3.7 ms per 250-file study.
To other peers sendfile stays, where a network card sends the pages without any copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from telerad.storage.buffers import BufferPool

EXTENSION = "telerad.sendfile"
COPY_FOR_LOOPBACK = True  # files to a loopback peer are copied through a buffer (see the module's docstring)
COPY_BYTES = 1 << 20  # the buffer: several parts of a study per write; 1-2 MB measured best, 4-8 MB worse
THREAD_WAIT_S = 0.02  # how long the writing thread waits for a full socket before handing the wait to the loop
# Linux: while set, the kernel sends only full TCP segments (tcp(7)), so a part's few bytes of multipart
# framing leave with the file's first bytes instead of as a segment, and a wake-up of the reader, of their own.
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)
_DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_copy_buffers = BufferPool(COPY_BYTES, keep=8)  # one per response being copied; 8 kept for the next


class FilePart(NamedTuple):
    """``size`` bytes from the start of the file ``open()`` returns (called in the worker thread). A tuple: a
    whole-study response makes one per instance before its first byte. ``view``, if given, returns the file's
    bytes mapped (a buffer of at least ``size`` bytes) or None: a loopback peer then gets them written straight
    from the mapping (:mod:`telerad.storage.mappings`)."""

    open: Callable[[], BinaryIO]
    size: int
    view: Callable[[], memoryview | None] | None = None


Segment = bytes | FilePart
SendSegments = Callable[..., Awaitable[None]]  # (segments, size=None): size, when given, is their total


def segment_size(segment: Segment) -> int:
    return len(segment) if isinstance(segment, bytes) else segment.size


def sender(scope: Any) -> SendSegments | None:
    """The extension's send callable when the server offers it for this request, else None."""
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    return ext["send"] if ext else None


@dataclass
class _Progress:
    """Where a batch stands between thread calls: segment index, bytes of it done, its open file; when copying,
    the buffer and the part of it not yet written (``buf[lo:hi]``), and the gathered pieces written after it
    (``views``: what is left of the mapped files and framing from the segment at ``index`` up to ``after``)."""

    index: int = 0
    offset: int = 0
    file: BinaryIO | None = field(default=None, repr=False)
    buf: memoryview | None = field(default=None, repr=False)
    lo: int = 0
    hi: int = 0
    views: list[memoryview] = field(default_factory=list, repr=False)  # gathered pieces, written after buf's
    after: int = 0  # the segment to go on from once ``views`` are written

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.views = []


def _push(fd: int, segments: Sequence[Segment], p: _Progress) -> bool:
    """Write segments to the non-blocking socket ``fd`` from ``p`` on; False when the socket is full. Files go
    by sendfile(2), or copied through ``p.buf`` when the batch has one (:func:`_push_copied`)."""
    if p.buf is not None:
        return _push_copied(fd, segments, p)
    while p.index < len(segments):
        seg = segments[p.index]
        try:
            if isinstance(seg, bytes):
                if p.offset < len(seg):
                    p.offset += os.write(fd, memoryview(seg)[p.offset:])
                    continue
            else:
                if p.file is None:
                    p.file = seg.open()
                if p.offset < seg.size:
                    sent = os.sendfile(fd, p.file.fileno(), p.offset, seg.size - p.offset)
                    if sent == 0:
                        raise OSError(f"stored file ends after {p.offset} bytes; {seg.size} were promised")
                    p.offset += sent
                    continue
                p.close()
        except BlockingIOError:
            if not _room(fd, THREAD_WAIT_S):
                return False
            continue
        p.index, p.offset = p.index + 1, 0
    return True


GATHER_PIECES = 64  # mapped files and the framing between them written by one writev (IOV_MAX is 1024)
GATHER_BYTES = 16 << 20


def _push_copied(fd: int, segments: Sequence[Segment], p: _Progress) -> bool:
    """:func:`_push` for a loopback peer: the buffer filled with the next segments' bytes, written, again; a run of
    files with mappings (and the framing between them) is written from the mappings, in the same ``writev`` as
    the buffer's bytes before it."""
    assert p.buf is not None
    while True:
        if p.lo < p.hi or p.views:
            pending = [p.buf[p.lo:p.hi], *p.views] if p.lo < p.hi else p.views
            try:
                sent = os.writev(fd, pending)
            except BlockingIOError:
                if not _room(fd, THREAD_WAIT_S):
                    return False
                continue
            copied = min(sent, p.hi - p.lo)
            p.lo += copied
            sent -= copied
            if sent:
                _consume(p.views, sent)
                if not p.views:
                    p.index, p.offset = p.after, 0
            continue
        if p.index >= len(segments):
            return True
        _fill(segments, p)


def _consume(views: list[memoryview], sent: int) -> None:
    """Drop the first ``sent`` bytes of the gathered ``views`` (written)."""
    done = 0
    while sent and done < len(views):
        n = len(views[done])
        if sent < n:
            views[done] = views[done][sent:]
            break
        sent -= n
        done += 1
    del views[:done]


def _fill(segments: Sequence[Segment], p: _Progress) -> None:
    """Copy the bytes of the segments from ``p`` on into ``p.buf`` until it is full or they end; files are read
    with pread(2), and one shorter than promised raises :class:`OSError`. A file not yet begun whose mapping is
    at hand ends the fill: ``p.views`` gets its bytes and those of the segments after it while they are framing
    or mapped files too (:func:`_gather`), written after the buffer's."""
    assert p.buf is not None
    buf, cap = p.buf, len(p.buf)
    p.lo = p.hi = 0
    while p.hi < cap and p.index < len(segments):
        seg = segments[p.index]
        if isinstance(seg, bytes):
            size = len(seg)
            n = min(size - p.offset, cap - p.hi)
            buf[p.hi:p.hi + n] = memoryview(seg)[p.offset:p.offset + n]
        else:
            size = seg.size
            if p.file is None and p.offset == 0:
                view = _mapped(seg)
                if view is not None:
                    p.views, p.after = _gather(segments, p.index + 1, view)
                    return
            if p.file is None:
                p.file = seg.open()
            n = min(size - p.offset, cap - p.hi)
            if n:
                n = os.preadv(p.file.fileno(), [buf[p.hi:p.hi + n]], p.offset)
                if n == 0:
                    raise OSError(f"stored file ends after {p.offset} bytes; {size} were promised")
        p.hi += n
        p.offset += n
        if p.offset >= size:
            p.close()
            p.index, p.offset = p.index + 1, 0


def _mapped(seg: FilePart) -> memoryview | None:
    """The file's bytes from its mapping, or None: no mapping, an empty file, or a mapping shorter than promised."""
    if seg.view is None or not seg.size:
        return None
    view = seg.view()
    return view[:seg.size] if view is not None and len(view) >= seg.size else None


def _gather(segments: Sequence[Segment], index: int, first: memoryview) -> tuple[list[memoryview], int]:
    """``first`` (a mapped file) and the segments from ``index`` on while each is framing or a mapped file, at
    most :data:`GATHER_PIECES` pieces and about :data:`GATHER_BYTES`; the pieces and the segment after them.

    One ``writev`` per file cost a system call and a pass of this thread's Python loop for each of a study's
    files; gathered, a call takes as much as the socket has room for."""
    views, total = [first], len(first)
    while index < len(segments) and len(views) < GATHER_PIECES and total < GATHER_BYTES:
        seg = segments[index]
        piece = memoryview(seg) if isinstance(seg, bytes) else _mapped(seg)
        if piece is None:
            break
        views.append(piece)
        total += len(piece)
        index += 1
    return views, index


def _room(fd: int, timeout: float) -> bool:
    """Whether the socket ``fd`` can take more bytes within ``timeout`` seconds (or has failed: the next write
    raises)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


class _SendfileCycle(RequestResponseCycle):
    """uvicorn's request/response cycle plus :meth:`send_segments` (the extension's send)."""

    copied_files = False  # files copied through a buffer rather than sent by sendfile (a loopback peer)

    async def send_segments(self, segments: Sequence[Segment], size: int | None = None) -> None:
        if not self.response_started or self.response_complete:
            raise RuntimeError("segments can only be sent between http.response.start and the last body")
        if self.chunked_encoding:
            raise RuntimeError("segments need a response with Content-Length")
        # A caller that knows the total says so: summing a study's parts here took ~0.2 ms of the event loop.
        total = sum(map(segment_size, segments)) if size is None else size
        if total > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= total
        if self.disconnected or self.scope["method"] == "HEAD" or not total:
            return
        await self._drain()
        if self.disconnected:
            return
        sock = self.transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())  # a descriptor of our own to wait on: uvloop refuses a transport's own
        was_paused = self.flow.read_paused
        self.flow.pause_reading()
        progress = _Progress()
        cork = _TCP_CORK is not None
        with contextlib.ExitStack() as stack:
            if self.copied_files:
                progress.buf = stack.enter_context(memoryview(stack.enter_context(_copy_buffers.take())))
            try:
                if cork:  # uncorked when the batch is written (below): what is left then goes out at once
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
                while not await run_in_threadpool(_push, fd, segments, progress):
                    await _writable(fd)
            except _DISCONNECTED:
                self.disconnected = True
                self.transport.close()
            finally:
                progress.close()
                if cork and not self.disconnected:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
                os.close(fd)
                if not was_paused and not self.disconnected:
                    self.flow.resume_reading()

    async def _drain(self) -> None:
        """Until uvicorn's write buffer is empty: the thread must not overtake bytes still queued there."""
        if not self.transport.get_write_buffer_size():
            return
        self.transport.set_write_buffer_limits(high=0, low=0)  # pause_writing now, resume_writing when empty
        try:
            while self.transport.get_write_buffer_size() and not self.disconnected:
                if self.flow.write_paused:
                    await self.flow.drain()
                else:
                    await asyncio.sleep(0.001)
        finally:
            self.transport.set_write_buffer_limits()


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, on_writable)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


class SendfileProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol offering :data:`EXTENSION` on plain TCP (not TLS, not Unix sockets)."""

    _sendfile = False
    _loopback = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._sendfile = (hasattr(os, "sendfile") and transport.get_extra_info("sslcontext") is None
                          and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6))
        if self._sendfile and COPY_FOR_LOOPBACK:
            with contextlib.suppress(Exception):
                self._loopback = ipaddress.ip_address(transport.get_extra_info("peername")[0]).is_loopback

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self._sendfile:
            cycle.__class__ = _SendfileCycle
            assert isinstance(cycle, _SendfileCycle)
            cycle.copied_files = self._loopback
            extensions = dict(cycle.scope.get("extensions") or {})
            extensions[EXTENSION] = {"send": cycle.send_segments}
            cycle.scope["extensions"] = extensions  # type: ignore[typeddict-unknown-key]
        super()._start_asgi_task(cycle, app)


class SegmentsResponse(StreamingResponse):
    """A response whose body is ``segments`` (its Content-Length their total): sent with :data:`EXTENSION`
    where the server offers it, else streamed from ``fallback``, which must produce the same bytes.

    The extension gets all the segments in one call unless ``batch`` asks for calls of about that many bytes.
    In batches of 16 MB (as before), each batch ended with the socket uncorked and the thread handed back to the
    event loop; meanwhile the client emptied the socket and waited for the next. One call, A/B with curl on the
    AMD VM, a 250-instance CT study (131 MB), fresh servers, 20 requests each, alternating: 2,216 -> 2,511 and
    2,057 -> 2,174 MB/s median, the event loop's CPU per request 4.0-4.5 -> 2.0-3.0 ms (docs/benchmarks.md)."""

    def __init__(self, segments: Sequence[Segment], fallback: Any, media_type: str,
                 batch: int | None = None) -> None:
        self.size = sum(map(segment_size, segments))
        super().__init__(fallback, media_type=media_type, headers={"Content-Length": str(self.size)})
        self.segments = segments
        self.batch = batch

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        send_segments = sender(scope)
        if send_segments is None:
            await super().__call__(scope, receive, send)
            return
        with contextlib.suppress(AttributeError):  # the unused fallback: close it so nothing is left open
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        start, size = 0, 0
        if self.batch is not None:
            for i, seg in enumerate(self.segments):
                size += segment_size(seg)
                if size >= self.batch:
                    await send_segments(self.segments[start:i + 1])
                    start, size = i + 1, 0
        if start == 0:
            await send_segments(self.segments, size=self.size)
        elif start < len(self.segments):
            await send_segments(self.segments[start:])
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
