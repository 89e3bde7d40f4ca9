"""The sendfile extension of telerad's uvicorn protocol, over real sockets on 127.0.0.1: exact bodies with the
extension and without it (streamed fallback, TLS), a reader slow enough to fill the socket, pipelined
requests, HEAD, a stored file shorter than promised and a client that leaves mid-body."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from pki_support import client_context, make_ca, make_leaf
from support import uvicorn_thread

from telerad.adapters.http import sendfile
from telerad.adapters.http.sendfile import FilePart, SegmentsResponse, SendfileProtocol
from telerad.storage.buffers import BufferPool

SIZES = [0, 1, 70_000, 5 << 20, 9 << 20 | 123]  # an empty file, one byte, and files larger than socket buffers
PLAIN = bytes(range(256)) * (32 << 12)  # 8 MiB, more than the socket buffers hold


class Files:
    def __init__(self, d: Path) -> None:
        self.paths = []
        for i, size in enumerate(SIZES):
            p = d / f"f{i}"
            p.write_bytes(os.urandom(size))
            self.paths.append(p)
        self.offered: list[bool] = []
        self.copied: list[bool] = []  # files copied through a buffer (a loopback peer) rather than sendfile
        self.corked: list[int] = []  # TCP_CORK of the server's socket: as each file was opened, then after
        # True: give the files of odd index a mapping (FilePart.view), the third's one byte short; "all": every
        # file a whole mapping (runs of them are written gathered)
        self.views: bool | str = False
        self.opened: list[int] = []  # the files opened, by index

    def segments(self, short: bool = False) -> list[sendfile.Segment]:
        segs: list[sendfile.Segment] = [b"head\r\n"]
        for i, p in enumerate(self.paths):
            size = p.stat().st_size + (10 if short and p.stat().st_size > 1 << 20 else 0)
            mapped = self.views == "all" or (self.views and i % 2)
            view = partial(self._view, p, cut=i == 3 and self.views != "all") if mapped else None
            segs += [FilePart(partial(self._open, i, p), size, view), b"--\r\n"]
        return segs

    def _open(self, i: int, p: Path) -> Any:
        self.opened.append(i)
        return p.open("rb")

    @staticmethod
    def _view(p: Path, cut: bool) -> memoryview:
        data = p.read_bytes()
        return memoryview(data[:-1] if cut else data)

    def expected(self) -> bytes:
        return b"head\r\n" + b"".join(p.read_bytes() + b"--\r\n" for p in self.paths)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/mixed":  # ordinary body bytes (queued in uvicorn's buffer), then the segments
            segments = self.segments()
            length = len(PLAIN) + sum(sendfile.segment_size(s) for s in segments)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(length).encode())]})
            await send({"type": "http.response.body", "body": PLAIN, "more_body": True})
            send_segments = sendfile.sender(scope)
            assert send_segments is not None
            await send_segments(segments)
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"] == "/cork":  # the socket's TCP_CORK while the files are sent, and after
            send_segments = sendfile.sender(scope)
            assert send_segments is not None
            cycle = send_segments.__self__  # type: ignore[attr-defined]
            sock = cycle.transport.get_extra_info("socket")
            self.copied.append(cycle.copied_files)

            def opened(path: Path) -> Any:
                self.corked.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
                return path.open("rb")

            segments = [b"head\r\n", *(FilePart(partial(opened, p), p.stat().st_size) for p in self.paths)]
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-length", str(sum(sendfile.segment_size(s) for s in segments)).encode())]})
            await send_segments(segments)
            self.corked.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            await send({"type": "http.response.body", "body": b""})
            return
        self.offered.append(sendfile.sender(scope) is not None)
        segments = self.segments(short=scope["path"] == "/short")

        async def fallback() -> AsyncIterator[bytes]:
            for s in segments:
                yield s if isinstance(s, bytes) else s.open().read()

        await SegmentsResponse(segments, fallback(), "application/octet-stream", batch=6 << 20)(scope, receive, send)


def _serve(app: Any, http: Any, **ssl_files: str) -> Iterator[int]:
    with uvicorn_thread(app, lifespan="off", interface="asgi3", http=http, **ssl_files) as port:
        yield port


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture(params=[True, False], ids=["copied", "sendfile"])
def port(files: Files, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A server offering the extension; the files copied through a buffer (how loopback peers get them) or
    sent with sendfile (every other peer), so both paths see every test. The buffers come from a pool of this
    test's own (:func:`pool`)."""
    monkeypatch.setattr(sendfile, "COPY_FOR_LOOPBACK", request.param)
    monkeypatch.setattr(sendfile, "_copy_buffers", BufferPool(sendfile.COPY_BYTES, keep=8))
    yield from _serve(files.app, SendfileProtocol)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often the event loop waited for the socket to become writable again."""
    seen: list[int] = []
    original = sendfile._writable

    async def counting(fd: int) -> None:
        seen.append(fd)
        await original(fd)

    monkeypatch.setattr(sendfile, "_writable", counting)
    return seen


def _request(path: str = "/ok", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _read_response(sock: socket.socket, pause: float = 0.0) -> tuple[bytes, bytes]:
    """(head, body) of one response with Content-Length, read in small pieces (with ``pause`` between)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed in the head: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    parts = [body]
    got = len(body)
    while got < length:
        chunk = sock.recv(min(65536, length - got))
        assert chunk, f"connection closed after {got} of {length} body bytes"
        parts.append(chunk)
        got += len(chunk)
        if pause:
            time.sleep(pause)
    return head, b"".join(parts)


