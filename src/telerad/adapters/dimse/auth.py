"""Association acceptance: which node is calling, and the tenant each association belongs to.

PS3.8 7.1.1 / 9.3.4: an acceptor may reject an A-ASSOCIATE-RQ with result 1 (rejected-permanent), source 1
(DICOM UL service-user) and diagnostic 3 (calling-AE-title-not-recognized). A calling AE title is accepted
only when :func:`registry.admit_calling_ae` admits it: a registered node connecting with its registered
client certificate (PS3.15 B.9) or, without one, from an address of its registered host; or, when a site
opted in for demo use, an unregistered AE connecting from a loopback address. Every refusal is audited once
per association as a node authentication failure (PS3.15 A.5.3.14 Security Alert, ``Action.NODE_REJECTED``).

pynetdicom's ACSE (``acse.py`` ``_negotiate_as_acceptor``) rejects with exactly (1, 1, 3) when
``assoc.ae.require_calling_aet`` is non-empty and does not contain the calling AE title. That check runs in
the association's own thread (``Association.run`` -> ``run_reactor`` -> ``negotiate_association``), so
:class:`TenantAE` answers the property per association by looking at ``threading.current_thread()``.
The admission is decided once, cached for the association's lifetime and used by every handler: a node sees
only its own site's data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from telerad.archive import registry
from telerad.context import Context
from telerad.security.audit import MINOR_FAILURE, Action, Event

log = logging.getLogger(__name__)

# Longer than any AE title (PS3.5 AE: 16 characters), so it never equals a calling AE title.
_NOBODY = "\x00telerad-not-recognised"
# PS3.8 Table 9-10: the states in which an A-ABORT request (Evt15) is defined. In Sta2 (no A-ASSOCIATE-RQ
# yet) and Sta13 (rejected or released, awaiting the transport close) the only thing left is to close it.
_ABORTABLE_STATES = frozenset(f"Sta{n}" for n in range(3, 13))


def calling_ae_of(assoc: Any) -> str:
    """The Calling AE Title of the A-ASSOCIATE-RQ (PS3.8 9.3.2), without padding."""
    lean = getattr(assoc, "calling_ae_title", None)  # a :class:`.lean.LeanAssociation`
    if isinstance(lean, str):
        return lean
    primitive = assoc.requestor.primitive
    return str((primitive.calling_ae_title if primitive else "") or assoc.requestor.ae_title or "").strip()


def peer_address(assoc: Any) -> str:
    """The peer's IP address as the listener saw it."""
    lean = getattr(assoc, "peer_ip", None)  # a :class:`.lean.LeanAssociation`
    if isinstance(lean, str):
        return lean
    return str(assoc.requestor.address or "")


def tls_socket(assoc: Any) -> ssl.SSLSocket | None:
    """The association's TLS socket, or None over plain TCP.

    The listener wraps each accepted socket before pynetdicom sees it (:mod:`.server`), so the association's
    transport socket (``assoc.dul.socket.socket``) is the :class:`ssl.SSLSocket` itself.
    """
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return sock if isinstance(sock, ssl.SSLSocket) else None


def peer_certificate(assoc: Any) -> bytes | None:
    """The DER client certificate of a TLS association (None over plain TCP or when the client sent none)."""
    sock = tls_socket(assoc)
    if sock is None:
        return None
    try:
        return sock.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None


class TenantAE(AE):
    """An AE whose calling-AE-title check consults the node registry for each association."""

    def __init__(self, ctx: Context, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self._ctx = ctx
        self._admissions: weakref.WeakKeyDictionary[Association, registry.Admission] = weakref.WeakKeyDictionary()
        self._admissions_lock = threading.Lock()
        # Associations served outside pynetdicom (:mod:`.lean`) hold slots of the same limit.
        self.other_associations: Callable[[], int] = lambda: 0

    @property
    def association_limit(self) -> int:
        """``dimse_max_associations``: acceptor associations on both paths together."""
        return self._maximum_associations

    # pynetdicom compares its own acceptor associations with this (PS3.8 9.3.4, A-ASSOCIATE-RJ 2/3/2); the lean
    # path's associations are taken off here, so that both paths share one limit.
    @property  # type: ignore[override]
    def maximum_associations(self) -> int:
        return max(self._maximum_associations - self.other_associations(), 0)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)  # type: ignore[attr-defined]

    # pynetdicom reads this property during A-ASSOCIATE-RQ negotiation (PS3.8 9.3.4) in the association thread.
    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        assoc = threading.current_thread()
        if not isinstance(assoc, Association) or not assoc.is_acceptor:
            return list(self._require_calling_aet)
        calling = (assoc.requestor.ae_title or "").strip()
        return [calling] if self.site_of(assoc) is not None else [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:  # pragma: no cover - kept for API parity
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """Stop the listeners and end every association (``AE.shutdown``), without A-ABORT requests where
        PS3.8 defines none: a connection that never associated, or an association already rejected (for
        instance by :meth:`admission_of`), has its transport connection closed instead."""
        for server in self._servers[:]:
            server.shutdown()
        self._servers = []
        for assoc in self.active_associations:
            if assoc.dul.state_machine.current_state in _ABORTABLE_STATES:
                assoc.abort()
                continue
            sock = getattr(assoc.dul.socket, "socket", None)
            if sock is not None:  # the DUL reads end-of-stream: Evt17, back to Sta1
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def site_of(self, assoc: Any) -> int | None:
        """The site (tenant) id of an acceptor association, or None when it is not admitted."""
        admission = self.admission_of(assoc)
        return admission.site_id if admission.admitted else None

    def admission_of(self, assoc: Any) -> registry.Admission:
        """The registry's verdict on an acceptor association, decided (and a refusal audited) once."""
        with self._admissions_lock:
            cached = self._admissions.get(assoc)
        if cached is not None:
            return cached
        calling, address = calling_ae_of(assoc), peer_address(assoc)
        certificate = peer_certificate(assoc)
        tls = tls_socket(assoc) is not None
        try:
            admission = (registry.admit_calling_ae(self._ctx, calling, address, certificate) if calling
                         else registry.Admission(None, reason="no calling AE title"))
        except Exception:  # the registry is unavailable: refuse rather than guess a tenant
            log.exception("cannot resolve calling AE %r", calling)
            admission = registry.Admission(None, reason="node registry unavailable")
        with self._admissions_lock:
            first = self._admissions.setdefault(assoc, admission)
        if first is not admission:
            return first
        if admission.admitted:
            log.debug("association from %r at %s admitted for site %s (by %s)", calling, address,
                      admission.site_code, admission.bound_by)
        else:
            log.warning("rejecting association from %r at %s: %s", calling, address, admission.reason)
            self._audit_rejection(calling, address, tls, certificate, admission)
        return first

    def _audit_rejection(self, calling: str, address: str, tls: bool, certificate: bytes | None,
                         admission: registry.Admission) -> None:
        """PS3.15 A.5.3.14 Security Alert, node authentication failure, durable before the A-ASSOCIATE-RJ."""
        details: dict[str, Any] = {"reason": admission.reason, "called_ae": self.ae_title, "tls": tls}
        if certificate is not None:
            details["certificate_sha256"] = hashlib.sha256(certificate).hexdigest()
        try:
            self._ctx.audit.record(Event(Action.NODE_REJECTED, outcome=MINOR_FAILURE, actor_type="node",
                                         actor=calling, source=address, site_id=admission.site_id,
                                         site_code=admission.site_code, details=details), wait=True)
        except Exception:  # the refusal stands even when it cannot be recorded
            log.exception("cannot audit the rejection of %r at %s", calling, address)
