"""C-FIND SCP on the lean path (PS3.4 C.4.1; Patient Root and Study Root, PS3.4 C.6.1.1.2, C.6.2.1.2).

The query is :func:`.find.handle_find`, the same generator the pynetdicom path runs: the same matching, the
same calling-node site scope, the same response Identifiers and the same audit record. This module only
carries it over the lean association: the Identifier of the C-FIND-RQ is decoded in the context's transfer
syntax (Implicit or Explicit VR Little Endian, :data:`.lean.COMMAND_SYNTAXES`), each match goes out as a
Pending C-FIND-RSP with its Identifier (PS3.7 9.1.2.1.6), and the final response is Success, Cancel (0xFE00)
or the failure the handler gave. A C-CANCEL-RQ (PS3.7 9.3.2.3) is looked for between matches without
waiting: what else arrives meanwhile stays queued, in order, for the association.

Why: pynetdicom polls its sockets and queues (1 ms and 0.1 ms sleeps in two threads per association); a
one-match C-FIND from DCMTK ``findscu`` took ~72 ms against Orthanc's ~51 ms on the bench VM, most of the
difference being pynetdicom's association set-up and reactor.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from telerad.adapters.dimse.common import status, status_elements
from telerad.adapters.dimse.find import (
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    PENDING_WARNING,
    UNABLE_TO_PROCESS,
    handle_find,
)

if TYPE_CHECKING:
    from telerad.adapters.dimse.lean import LeanAssociation, Message

log = logging.getLogger(__name__)

C_FIND_RQ = 0x0020


class _Request:
    def __init__(self, sop_class: str) -> None:
        self.AffectedSOPClassUID = sop_class


class LeanFindEvent:
    """What :func:`.find.handle_find` reads from a pynetdicom ``EVT_C_FIND`` event."""

    def __init__(self, assoc: LeanAssociation, sop_class: str, message_id: int, identifier: Dataset) -> None:
        self.assoc = assoc
        self.request = _Request(sop_class)
        self.identifier = identifier
        self._message_id = message_id

    @property
    def is_cancelled(self) -> bool:
        return self.assoc.cancel_requested(self._message_id)


def serve_find(assoc: LeanAssociation, message: Message, message_id: int, model: str, ts: str) -> None:
    """Answer one C-FIND-RQ: Pending responses, then the final one (PS3.4 C.4.1.1.4)."""
    little_implicit = ts == ImplicitVRLittleEndian

    def respond(code: int | Dataset, data_set: bytes | None = None) -> None:
        assoc.respond(message.context_id, C_FIND_RQ, message_id, status_elements(code), sop_class=model,
                      data_set=data_set)

    try:
        identifier = decode(BytesIO(b"".join(message.parts or [])), little_implicit, True)
    except Exception as exc:
        respond(status(IDENTIFIER_DOES_NOT_MATCH, f"cannot decode the Identifier: {exc}"))
        return
    answers = handle_find(LeanFindEvent(assoc, model, message_id, identifier), assoc.rt)
    try:
        for code, found in answers:
            if isinstance(code, Dataset) or code not in (PENDING, PENDING_WARNING):
                respond(code)  # a failure or Cancel is the final response
                return
            encoded = _encode(found, little_implicit)
            if encoded is None:
                respond(status(UNABLE_TO_PROCESS, "cannot encode a matching Identifier"))
                return
            respond(code, data_set=encoded)
        respond(0x0000)
    finally:
        answers.close()  # the handler's audit record is written when it ends, however it ends


def _encode(identifier: Dataset | None, little_implicit: bool) -> bytes | None:
    if identifier is None:
        return None
    try:
        encoded = encode(identifier, little_implicit, True)
    except Exception:
        log.exception("cannot encode a C-FIND response Identifier")
        return None
    return bytes(encoded) if encoded is not None else None
