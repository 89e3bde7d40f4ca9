"""Whether a received object is the instance already stored under its SOP Instance UID.

Ingest calls this only when the index holds the UID with a blob of other bytes (issue #2 section 3: same bytes
are a duplicate, different bytes a conflict). The bytes of a Part 10 file are more than the instance: its File
Meta Information (PS3.10 7.1) is written by whoever wrote the file (Implementation Class UID and Version Name,
Source AE Title, private meta elements), so the same instance received by C-STORE (telerad writes the meta) and
then imported or sent by STOW-RS from the sender's own file differs in group 0002 alone. And a sender may
encode the same Data Set in another uncompressed transfer syntax than the first (Implicit or Explicit VR Little
Endian, Deflate: PS3.5 A.1-A.5), which changes the bytes but not one attribute. Both are the same instance and
are answered as a duplicate, not as a conflict.

Compared: the Data Sets, never the File Meta. Identical Data Set bytes under the same transfer syntax are the
same instance; otherwise, when both transfer syntaxes are among the lossless native ones above (or are the same
one), the decoded Data Sets are compared attribute by attribute (pydicom's ``Dataset.__eq__``: tag, VR and
value), leaving out what only encodes them (Group Length elements, trailing padding). Encapsulated pixel data
in two different transfer syntaxes are not decoded and count as different, as does anything that cannot be
read: when in doubt, a conflict, so that the first copy is kept and the sender is told.
"""

from __future__ import annotations

import logging
from io import BytesIO

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from telerad.archive.parse import file_meta_elements

log = logging.getLogger(__name__)

_TRANSFER_SYNTAX = 0x0010  # (0002,0010) Transfer Syntax UID
_TRAILING_PADDING = 0xFFFCFFFC
_NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})


def same_instance(kept: bytes, received: bytes) -> bool:
    """Whether the Part 10 files ``kept`` and ``received`` hold the same Data Set (their File Meta aside)."""
    try:
        kept_meta, received_meta = file_meta_elements(kept), file_meta_elements(received)
    except ValueError:
        return False
    kept_ts, received_ts = _uid(kept_meta.values), _uid(received_meta.values)
    if kept_ts == received_ts and kept[kept_meta.end:] == received[received_meta.end:]:
        return True
    if kept_ts != received_ts and not {kept_ts, received_ts} <= _NATIVE:
        return False
    try:
        return bool(_decoded(kept) == _decoded(received))
    except Exception:  # noqa: BLE001 - unreadable either way: not shown to be the same, so a conflict
        log.debug("Data Sets not compared", exc_info=True)
        return False


def _uid(values: dict[int, bytes]) -> str:
    return values.get(_TRANSFER_SYNTAX, b"").decode("ascii", "replace").strip("\0 ")


def _decoded(part10: bytes) -> pydicom.Dataset:
    ds = pydicom.dcmread(BytesIO(part10))
    ds.decode()  # every value as its VR says, so that equal values compare equal whatever their encoding
    # Encoding artefacts, not attributes: Group Length (gggg,0000), retired outside group 0002 (PS3.5 7.2),
    # which writers add or leave out, and Data Set Trailing Padding (PS3.10 7.2).
    for tag in [t for t in ds.keys() if t.element == 0 or t == _TRAILING_PADDING]:
        del ds[tag]
    return ds
