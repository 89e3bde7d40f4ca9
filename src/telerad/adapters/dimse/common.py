"""What every DIMSE handler shares: the context, the tenant of its association and status datasets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from telerad.adapters.dimse import ul
from telerad.adapters.dimse.audit import DimseAudit, Peer
from telerad.adapters.dimse.auth import TenantAE, calling_ae_of
from telerad.context import Context

NOT_AUTHORISED = 0x0124  # PS3.7 C.5: Refused: not authorized (general status)


@dataclass
class Runtime:
    """Passed to every handler as its extra argument (pynetdicom ``evt_handlers`` args)."""

    ctx: Context
    ae: TenantAE
    executor: ThreadPoolExecutor
    audit: DimseAudit

    @property
    def ae_title(self) -> str:
        return self.ctx.settings.ae_title

    def site_of(self, event: Any) -> int | None:
        """The site the event's association was admitted for (see :mod:`.auth`)."""
        return self.ae.site_of(event.assoc)

    def calling_ae(self, event: Any) -> str:
        return calling_ae_of(event.assoc)

    def peer(self, event: Any) -> Peer:
        """The calling node of the event's association, as audit records name it."""
        return self.audit.peer(event.assoc)


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset; Error Comment (0000,0902) is LO, at most 64 characters (PS3.7 C.4.2.1.5)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = _lo(comment)
    return ds


def status_elements(code: int | Dataset) -> dict[int, int | str]:
    """A handler's status (a code, or a dataset from :func:`status`) as the Status (0000,0900) and Error Comment
    (0000,0902) elements of a response command set (PS3.7 9.1, C.4), for the lean path's encoder."""
    if not isinstance(code, Dataset):
        return {ul.STATUS: int(code)}
    elements: dict[int, int | str] = {ul.STATUS: int(code.Status)}
    comment = code.get("ErrorComment")
    if comment:
        elements[ul.ERROR_COMMENT] = str(comment)
    return elements


def _lo(text: str) -> str:
    text = "".join(c if 0x20 <= ord(c) < 0x7F and c != "\\" else " " for c in text).strip()
    return text[:64]
