"""Association acceptance by calling AE title, and the tenant each association belongs to.

PS3.8 7.1.1 / 9.3.4: an acceptor may reject an A-ASSOCIATE-RQ with result 1 (rejected-permanent), source 1
(DICOM UL service-user) and diagnostic 3 (calling-AE-title-not-recognized). telerad accepts a calling AE
title only when it is a registered node (the node's site is the tenant) or, when a site opted in for demo
use, an unregistered AE connecting from a loopback address (see :func:`registry.resolve_calling_ae`).

pynetdicom's ACSE (``acse.py`` ``_negotiate_as_acceptor``) rejects with exactly (1, 1, 3) when
``assoc.ae.require_calling_aet`` is non-empty and does not contain the calling AE title. That check runs in
the association's own thread (``Association.run`` -> ``run_reactor`` -> ``negotiate_association``), so
:class:`TenantAE` answers the property per association by looking at ``threading.current_thread()``.
The site is resolved once, cached for the association's lifetime and used by every handler: a node sees
only its own site's data.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from telerad.archive import registry
from telerad.context import Context

log = logging.getLogger(__name__)

# Longer than any AE title (PS3.5 AE: 16 characters), so it never equals a calling AE title.
_NOBODY = "\x00telerad-not-recognised"


class TenantAE(AE):
    """An AE whose calling-AE-title check consults the node registry for each association."""

    def __init__(self, ctx: Context, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self._ctx = ctx
        self._sites: weakref.WeakKeyDictionary[Association, int | None] = weakref.WeakKeyDictionary()
        self._sites_lock = threading.Lock()

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

    def site_of(self, assoc: Any) -> int | None:
        """The site (tenant) id of an acceptor association, resolved once from its calling AE title and address."""
        with self._sites_lock:
            if assoc in self._sites:
                return self._sites[assoc]
        calling = (assoc.requestor.primitive.calling_ae_title if assoc.requestor.primitive else "") or ""
        calling = calling.strip()
        address = str(assoc.requestor.address or "")
        try:
            site_id = registry.resolve_calling_ae(self._ctx, calling, address) if calling else None
        except Exception:  # the registry is unavailable: refuse rather than guess a tenant
            log.exception("cannot resolve calling AE %r", calling)
            site_id = None
        if site_id is None:
            log.warning("rejecting association from %r at %s: calling AE title not recognised", calling, address)
        with self._sites_lock:
            self._sites[assoc] = site_id
        return site_id
