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
same instance. Otherwise, when both transfer syntaxes are among the lossless native ones above (or are the same
one), the Data Sets are read (Deflate inflated; every byte must belong to an element) and compared element
by element on the *encoded values*: the same tags in the same order, the same VR where both files write it,
each value's bytes equal (the element headers, which Implicit and Explicit VR write differently, aside),
sequences item by item. Values are never decoded: text decoded under a character set it
does not follow would compare equal when the bytes differ (pydicom replaces what it cannot decode), and
numbers in strings would compare equal beyond their precision ("0" and "-0"). Group Length elements and trailing
padding, which writers add or leave out, are not compared. Anything else (encapsulated pixel data in two
different transfer syntaxes, Big Endian against Little, a private sequence read without its VR, a file that
cannot be read) counts as different: when in doubt, a conflict, so that the first copy is kept and the sender
is told, as for a Data Set with a tag twice or bytes after its last element.
"""

from __future__ import annotations

import logging
import zlib
from io import BytesIO

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

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
        return _same_elements(_read(kept), _read(received))
    except Exception:  # noqa: BLE001 - unreadable either way: not shown to be the same, so a conflict
        log.debug("Data Sets not compared", exc_info=True)
        return False


def _uid(values: dict[int, bytes]) -> str:
    return values.get(_TRANSFER_SYNTAX, b"").decode("ascii", "replace").strip("\0 ")


def _read(part10: bytes) -> Dataset:
    """The Data Set, its elements as read (raw). ValueError unless every byte after the File Meta belongs to
    one element, and each tag comes once: pydicom stops quietly at a stray delimiter or before trailing bytes,
    and keeps the last of a repeated tag, which would leave bytes uncompared."""
    meta = file_meta_elements(part10)
    ts = _uid(meta.values)
    body = part10[meta.end:]
    if ts == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5: raw deflate, then Explicit VR Little Endian
        stream = zlib.decompressobj(-zlib.MAX_WBITS)
        body = stream.decompress(body) + stream.flush()
        if not stream.eof or stream.unused_data not in (b"", b"\0"):  # a pad byte to an even length (A.5)
            raise ValueError("the deflated Data Set is cut short or followed by other bytes")
        ts = ExplicitVRLittleEndian
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    fp = BytesIO(body)
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    end = 0
    for element in data_element_generator(fp, implicit, little):
        if element.tag in elements:
            raise ValueError(f"{element.tag} comes twice")
        elements[element.tag] = element
        end = fp.tell()
    if end != len(body):
        raise ValueError(f"the Data Set's elements end at byte {end} of {len(body)}")
    ds = Dataset(elements)
    ds.set_original_encoding(implicit, little)
    return ds


def _same_elements(a: Dataset, b: Dataset) -> bool:
    tags = [t for t in a.keys() if not _artefact(t)]
    if tags != [t for t in b.keys() if not _artefact(t)]:
        return False
    for tag in tags:
        x, y = a.get_item(tag), b.get_item(tag)  # as read: raw, not converted
        if x.VR and y.VR and x.VR != y.VR:  # both written with their VR (Explicit VR): the same bytes as US and
            return False  # as SS, FL and UL, LO and LT are other values; only Implicit VR leaves it out
        if _is_sequence(x) or _is_sequence(y):
            items, others = a[tag].value, b[tag].value  # parsed into items, whose elements stay raw
            if not (isinstance(items, Sequence) and isinstance(others, Sequence)) or len(items) != len(others):
                return False
            if not all(_same_elements(i, j) for i, j in zip(items, others, strict=True)):
                return False
        elif _encoded(x) != _encoded(y):
            return False
    return True


def _artefact(tag: BaseTag) -> bool:
    """Group Length (gggg,0000), retired outside group 0002 (PS3.5 7.2), and Data Set Trailing Padding."""
    return tag.element == 0 or tag == _TRAILING_PADDING


def _is_sequence(element: DataElement | RawDataElement) -> bool:
    vr = element.VR
    if not vr and dictionary_has_tag(element.tag):  # Implicit VR: the dictionary's
        vr = dictionary_VR(element.tag)
    return vr == "SQ" or isinstance(element.value, Sequence)


def _encoded(element: DataElement | RawDataElement) -> object:
    """The value's bytes as encoded (an empty value: no bytes); an element pydicom converted while reading
    (Specific Character Set; empty values in Implicit VR), its value, marked so that it never equals raw bytes."""
    if isinstance(element, RawDataElement):
        return element.value or b""
    if element.is_empty:
        return b""
    return ("converted", element.value)
