"""The DICOM listener: one pynetdicom AE serving Verification, Storage, Q/R and Storage Commitment.

Services (PS3.4): Verification (Annex A), Storage of every storage SOP Class pynetdicom knows (Annex B) in any
transfer syntax pydicom knows (stored as received, never transcoded), Patient Root and Study Root
Query/Retrieve FIND/MOVE/GET (Annex C) and Storage Commitment Push Model (Annex J). Storage contexts accept
SCP/SCU Role Selection (PS3.7 D.3.3.4) so a C-GET requestor can act as Storage SCP on the same association.

The transfer syntax accepted for a presentation context is the requestor's first choice among those
proposed (:func:`prefer_requestor_order`). Associations are admitted by calling AE title (:mod:`.auth`);
the site resolved at admission is the only tenant the association's handlers see, and what they do is
audited (:mod:`.audit`). With a certificate and key configured the listener speaks TLS (PS3.15 B.9/B.10,
:mod:`.tls`); the TLS handshake runs in the connection's own thread, under a timeout, so one silent client
cannot stall the accept loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, evt
from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from telerad.adapters.dimse import lean, rawsend, sockets
from telerad.adapters.dimse.audit import DimseAudit
from telerad.adapters.dimse.auth import TenantAE
from telerad.adapters.dimse.commitment import handle_n_action
from telerad.adapters.dimse.common import Runtime
from telerad.adapters.dimse.find import handle_find
from telerad.adapters.dimse.retrieve import handle_get, handle_move
from telerad.adapters.dimse.storage import handle_echo, handle_store
from telerad.adapters.dimse.tls import server_context
from telerad.context import Context

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 15.0
QR_CLASSES = [
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
]
# Every transfer syntax pydicom knows, the uncompressed ones first (PS3.5 A.1-A.4, A.5 deflate, A.6-A.8).
STORAGE_TRANSFER_SYNTAXES = [*DEFAULT_TRANSFER_SYNTAXES,
                             *[str(t) for t in AllTransferSyntaxes if str(t) not in DEFAULT_TRANSFER_SYNTAXES]]


def prefer_requestor_order(event: Any) -> None:
    """EVT_REQUESTED: let the requestor's transfer syntax order decide (PS3.8 9.3.2.2.1, 9.3.3.2).

    pynetdicom accepts the first of the *acceptor's* transfer syntaxes that the requestor proposed. A sender
    that proposes, say, JPEG 2000 before Explicit VR Little Endian in one presentation context usually holds
    JPEG 2000 data; picking its first choice means it sends what it has, without transcoding. The supported
    contexts are a per-association copy, still writable before negotiation, so reordering them is local.
    """
    assoc = event.assoc
    # A sender may propose one abstract syntax in several contexts (DCMTK storescu: one per transfer
    # syntax, or [Big Endian, Implicit] beside [Little Endian, ...]); supported contexts are per abstract
    # syntax, so rank each transfer syntax by its best position in any of those contexts: every context then
    # gets its own first choice.
    rank: dict[str, dict[str, int]] = {}
    for cx in assoc.requestor.primitive.presentation_context_definition_list:
        ranks = rank.setdefault(str(cx.abstract_syntax), {})
        for i, t in enumerate(cx.transfer_syntax):
            ranks[str(t)] = min(i, ranks.get(str(t), i))
    for cx in assoc.acceptor.supported_contexts:
        theirs = rank.get(str(cx.abstract_syntax))
        if theirs:
            ours = [str(t) for t in cx.transfer_syntax]
            cx.transfer_syntax = sorted(ours, key=lambda t: (theirs.get(t, len(ours)), ours.index(t)))


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved from the accept loop to the connection thread,
    and store-only associations over plain TCP served by :mod:`.lean` on that thread.

    ``handoff`` (set by ``telerad serve`` with DIMSE workers, :mod:`telerad.workers`) may pass an accepted
    connection to another process instead; ``on_finished`` is called when a connection served here ends.
    ``active`` counts the connections being served here."""

    lean: lean.LeanAssociations | None = None
    handoff: Callable[[socket.socket, Any, int], bool] | None = None
    on_finished: Callable[[], None] | None = None
    active = 0
    _serving = False

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        if self._serving:  # a worker's server never runs the accept loop: nothing to wait for
            super().shutdown()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.handoff is not None and self.handoff(request, client_address, self.active):
            self.close_request(request)  # the other process holds its own descriptor of the connection
            return
        with _count_lock:
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self._serve_connection(request, client_address)
        finally:
            with _count_lock:
                self.active -= 1
            if self.on_finished is not None:
                self.on_finished()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        sockets.nodelay(request)
        if self.ssl_context is not None:
            try:
                request.settimeout(TLS_HANDSHAKE_TIMEOUT)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", client_address, exc)
                with contextlib.suppress(OSError):
                    request.close()
                return
        elif self.lean is not None:
            request_primitive = lean.peek_request(request, self.ae.acse_timeout or TLS_HANDSHAKE_TIMEOUT,
                                                  self.lean.elsewhere)
            if request_primitive is not None:
                try:
                    self.lean.serve(request, client_address, request_primitive)
                finally:
                    self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