def test_body_is_exact_with_the_extension(files: Files, port: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(files.expected())
    assert r.content == files.expected()
    assert files.offered == [True]


def test_the_socket_is_corked_while_a_batch_is_written_and_uncorked_after(files: Files, port: int) -> None:
    """Corked, each part's few bytes of framing leave with the file's bytes rather than as a TCP segment (and a
    wake-up of the reader) of their own; uncorked afterwards, or the end of the body would wait for the
    kernel's 200 ms cork timer."""
    r = httpx.get(f"http://127.0.0.1:{port}/cork", timeout=30)
    assert r.status_code == 200
    assert r.content == b"head\r\n" + b"".join(p.read_bytes() for p in files.paths)
    assert files.corked == [1] * len(SIZES) + [0]
    assert files.copied == [sendfile.COPY_FOR_LOOPBACK]  # this client is on loopback: copied unless turned off


def test_plain_uvicorn_offers_nothing_and_the_fallback_sends_the_same_bytes(files: Files) -> None:
    for port in _serve(files.app, "httptools"):
        r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
        assert r.content == files.expected()
    assert files.offered == [False]


@pytest.mark.parametrize("views", [False, True, "all"], ids=["files", "mapped", "all-mapped"])
def test_a_slow_reader_fills_the_socket_and_still_gets_every_byte(files: Files, port: int, waits: list[int],
                                                                  views: bool | str) -> None:
    files.views = views
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(_request())
        time.sleep(0.3)  # let the server fill both socket buffers before anything is read
        head, body = _read_response(s, pause=0.0005)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == files.expected()
    assert waits, "the socket never filled: the writable-wait path was not exercised"


def test_pipelined_requests_and_head_on_one_connection(files: Files, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request() + _request(method="HEAD") + _request())
        _, first = _read_response(s)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and f"content-length: {len(files.expected())}".encode() in head
        assert rest == b"" or rest.startswith(b"HTTP/1.1 200")  # HEAD: no body; the next response follows
        s.sendall(b"")  # the third response, read with what is already buffered
        third_head, third = _read_response(_Prefixed(s, rest))
    assert first == files.expected() and third == files.expected()
    assert third_head.startswith(b"HTTP/1.1 200")


def test_bytes_still_in_uvicorns_buffer_go_out_before_the_files(files: Files, port: int) -> None:
    """Body bytes sent the ordinary way to a client that is not reading yet sit in uvicorn's write buffer; the
    files sent after them must not overtake them."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(_request("/mixed"))
        time.sleep(0.3)
        _, body = _read_response(s)
    assert body[:len(PLAIN)] == PLAIN
    assert body[len(PLAIN):] == files.expected()


class _Prefixed:
    """A socket whose first received bytes are ``prefix``."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self.sock, self.prefix = sock, prefix

    def recv(self, n: int) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            return out
        return self.sock.recv(n)


def _buffers_returned() -> bool:
    """Whether every copy buffer lent so far is back in the pool (waiting a little for the server's side of a
    response that failed to finish)."""
    deadline = time.monotonic() + 5
    while sendfile._copy_buffers.lent and time.monotonic() < deadline:
        time.sleep(0.01)
    return sendfile._copy_buffers.lent == 0 and sendfile._copy_buffers.kept >= 1


def test_a_short_stored_file_closes_the_connection_and_the_server_goes_on(files: Files, port: int) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{port}/short", timeout=30)
    if sendfile.COPY_FOR_LOOPBACK:
        assert _buffers_returned()
    r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
    assert r.content == files.expected()


def test_a_client_that_leaves_mid_body_does_not_stop_the_server(files: Files, port: int) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_request())
            assert s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    if sendfile.COPY_FOR_LOOPBACK:
        assert _buffers_returned()
    r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
    assert r.content == files.expected()


