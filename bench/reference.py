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

Two more references, nearer to what a server does, each a bound for a kind of server:

* the floor of a Python ASGI server: the frame-sized body from a minimal ASGI application under uvicorn with
  the event loop and HTTP parser telerad's server uses (uvloop, httptools), no routing, no authentication, no
  lookup, no file; with the frames goal's client. Above 0.1x of Orthanc, no server written as an ASGI
  application (telerad is one) meets that goal here;
* a static file server: nginx (Debian ``nginx-light``, when installed) sending the study's bytes as one file,
  with ``sendfile on`` and with ``sendfile off`` (reads into 1 MB buffers, the faster here), with curl as in the
  suite. A server that sends stored files, in any language, has at least nginx's work per byte; below 1.5x of
  Orthanc, that goal is out of a file server's reach on this machine.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from measure import LeanClient

_BOUNDARY = b"reference-boundary"
_SEND = 4 << 20


@dataclass
class Reference:
    frame_floor_p50_ms: float  # through measure.LeanClient, the client of the frames goal
    study_ceiling_mb_s: float
    frame_floor_httpx_p50_ms: float
    asgi_frame_floor_p50_ms: float | None = None  # a minimal ASGI app under uvicorn, the same client
    nginx_study_mb_s: dict[str, float] = field(default_factory=dict)  # "sendfile on" / "sendfile off": MB/s

    @property
    def nginx_best_mb_s(self) -> float | None:
        return max(self.nginx_study_mb_s.values()) if self.nginx_study_mb_s else None


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


def _frame_part(frame_bytes: int) -> tuple[bytes, str]:
    """A frames response's body (one frame in multipart framing) and its content type."""
    part = (b"--" + _BOUNDARY + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(frame_bytes)
            + b"\r\n--" + _BOUNDARY + b"--\r\n")
    return part, f'multipart/related; type="application/octet-stream"; boundary={_BOUNDARY.decode()}'


def frame_floor(frame_bytes: int, accept: str, requests: int, lean: bool = True) -> float:
    """p50 seconds of a frames-like request as :func:`measure.frames` makes them (``lean``: through
    :class:`measure.LeanClient`, else httpx)."""
    srv = _FixedServer(*_frame_part(frame_bytes))
    try:
        return _frame_p50(srv.port, frame_bytes, accept, requests, lean)
    finally:
        srv.close()


def _frame_p50(port: int, frame_bytes: int, accept: str, requests: int, lean: bool) -> float:
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer reference"}
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


# A minimal ASGI application: every request gets the bytes of the file named in the environment.
_ASGI_APP = """
import os, sys, uvicorn
with open(os.environ["REF_BODY"], "rb") as f:
    BODY = f.read()
HEADERS = [(b"content-type", os.environ["REF_CTYPE"].encode()), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", lifespan="off",
            log_level="warning", access_log=False)
"""


