"""Audit export over syslog/TLS (RFC 5424 / RFC 5425, IHE ITI-20) against a real TLS receiver started here.

The receiver is a small ssl server thread on 127.0.0.1 that parses octet-counted frames; certificates come from
the openssl CLI. Nothing waits on the clock: tests poll for the expected state with generous timeouts.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from support import free_port

from telerad.context import Context
from telerad.db.models import AuditEvent
from telerad.security.audit import MINOR_FAILURE, Action, Event
from telerad.security.syslog import AuditExporter, format_message, frame, start_exporter

# -- certificates (openssl CLI, as tests/adapters/dimse/test_tls.py) ------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: Path, name: str, ca: str, usage: str, san: str = "IP:127.0.0.1,DNS:localhost") -> None:
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a collector and an exporter (client) certificate; a collector certificate for another name;
    a rogue CA with its own collector certificate."""
    d = tmp_path_factory.mktemp("syslog-pki")
    _ca(d, "ca")
    _leaf(d, "collector", "ca", "serverAuth")
    _leaf(d, "exporter", "ca", "clientAuth")
    _leaf(d, "elsewhere", "ca", "serverAuth", san="DNS:arr.elsewhere.example")
    _ca(d, "rogue")
    _leaf(d, "impostor", "rogue", "serverAuth")
    return d


# -- an RFC 5425 receiver ---------------------------------------------------------------------------------------------
_FRAME = re.compile(rb"([1-9][0-9]{0,8}) ")


class SyslogReceiver:
    """TLS listener that splits the stream into RFC 5425 octet-counted frames (``MSG-LEN SP SYSLOG-MSG``)."""

    def __init__(self, context: ssl.SSLContext, port: int) -> None:
        self.context = context
        self.port = port
        self.frames: list[bytes] = []
        self.errors: list[str] = []
        self.peer_subjects: list[str] = []
        self.versions: list[str] = []
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    def start(self) -> SyslogReceiver:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stopped.set()
        for t in self._threads:
            t.join(10)
        if self._listener is not None:
            self._listener.close()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.frames) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"received {len(self.frames)} of {count} messages; errors: {self.errors}"
                self._cond.wait(left)
            return list(self.frames)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(f"handshake: {exc}")
            conn.close()
            return
        peer = tls.getpeercert()
        if peer:
            self.peer_subjects.append(repr(peer["subject"]))
        self.versions.append(tls.version() or "")
        tls.settimeout(0.1)
        buffer = b""
        try:
            while not self._stopped.is_set():
                try:
                    data = tls.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self.errors.append(f"read: {exc}")
                    return
                if not data:
                    return
                buffer += data
                with self._cond:
                    while (m := _FRAME.match(buffer)) and len(buffer) >= m.end() + int(m.group(1)):
                        end = m.end() + int(m.group(1))
                        self.frames.append(buffer[m.end():end])
                        buffer = buffer[end:]
                    if buffer and not _FRAME.match(buffer) and not buffer[:9].isdigit():
                        self.errors.append(f"not an octet-counted frame: {buffer[:40]!r}")
                        return
                    self._cond.notify_all()
        finally:
            tls.close()


def _server_context(pki: Path, cert: str = "collector", *, require_client: bool = False) -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    if require_client:
        c.load_verify_locations(pki / "ca.crt")
        c.verify_mode = ssl.CERT_REQUIRED
    return c


@dataclass
class Collector:
    """Receivers started on one port (a collector that goes down and comes back)."""

    pki: Path
    port: int
    receivers: list[SyslogReceiver]

    def up(self, context: ssl.SSLContext | None = None) -> SyslogReceiver:
        r = SyslogReceiver(context or _server_context(self.pki), self.port).start()
        self.receivers.append(r)
        return r

    def down(self) -> None:
        for r in self.receivers:
            r.stop()


@pytest.fixture
def collector(pki: Path) -> Iterator[Collector]:
    c = Collector(pki, free_port(), [])
    yield c
    c.down()


@pytest.fixture
def configure(ctx: Context, pki: Path, collector: Collector) -> Callable[..., None]:
    def apply(*, client_cert: bool = False, host: str = "127.0.0.1") -> None:
        s = ctx.settings
        s.audit_syslog_host = host
        s.audit_syslog_port = collector.port
        s.audit_syslog_ca = pki / "ca.crt"
        s.audit_syslog_cert = pki / "exporter.crt" if client_cert else None
        s.audit_syslog_key = pki / "exporter.key" if client_cert else None
        s.audit_syslog_retry_seconds = 0.05

    apply()
    return apply


@pytest.fixture
def exporters(ctx: Context) -> Iterator[Callable[[], AuditExporter]]:
    made: list[AuditExporter] = []

    def make() -> AuditExporter:
        e = AuditExporter(ctx.db, ctx.settings, hostname="telerad-test", poll_seconds=0.05, batch_size=4,
                          max_retry_seconds=0.2, connect_timeout=5.0, audit=ctx.audit)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop(drain=False)


