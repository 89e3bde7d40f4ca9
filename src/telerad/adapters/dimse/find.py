"""Query/Retrieve FIND SCP (PS3.4 C.4.1), Patient Root and Study Root information models (PS3.4 C.6.1, C.6.2).

The Identifier is turned into matching keys (PS3.4 C.2.2.2) for the shared matcher
:func:`telerad.archive.query.search`, which QIDO-RS also uses, scoped to the calling node's site. Each match
is answered with a Pending response whose Identifier holds exactly the requested keys (PS3.4 C.4.1.1.3.2:
values of the match, zero length when unknown), plus Query/Retrieve Level and Retrieve AE Title (PS3.4
C.4.1.1.3.2, C.6.1.1.5). Queries are relational (PS3.4 C.4.1.2.2): keys of higher levels may be used at any
level of either model. A C-CANCEL ends the query with status Cancel (PS3.4 C.4.1.2.3).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from telerad.adapters.dimse.audit import Peer
from telerad.adapters.dimse.common import NOT_AUTHORISED, Runtime, status
from telerad.archive.query import QueryError, search, supported_keys
from telerad.security.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, Action, Event

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
PATIENT_ROOT_PREFIX = "1.2.840.10008.5.1.4.1.2.1."
STUDY_ROOT_PREFIX = "1.2.840.10008.5.1.4.1.2.2."

IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4: Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.1.1.4: Unable to process (C000-CFFF)
CANCEL = 0xFE00
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # PS3.4 C.4.1.1.4: one or more Optional Keys were not supported

QUERY_LEVEL = 0x00080052
CHARSET = 0x00080005
RETRIEVE_AET = 0x00080054
STUDY_UID = "0020000D"
PATIENT_ID = "00100020"
QUERY_TEXT_MAX = 8000
_NOT_KEYS = {QUERY_LEVEL, CHARSET, RETRIEVE_AET}
PAGE = 500
_TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "PN", "UC"}  # VRs affected by Specific Character Set (PS3.5 6.1.2.3)

MODEL_LEVELS = {"PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"), "STUDY": ("STUDY", "SERIES", "IMAGE")}


class IdentifierError(ValueError):
    """The Identifier cannot be used with this SOP Class (status 0xA900)."""


def model_of(sop_class_uid: str) -> str:
    """``"PATIENT"`` or ``"STUDY"`` root from a Q/R FIND, MOVE or GET SOP Class UID (PS3.4 C.6)."""
    return "STUDY" if str(sop_class_uid).startswith(STUDY_ROOT_PREFIX) else "PATIENT"


def element_value(elem: DataElement) -> str:
    """The matching value of an Identifier element as a C-FIND string (multiple values joined by ``\\``)."""
    if elem.VR == "SQ" or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        return ""
    return str(value)


def parse_identifier(identifier: Dataset, model: str) -> tuple[str, dict[str, str], list[DataElement]]:
    """Query/Retrieve Level, matching keys by DICOM JSON tag and the requested elements of an Identifier."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in MODEL_LEVELS[model]:
        raise IdentifierError(f"Query/Retrieve Level {level or '(none)'} is not one of the "
                              f"{model.lower()} root levels {', '.join(MODEL_LEVELS[model])}")
    keys: dict[str, str] = {}
    requested: list[DataElement] = []
    for elem in identifier:
        if elem.tag in _NOT_KEYS or elem.tag.group == 0x0002:
            continue
        requested.append(elem)
        if not elem.tag.is_private:
            keys[f"{int(elem.tag):08X}"] = element_value(elem)
    return level, keys, requested


@dataclass
class _QueryRecord:
    """What the audit record of one C-FIND says (PS3.15 A.5.3.13 Query)."""

    sop_class_uid: str
    level: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    returned: int = 0
    status: int | None = None  # None: the association ended before the final response

    def event(self, peer: Peer, identifier: Any) -> Event:
        details: dict[str, Any] = {"service": "C-FIND", "sop_class_uid": self.sop_class_uid, "level": self.level,
                                   "keys": {k: v for k, v in self.keys.items() if v.strip()},
                                   "returned": self.returned,
                                   "status": "incomplete" if self.status is None else f"{self.status:04X}"}
        try:
            details["query"] = identifier.to_json()[:QUERY_TEXT_MAX]  # the Identifier as DICOM JSON (PS3.18 F.2)
        except Exception:
            log.debug("cannot convert a C-FIND identifier to JSON", exc_info=True)
        if self.status in (0x0000, CANCEL):
            outcome = SUCCESS
        else:
            outcome = SERIOUS_FAILURE if self.status is not None and self.status >= UNABLE_TO_PROCESS else MINOR_FAILURE
        event = peer.event(Action.QUERY, outcome, single_value(self.keys.get(STUDY_UID, "")), **details)
        event.patient_id = single_value(self.keys.get(PATIENT_ID, ""))
        return event