def test_a_copy_buffer_smaller_than_every_part_still_gives_the_exact_body(
        files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a one-page buffer each file and the multipart framing are split across many fills and writes."""
    monkeypatch.setattr(sendfile, "COPY_FOR_LOOPBACK", True)
    monkeypatch.setattr(sendfile, "_copy_buffers", BufferPool(4096, keep=1))
    for port in _serve(files.app, SendfileProtocol):
        r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
        assert r.content == files.expected()
    assert files.offered == [True]


def test_fill_packs_parts_into_the_buffer_across_their_boundaries(files: Files) -> None:
    """The copying itself: bytes segments larger and smaller than the buffer and files of every size come out
    of successive fills in order, each fill full but the last; a file shorter than promised raises."""
    big = os.urandom(10_000)
    segments: list[sendfile.Segment] = [big, *files.segments(), b"x"]
    expected = big + files.expected() + b"x"
    p = sendfile._Progress(buf=memoryview(bytearray(4096)))
    out, fills = [], []
    while p.index < len(segments):
        sendfile._fill(segments, p)
        out.append(bytes(p.buf[:p.hi]))  # type: ignore[index]
        fills.append(p.hi)
    assert b"".join(out) == expected
    assert all(n == 4096 for n in fills[:-1]) and 0 < fills[-1] <= 4096
    short = sendfile._Progress(buf=memoryview(bytearray(1 << 20)))
    with pytest.raises(OSError, match="were promised"):
        while short.index < len(segments):
            sendfile._fill(files.segments(short=True), short)


def test_tls_connections_get_no_extension_and_the_same_bytes(files: Files, tmp_path: Path) -> None:
    make_ca(tmp_path, "ca")
    make_leaf(tmp_path, "server", "ca", "serverAuth")
    for port in _serve(files.app, SendfileProtocol, ssl_certfile=str(tmp_path / "server.crt"),
                       ssl_keyfile=str(tmp_path / "server.key")):
        ctx: ssl.SSLContext = client_context(tmp_path / "ca.crt")
        r = httpx.get(f"https://127.0.0.1:{port}/ok", timeout=30, verify=ctx)
        assert r.content == files.expected()
    assert files.offered == [False]


@pytest.mark.parametrize(("batch", "calls"), [(None, 1), (6 << 20, 2)])
def test_segments_go_to_the_extension_in_one_call_unless_batches_are_asked_for(
        files: Files, batch: int | None, calls: int) -> None:
    """One call: between batches the socket was uncorked and the thread handed back, and the client waited."""
    segments = files.segments()
    seen: list[list[sendfile.Segment]] = []
    messages: list[dict[str, Any]] = []

    async def send_segments(batch_: Any, size: int | None = None) -> None:
        assert size is None or size == sum(map(sendfile.segment_size, batch_))
        seen.append(list(batch_))

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    scope = {"type": "http", "method": "GET", "extensions": {sendfile.EXTENSION: {"send": send_segments}}}
    asyncio.run(SegmentsResponse(segments, nothing(), "application/octet-stream", batch=batch)(scope, None, send))
    assert len(seen) == calls
    assert [s for b in seen for s in b] == segments
    assert messages[0]["type"] == "http.response.start" and messages[-1] == {
        "type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.parametrize("buffer", [sendfile.COPY_BYTES, 4096])
def test_files_with_a_mapping_go_to_a_loopback_peer_from_it(
        files: Files, buffer: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose mapping is at hand is written from it (in one writev with the framing before it), never
    opened; a mapping shorter than the file is not used; the body is exact with a buffer of any size. Other
    peers get sendfile from the file, mapped or not."""
    files.views = True
    monkeypatch.setattr(sendfile, "_copy_buffers", BufferPool(buffer, keep=1))
    for copy in (True, False):
        monkeypatch.setattr(sendfile, "COPY_FOR_LOOPBACK", copy)
        files.opened.clear()
        for port in _serve(files.app, SendfileProtocol):
            r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
            assert r.content == files.expected()
        # file 1 (one byte) is mapped; file 3's mapping is one byte short, so it is read from the file
        assert files.opened == ([0, 2, 3, 4] if copy else [0, 1, 2, 3, 4])


def test_runs_of_mapped_files_are_gathered_into_one_writev(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mapped files and the framing between them go out in as few writev calls as the socket allows: a run is
    gathered up to GATHER_PIECES pieces and ends at a file without a mapping; a partial write resumes mid-piece."""
    files.views = "all"
    segments = files.segments()
    p = sendfile._Progress(buf=memoryview(bytearray(4096)))
    sendfile._fill(segments, p)  # the framing and the empty file (nothing to map) into the buffer, then a run
    assert bytes(p.buf[p.lo:p.hi]) == b"head\r\n--\r\n"  # type: ignore[index]
    assert p.views and p.after == len(segments)  # every file after the empty one, with its framing
    assert b"".join(bytes(v) for v in p.views) == files.expected()[len(b"head\r\n--\r\n"):]
    views = [memoryview(b"abc"), memoryview(b"de"), memoryview(b"f")]
    sendfile._consume(views, 4)
    assert [bytes(v) for v in views] == [b"e", b"f"]
    sendfile._consume(views, 2)
    assert views == []
    monkeypatch.setattr(sendfile, "GATHER_PIECES", 3)
    pieces, after = sendfile._gather(segments, 3, memoryview(b"x"))
    assert len(pieces) == 3 and after == 5
    files.views = True  # odd files only: a run ends at the next file without a mapping
    segments = files.segments()
    pieces, after = sendfile._gather(segments, 4, memoryview(b"x"))
    assert after == 5 and isinstance(segments[after], FilePart)
    writes: list[int] = []
    real = os.writev

    def counted(fd: int, buffers: Any) -> int:
        writes.append(len(buffers))
        return real(fd, buffers)

    monkeypatch.setattr(os, "writev", counted)
    files.views = "all"
    monkeypatch.setattr(sendfile, "COPY_FOR_LOOPBACK", True)
    for port in _serve(files.app, SendfileProtocol):
        r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
        assert r.content == files.expected()
    assert max(writes) > 2  # more than the buffer's bytes and one file in a call