def _logins(ctx: Context, names: list[str]) -> None:
    for name in names:
        ctx.audit.record(Event(Action.LOGIN, actor_type="user", actor=name, source="10.0.0.1"))
    ctx.audit.flush()


def _rows(ctx: Context) -> list[AuditEvent]:
    with ctx.db.session() as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())


def _user_ids(frames: list[bytes]) -> list[str]:
    """The requesting participant of each delivered message."""
    out: list[str] = []
    for f in frames:
        root = ET.fromstring(f[f.index(b"\xef\xbb\xbf") + 3:])
        out.extend(p.get("UserID", "") for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    return out


def _poll(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- message format ---------------------------------------------------------------------------------------------------
_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) - \xef\xbb\xbf<\?xml ")


def test_format_and_framing_follow_rfc5424_and_rfc5425() -> None:
    msg = format_message(b"<AuditMessage/>", severity=5, timestamp="2026-03-04T05:06:07.123456Z",
                         hostname="arr host\x00", procid="42")
    assert msg == b"<85>1 2026-03-04T05:06:07.123456Z arr_host_ telerad 42 IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>"
    assert frame(msg) == str(len(msg)).encode() + b" " + msg
    assert format_message(b"x", severity=4, timestamp="not a time", hostname="")[:4] == b"<84>"
    with pytest.raises(ValueError):
        format_message(b"x", severity=8, timestamp="", hostname="h")


def test_records_arrive_as_octet_counted_rfc5424_messages(ctx: Context, configure: Callable[..., None],
                                                          collector: Collector,
                                                          exporters: Callable[[], AuditExporter]) -> None:
    receiver = collector.up()
    ctx.audit.record(Event(Action.RETRIEVE, actor_type="user", actor="dr.house", source="10.1.2.3",
                           patient_id="PAT-1", patient_name="Doe^Jane", study_uid="1.2.3.4"))
    ctx.audit.record(Event(Action.ACCESS_DENIED, outcome=MINOR_FAILURE, actor_type="user", actor="eve",
                           source="10.6.6.6", details={"path": "/api/users", "reason": "admin only"}))
    ctx.audit.flush()
    exporter = exporters()
    assert exporter.run_once() == 2
    first, second = receiver.wait_for(2)
    assert receiver.versions[0] in ("TLSv1.2", "TLSv1.3")
    assert not receiver.errors

    rows = _rows(ctx)
    for message, row, pri in ((first, rows[0], b"85"), (second, rows[1], b"84")):  # notice; warning for alerts
        m = _HEADER.match(message)
        assert m is not None, message[:120]
        assert m.group(1) == pri  # facility 10 (authpriv) * 8 + severity
        assert m.group(2).decode() == row.at  # the time of the event, RFC 3339
        assert m.groups()[2:] == (b"telerad-test", b"telerad", m.group(5), b"IHE+RFC-3881")
        assert m.group(5).isdigit()  # PROCID
        root = ET.fromstring(message[m.end() - len(b"<?xml "):])
        assert root.tag == "AuditMessage"
    event = ET.fromstring(first[first.index(b"<?xml"):]).find("EventIdentification/EventID")
    assert event is not None and event.get("csd-code") == "110104"
    event = ET.fromstring(second[second.index(b"<?xml"):]).find("EventIdentification/EventID")
    assert event is not None and event.get("csd-code") == "110113"
    cursor = exporter.cursor()
    assert (cursor.last_seq, cursor.last_error) == (rows[-1].seq, "")


def test_store_and_forward_while_the_collector_is_down(ctx: Context, configure: Callable[..., None],
                                                       collector: Collector,
                                                       exporters: Callable[[], AuditExporter]) -> None:
    exporter = exporters().start()  # nothing listens on the port yet
    names = [f"user-{i:02d}" for i in range(11)]  # more than two batches of 4
    _logins(ctx, names)
    _poll(lambda: exporter.cursor().last_error != "")
    assert exporter.cursor().last_seq == 0
    assert exporter.pending() == len(names)

    receiver = collector.up()
    receiver.wait_for(len(names))
    _poll(lambda: exporter.pending() == 0)
    exporter.stop()  # drains: nothing left to send
    assert _user_ids(receiver.frames) == names  # in order, exactly once
    cursor = exporter.cursor()
    assert (cursor.last_seq, cursor.last_error) == (_rows(ctx)[-1].seq, "")

    # the cursor is durable: a new exporter on the same database resends nothing, and continues after it
    again = exporters()
    assert again.run_once() == 0
    _logins(ctx, ["late"])
    assert again.run_once() == 1
    assert _user_ids(receiver.wait_for(len(names) + 1)) == [*names, "late"]


def test_collector_restart_loses_nothing(ctx: Context, configure: Callable[..., None], collector: Collector,
                                         exporters: Callable[[], AuditExporter]) -> None:
    first = collector.up()
    exporter = exporters().start()
    _logins(ctx, ["a", "b"])
    first.wait_for(2)
    _poll(lambda: exporter.pending() == 0)
    collector.down()  # closes the exporter's connection
    _logins(ctx, ["c", "d", "e"])
    second = collector.up()
    second.wait_for(3)
    _poll(lambda: exporter.pending() == 0)
    exporter.stop()
    assert _user_ids(first.frames) + _user_ids(second.frames) == ["a", "b", "c", "d", "e"]


def test_client_certificate_is_presented(ctx: Context, configure: Callable[..., None], collector: Collector,
                                         pki: Path, exporters: Callable[[], AuditExporter]) -> None:
    configure(client_cert=True)
    receiver = collector.up(_server_context(pki, require_client=True))
    _logins(ctx, ["alice"])
    assert exporters().run_once() == 1
    receiver.wait_for(1)
    assert len(receiver.peer_subjects) == 1 and "('commonName', 'exporter')" in receiver.peer_subjects[0]


def test_collector_requiring_a_certificate_refuses_an_anonymous_exporter(
        ctx: Context, configure: Callable[..., None], collector: Collector, pki: Path,
        exporters: Callable[[], AuditExporter]) -> None:
    receiver = collector.up(_server_context(pki, require_client=True))
    _logins(ctx, ["alice"])
    exporter = exporters()
    # TLS 1.3 reports the refusal after the client's handshake: the exporter waits for it before sending
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        exporter.run_once()
    assert receiver.frames == []
    assert exporter.cursor().last_seq == 0


def _refused(ctx: Context, exporter: AuditExporter, receiver: SyslogReceiver, reason: str) -> None:
    _logins(ctx, ["alice", "bob"])
    with pytest.raises(ssl.SSLError) as err:
        exporter.run_once()
    assert reason in str(err.value)
    assert receiver.frames == []
    cursor = exporter.cursor()
    assert cursor.last_seq == 0
    assert reason in cursor.last_error
    assert exporter.pending() == 2


def test_collector_certificate_from_another_ca_is_refused(ctx: Context, configure: Callable[..., None],
                                                          collector: Collector, pki: Path,
                                                          exporters: Callable[[], AuditExporter]) -> None:
    receiver = collector.up(_server_context(pki, "impostor"))
    _refused(ctx, exporters(), receiver, "CERTIFICATE_VERIFY_FAILED")


def test_collector_certificate_for_another_name_is_refused(ctx: Context, configure: Callable[..., None],
                                                           collector: Collector, pki: Path,
                                                           exporters: Callable[[], AuditExporter]) -> None:
    receiver = collector.up(_server_context(pki, "elsewhere"))
    _refused(ctx, exporters(), receiver, "CERTIFICATE_VERIFY_FAILED")  # hostname mismatch


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_only_collector_is_refused(ctx: Context, configure: Callable[..., None], collector: Collector,
                                         pki: Path, exporters: Callable[[], AuditExporter]) -> None:
    old = _server_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")  # let this server really speak TLS 1.0/1.1
    receiver = collector.up(old)
    _logins(ctx, ["alice"])
    exporter = exporters()
    with pytest.raises(ssl.SSLError):
        exporter.run_once()
    assert receiver.frames == []
    assert exporter.cursor().last_seq == 0
    assert exporter.cursor().last_error != ""


def test_start_exporter_is_off_without_a_host(ctx: Context, configure: Callable[..., None],
                                              collector: Collector) -> None:
    ctx.settings.audit_syslog_host = ""
    assert start_exporter(ctx) is None
    configure()
    receiver = collector.up()
    exporter = start_exporter(ctx)
    assert exporter is not None
    try:
        _logins(ctx, ["alice"])
        assert _user_ids(receiver.wait_for(1)) == ["alice"]
    finally:
        exporter.stop()


# -- end to end: `telerad serve` exports its own start and stop --------------------------------------------------------
def test_telerad_serve_exports_its_audit_trail(settings, pki: Path, collector: Collector, tmp_path: Path) -> None:
    import os
    import signal
    import sys

    receiver = collector.up()
    env = {**os.environ, "TELERAD_HOME": str(settings.home), "TELERAD_DATABASE_URL": settings.database_url,
           "TELERAD_HTTP_PORT": str(settings.http_port), "TELERAD_DICOM_PORT": str(settings.dicom_port),
           "TELERAD_AUDIT_SYSLOG_HOST": "127.0.0.1", "TELERAD_AUDIT_SYSLOG_PORT": str(collector.port),
           "TELERAD_AUDIT_SYSLOG_CA": str(pki / "ca.crt")}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "telerad.cli", "serve"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)

    def event_types() -> list[str]:
        out = []
        for f in list(receiver.frames):
            root = ET.fromstring(f[f.index(b"\xef\xbb\xbf") + 3:])
            out.extend(c.get("originalText", "") for c in root.iter("EventTypeCode"))
        return out

    try:
        _poll(lambda: "Application Start" in event_types() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    _poll(lambda: "Application Stop" in event_types())
    assert receiver.versions and all(v in ("TLSv1.2", "TLSv1.3") for v in receiver.versions)