def single_value(value: str) -> str:
    """``value`` when it names exactly one entity (no wild card, no list, PS3.4 C.2.2.2), else ""."""
    value = value.strip()
    return "" if not value or any(c in value for c in "*?\\") else value[:64]


def handle_find(event: Any, rt: Runtime) -> Generator[tuple[int | Dataset, Dataset | None], None, None]:
    """C-FIND SCP: yield (Pending, Identifier) per match, then the final status (PS3.4 C.4.1.1.4).

    Each C-FIND of an admitted node is audited when it ends, whatever its outcome (PS3.15 A.5.3.13).
    """
    site_id = rt.site_of(event)
    if site_id is None:
        yield status(NOT_AUTHORISED, "calling AE title not recognised"), None
        return
    record = _QueryRecord(str(event.request.AffectedSOPClassUID))
    try:
        yield from _find(event, rt, site_id, record)
    finally:
        rt.audit.record(record.event(rt.peer(event), event.identifier))


def _find(event: Any, rt: Runtime, site_id: int, record: _QueryRecord) -> Iterator[tuple[int | Dataset,
                                                                                           Dataset | None]]:
    model = model_of(record.sop_class_uid)
    try:
        level, keys, requested = parse_identifier(event.identifier, model)
        record.level, record.keys = level, keys
        unsupported = any(v.strip() not in ("", "*") and k not in supported_keys(level) for k, v in keys.items())
    except (IdentifierError, QueryError) as exc:
        record.status = IDENTIFIER_DOES_NOT_MATCH
        yield status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    except Exception as exc:
        log.exception("undecodable C-FIND identifier")
        record.status = IDENTIFIER_DOES_NOT_MATCH
        yield status(IDENTIFIER_DOES_NOT_MATCH, f"cannot decode identifier: {exc}"), None
        return
    pending = PENDING_WARNING if unsupported else PENDING
    offset = 0
    while True:
        try:
            rows = search(rt.ctx, site_id, level, keys, limit=PAGE, offset=offset)
        except QueryError as exc:
            record.status = IDENTIFIER_DOES_NOT_MATCH
            yield status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except Exception as exc:
            log.exception("C-FIND failed")
            record.status = UNABLE_TO_PROCESS
            yield status(UNABLE_TO_PROCESS, f"query failed: {exc}"), None
            return
        for row in rows:
            if event.is_cancelled:
                record.status = CANCEL
                yield CANCEL, None
                return
            record.returned += 1
            yield pending, response(row, requested, level, rt.ae_title)
        if len(rows) < PAGE:
            record.status = 0x0000  # pynetdicom sends the final Success response
            return
        offset += PAGE


def response(row: dict[str, Any], requested: list[DataElement], level: str, ae_title: str) -> Dataset:
    """The C-FIND response Identifier: every requested key, valued from ``row`` (DICOM JSON) when known."""
    ds = Dataset()
    for elem in requested:
        ds.add(_from_row(row, elem))
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    if any(e.VR in _TEXT_VRS and e.value is not None and not str(e.value).isascii() for e in ds):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.3 C.12.1.1.2) when a value needs it
    return ds


def _from_row(row: dict[str, Any], elem: DataElement) -> DataElement:
    tag = f"{int(elem.tag):08X}"
    value = row.get(tag)
    if isinstance(value, dict) and "BulkDataURI" not in value and "InlineBinary" not in value:
        try:
            return Dataset.from_json({tag: value})[elem.tag]
        except Exception:  # an unconvertible stored value is returned as unknown, not as an error
            log.debug("cannot convert %s %r", tag, value, exc_info=True)
    return DataElement(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)
