"""Verification (C-ECHO, PS3.4 Annex A) and Storage (C-STORE, PS3.4 Annex B) SCP handlers.

C-STORE hands the Data Set to the one ingest path exactly as it arrived: pynetdicom's
``event.encoded_dataset()`` prefixes the received bytes with a zero preamble and a File Meta group built from
the request (PS3.10 7.1), nothing is decoded or re-encoded here. Success is answered only after
:func:`telerad.archive.ingest.store` has made the object durable; every failure carries its PS3.4 B.2.3
status and, where known, an Error Comment (0000,0902) with the reason (PS3.7 C.4.2.1.5).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from telerad.adapters.dimse.common import NOT_AUTHORISED, Runtime, status
from telerad.archive.errors import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from telerad.archive.ingest import store

log = logging.getLogger(__name__)


def handle_echo(event: Any, rt: Runtime) -> int:
    """C-ECHO (PS3.7 9.1.5): the association was admitted, so the peer is a known node of some site."""
    return 0x0000 if rt.site_of(event) is not None else NOT_AUTHORISED


def handle_store(event: Any, rt: Runtime) -> int | Dataset:
    """Store one instance into the site of the calling node (PS3.4 B.2.2, statuses PS3.4 B.2.3).

    Each outcome is counted for the association's audit records (:mod:`.audit`), kept in memory until the
    association ends.
    """
    site_id = rt.site_of(event)
    if site_id is None:
        return status(NOT_AUTHORISED, "calling AE title not recognised")
    calling = rt.calling_ae(event)
    result = None
    try:
        data = event.encoded_dataset()
        result = store(rt.ctx, site_id, data, source=calling)
    except (OSError, MemoryError) as exc:
        log.exception("C-STORE from %s failed", calling)
        rt.audit.stored(event.assoc, None, OUT_OF_RESOURCES)
        return status(OUT_OF_RESOURCES, f"storage failure: {exc}")
    except Exception as exc:  # never answer success for an object that was not stored
        log.exception("C-STORE from %s failed", calling)
        rt.audit.stored(event.assoc, None, CANNOT_UNDERSTAND)
        return status(CANNOT_UNDERSTAND, f"cannot process object: {exc}")
    rt.audit.stored(event.assoc, result, result.status or (0x0000 if result.ok else CANNOT_UNDERSTAND))
    if result.ok:  # one INFO line per study and association when it ends (:mod:`.audit`), not per object
        log.debug("C-STORE %s %s from %s: %s", result.sop_class_uid, result.sop_instance_uid, calling,
                  result.outcome.value)
        return 0x0000
    log.warning("C-STORE %s from %s refused 0x%04X: %s", result.sop_instance_uid, calling, result.status,
                result.reason)
    return status(result.status or CANNOT_UNDERSTAND, result.reason)