_count_lock = threading.Lock()


class DimseServer:
    """A running listener; :meth:`shutdown` stops it and aborts its associations."""

    def __init__(self, ae: TenantAE, server: _Server, executor: ThreadPoolExecutor) -> None:
        self.ae = ae
        self.server = server
        self.lean = server.lean
        self._executor = executor

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def shutdown(self) -> None:
        if self.lean is not None:  # first: closing the listener waits for the connection threads
            self.lean.shutdown()
        self.ae.shutdown()  # stops every server of the AE, then aborts the active associations
        self._executor.shutdown(wait=True, cancel_futures=True)


def build_ae(ctx: Context) -> TenantAE:
    """The AE with its limits, timeouts and every supported presentation context."""
    s = ctx.settings
    ae = TenantAE(ctx, s.ae_title)
    ae.maximum_associations = s.dimse_max_associations
    ae.maximum_pdu_size = s.dimse_max_pdu
    ae.acse_timeout = s.dimse_timeout
    ae.dimse_timeout = s.dimse_timeout
    ae.network_timeout = s.dimse_timeout
    ae.add_supported_context(Verification, DEFAULT_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        # Both roles accepted: SCU->SCP for C-STORE, inverted for C-GET sub-operations (PS3.4 C.4.3.1.3).
        ae.add_supported_context(str(cx.abstract_syntax), STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for uid in QR_CLASSES:
        ae.add_supported_context(uid, DEFAULT_TRANSFER_SYNTAXES)
    ae.add_supported_context(StorageCommitmentPushModel, DEFAULT_TRANSFER_SYNTAXES)
    return ae


def start_dimse(ctx: Context, listen: bool = True) -> DimseServer:
    """Start listening on ``dicom_host:dicom_port`` in background threads and return at once. Without
    ``listen`` (a DIMSE worker, :mod:`telerad.workers`) nothing listens: connections arrive through
    ``server.process_request`` from the process that accepted them."""
    s = ctx.settings
    rawsend.install()
    sockets.install()
    ae = build_ae(ctx)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="telerad-stgcmt")
    audit = DimseAudit(ctx, ae)
    rt = Runtime(ctx=ctx, ae=ae, executor=executor, audit=audit)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, prefer_requestor_order),
        # Whichever way an association ends, its C-STORE audit counts are recorded (once).
        (evt.EVT_RELEASED, audit.association_ended),
        (evt.EVT_ABORTED, audit.association_ended),
        (evt.EVT_CONN_CLOSE, audit.association_ended),
        (evt.EVT_C_ECHO, handle_echo, [rt]),
        (evt.EVT_C_STORE, handle_store, [rt]),
        (evt.EVT_C_FIND, handle_find, [rt]),
        (evt.EVT_C_MOVE, handle_move, [rt]),
        (evt.EVT_C_GET, handle_get, [rt]),
        (evt.EVT_N_ACTION, handle_n_action, [rt]),
    ]
    # A worker's server is bound to an ephemeral loopback port only because pynetdicom's server binds in its
    # constructor; that socket is closed at once, before anything could connect to it.
    address = (s.dicom_host, s.dicom_port) if listen else ("127.0.0.1", 0)
    server = ae.make_server(address, ssl_context=server_context(s), evt_handlers=handlers, server_class=_Server)
    assert isinstance(server, _Server)
    server.contexts = sockets.cheap_copies(server.contexts)
    if s.dimse_lean_store:
        server.lean = lean.LeanAssociations(rt, STORAGE_TRANSFER_SYNTAXES)
        ae.other_associations = server.lean.count
    if listen:
        threading.Thread(target=server.serve_forever, name=f"dimse-{s.dicom_port}", daemon=True).start()
    elif server.socket is not None:
        server.socket.close()
    ae._servers.append(server)  # as AE.start_server does: counted for maximum_associations, stopped by shutdown
    if listen:
        log.info("DIMSE %s listening on %s:%d%s", s.ae_title, s.dicom_host, s.dicom_port,
                 " (TLS)" if server.ssl_context else "")
    return DimseServer(ae, server, executor)
