"""What the machine and the clients allow with no archive at all, measured in the same run as the servers.

Two goals are ratios to Orthanc that a server can only reach if the client and the loopback leave room:
``frames/1`` p50 <= 0.1x and whole-study WADO-RS >= 1.5x. This module serves fixed bytes from memory with
the least work possible (a blocking socket, one ``sendall`` per response, keep-alive) and measures them with
the very clients the suite uses:

* the client floor of a frame: the same clients and headers as :func:`measure.frames` (its lean
  ``http.client`` connection, the goal's figure, and httpx), a body the size of one frame wrapped in the same
  multipart framing;
* the loopback ceiling of a study: ``curl`` to /dev/null as in :func:`measure.wado_study_curl`, a body the size
  of the study.

If the floor is above 0.1x of Orthanc's frame latency, or the ceiling below 1.5x of Orthanc's throughput, no
server can meet that goal on this machine with these clients, whatever it does.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
from measure import LeanClient

_BOUNDARY = b"reference-boundary"
_SEND = 4 << 20


@dataclass
class Reference:
    frame_floor_p50_ms: float  # through measure.LeanClient, the client of the frames goal
    study_ceiling_mb_s: float
    frame_floor_httpx_p50_ms: float


class _FixedServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers every GET with the same bytes, from memory."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        view = memoryview(self.body)
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                pending = pending.split(b"\r\n\r\n", 1)[1]  # GET requests: no body
                conn.sendall(self.head)
                for i in range(0, len(self.body), _SEND):
                    conn.sendall(view[i:i + _SEND])

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def frame_floor(frame_bytes: int, accept: str, requests: int, lean: bool = True) -> float:
    """p50 seconds of a frames-like request as :func:`measure.frames` makes them (``lean``: through
    :class:`measure.LeanClient`, else httpx)."""
    part = (b"--" + _BOUNDARY + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(frame_bytes)
            + b"\r\n--" + _BOUNDARY + b"--\r\n")
    srv = _FixedServer(part, f'multipart/related; type="application/octet-stream"; boundary={_BOUNDARY.decode()}')
    base, auth = f"http://127.0.0.1:{srv.port}", {"Authorization": "Bearer reference"}
    lc = LeanClient(base, auth) if lean else None
    hc = None if lean else httpx.Client(base_url=base, timeout=60, headers=auth)
    try:
        samples = []
        for i in range(requests + 1):  # first is a warm-up
            t0 = time.perf_counter()
            if lc is not None:
                status, body = lc.get("/frames/1", {"Accept": accept})
            else:
                assert hc is not None
                r = hc.get("/frames/1", headers={"Accept": accept})
                status, body = r.status_code, r.content
            dt = time.perf_counter() - t0
            if status != 200 or len(body) < frame_bytes:
                raise RuntimeError(f"reference frame server answered {status}, {len(body)} bytes")
            if i:
                samples.append(dt)
        return statistics.median(samples)
    finally:
        if lc is not None:
            lc.close()
        if hc is not None:
            hc.close()
        srv.close()


def study_ceiling(study_bytes: int, runs: int) -> float:
    """MB/s of ``curl`` reading a study-sized body: median of ``runs`` (curl's own time_total), as in the suite."""
    chunk = bytes(range(256)) * 4096  # 1 MiB
    body = chunk * (study_bytes // len(chunk)) + chunk[:study_bytes % len(chunk)]
    srv = _FixedServer(body, "application/octet-stream")
    try:
        walls = []
        for _ in range(runs):
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                                f"http://127.0.0.1:{srv.port}/study"], capture_output=True, text=True, timeout=600)
            got, total = r.stdout.split()
            if int(got) != study_bytes:
                raise RuntimeError(f"reference study server sent {got} of {study_bytes} bytes")
            walls.append(float(total))
        return study_bytes / statistics.median(walls) / 1e6
    finally:
        srv.close()


def measure_reference(frame_bytes: int, study_bytes: int, accept: str, requests: int, runs: int) -> Reference:
    return Reference(frame_floor(frame_bytes, accept, requests) * 1000, study_ceiling(study_bytes, runs),
                     frame_floor(frame_bytes, accept, requests, lean=False) * 1000)
