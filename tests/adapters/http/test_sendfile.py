"""The sendfile extension of telerad's uvicorn protocol, over real sockets on 127.0.0.1: exact bodies with the
extension and without it (streamed fallback, TLS), a reader slow enough to fill the socket, pipelined
requests, HEAD, a stored file shorter than promised and a client that leaves mid-body."""

from __future__ import annotations

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
        self.mapped: list[bool] = []  # whether the files went from a mapping (a loopback peer) or by sendfile
        self.corked: list[int] = []  # TCP_CORK of the server's socket: as each file was opened, then after

    def segments(self, short: bool = False) -> list[sendfile.Segment]:
        segs: list[sendfile.Segment] = [b"head\r\n"]
        for p in self.paths:
            size = p.stat().st_size + (10 if short and p.stat().st_size > 1 << 20 else 0)
            segs += [FilePart(partial(p.open, "rb"), size), b"--\r\n"]
        return segs

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
            self.mapped.append(cycle.mapped_files)

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


@pytest.fixture(params=[True, False], ids=["mapped", "sendfile"])
def port(files: Files, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A server offering the extension; the files written from a mapping (how loopback peers get them) or
    with sendfile (every other peer), so both paths see every test."""
    monkeypatch.setattr(sendfile, "MAP_FOR_LOOPBACK", request.param)
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
    assert files.mapped == [sendfile.MAP_FOR_LOOPBACK]  # this client is on loopback: mapped unless turned off


def test_plain_uvicorn_offers_nothing_and_the_fallback_sends_the_same_bytes(files: Files) -> None:
    for port in _serve(files.app, "httptools"):
        r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
        assert r.content == files.expected()
    assert files.offered == [False]


def test_a_slow_reader_fills_the_socket_and_still_gets_every_byte(files: Files, port: int,
                                                                  waits: list[int]) -> None:
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


def test_a_short_stored_file_closes_the_connection_and_the_server_goes_on(files: Files, port: int) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{port}/short", timeout=30)
    r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
    assert r.content == files.expected()


def test_a_client_that_leaves_mid_body_does_not_stop_the_server(files: Files, port: int) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_request())
            assert s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    r = httpx.get(f"http://127.0.0.1:{port}/ok", timeout=30)
    assert r.content == files.expected()


def test_tls_connections_get_no_extension_and_the_same_bytes(files: Files, tmp_path: Path) -> None:
    make_ca(tmp_path, "ca")
    make_leaf(tmp_path, "server", "ca", "serverAuth")
    for port in _serve(files.app, SendfileProtocol, ssl_certfile=str(tmp_path / "server.crt"),
                       ssl_keyfile=str(tmp_path / "server.key")):
        ctx: ssl.SSLContext = client_context(tmp_path / "ca.crt")
        r = httpx.get(f"https://127.0.0.1:{port}/ok", timeout=30, verify=ctx)
        assert r.content == files.expected()
    assert files.offered == [False]