def asgi_frame_floor(frame_bytes: int, accept: str, requests: int) -> float:
    """p50 seconds of a frames-like request to :data:`_ASGI_APP` under uvicorn (uvloop, httptools), through
    :class:`measure.LeanClient`."""
    part, ctype = _frame_part(frame_bytes)
    port = _free_port()
    with tempfile.NamedTemporaryFile(prefix="telerad-ref-frame-") as body:
        body.write(part)
        body.flush()
        env = {"REF_BODY": body.name, "REF_CTYPE": ctype, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([sys.executable, "-c", _ASGI_APP, str(port)], env=env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the reference ASGI server did not start (exit {proc.poll()})") from None
                    time.sleep(0.05)
            return _frame_p50(port, frame_bytes, accept, requests, lean=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def study_ceiling(study_bytes: int, runs: int) -> float:
    """MB/s of ``curl`` reading a study-sized body: median of ``runs`` (curl's own time_total), as in the suite."""
    chunk = bytes(range(256)) * 4096  # 1 MiB
    body = chunk * (study_bytes // len(chunk)) + chunk[:study_bytes % len(chunk)]
    srv = _FixedServer(body, "application/octet-stream")
    try:
        walls = [_curl_seconds(f"http://127.0.0.1:{srv.port}/study", study_bytes) for _ in range(runs)]
        return study_bytes / statistics.median(walls) / 1e6
    finally:
        srv.close()


_NGINX_CONF = """daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; tcp_nopush on; root {d}/www; types {{ }} default_type application/octet-stream;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{on}; sendfile on; }}
  server {{ listen 127.0.0.1:{off}; sendfile off; output_buffers 2 1m; }} }}
"""


def nginx_exe() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class NginxStudy:
    """nginx serving the study's files, concatenated into one static file, on two ports: ``sendfile on`` and
    ``sendfile off``; started by ``with``, stopped at its end. :meth:`mb_s` is curl's MB/s as in the suite."""

    MODES = ("sendfile on", "sendfile off")

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.size = 0
        self.ports = {mode: _free_port() for mode in self.MODES}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxStudy:
        exe = nginx_exe()
        if exe is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self._tmp = tempfile.TemporaryDirectory(prefix="telerad-ref-nginx-")
        d = Path(self._tmp.name)
        d.chmod(0o755)  # nginx's worker runs as another user when it is started by root
        (d / "www").mkdir()
        (d / "tmp").mkdir()
        with open(d / "www" / "study", "wb") as out:
            for f in self.files:
                data = Path(f).read_bytes()
                out.write(data)
                self.size += len(data)
        conf = _NGINX_CONF.format(d=d, on=self.ports["sendfile on"], off=self.ports["sendfile off"])
        (d / "nginx.conf").write_text(conf)
        self._proc = subprocess.Popen([exe, "-c", str(d / "nginx.conf"), "-p", str(d)], stderr=subprocess.PIPE)
        for mode in self.MODES:  # a warm-up each (the file into the page cache), once it listens
            _curl_seconds(self._url(mode), self.size)
        return self

    @property
    def pid(self) -> int:
        """nginx's master process (its worker is a child)."""
        assert self._proc is not None
        return self._proc.pid

    def _url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.ports[mode]}/study"

    def seconds(self, mode: str) -> float:
        return _curl_seconds(self._url(mode), self.size)

    def mb_s(self, mode: str, runs: int) -> float:
        """The median MB/s of ``runs`` requests."""
        return self.size / statistics.median(self.seconds(mode) for _ in range(runs)) / 1e6

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()


def nginx_study(files: list[str], runs: int) -> dict[str, float]:
    """MB/s of ``curl`` reading the study's files, concatenated into one static file, from nginx with
    ``sendfile on`` and with ``sendfile off``: median of ``runs`` each, the two alternating. Empty when nginx
    is not installed."""
    if nginx_exe() is None:
        return {}
    with NginxStudy(files) as ngx:
        walls: dict[str, list[float]] = {mode: [] for mode in ngx.MODES}
        for _ in range(runs):
            for mode in ngx.MODES:
                walls[mode].append(ngx.seconds(mode))
        return {mode: ngx.size / statistics.median(w) / 1e6 for mode, w in walls.items()}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _curl_seconds(url: str, size: int) -> float:
    """curl's own time_total for ``url`` to /dev/null, checking that ``size`` bytes came."""
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                           capture_output=True, text=True, timeout=600)
        if r.returncode == 7 and time.monotonic() < deadline:  # not listening yet
            time.sleep(0.05)
            continue
        got, total = r.stdout.split()
        if int(got) != size:
            raise RuntimeError(f"reference server at {url} sent {got} of {size} bytes: {r.stderr[-200:]}")
        return float(total)


def measure_reference(frame_bytes: int, study_files: list[str], accept: str, requests: int,
                      runs: int) -> Reference:
    study_bytes = sum(Path(f).stat().st_size for f in study_files)
    return Reference(frame_floor(frame_bytes, accept, requests) * 1000, study_ceiling(study_bytes, runs),
                     frame_floor(frame_bytes, accept, requests, lean=False) * 1000,
                     asgi_frame_floor(frame_bytes, accept, requests) * 1000, nginx_study(study_files, runs))
