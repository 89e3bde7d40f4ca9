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
same instance. Otherwise, when both transfer syntaxes are among the lossless native ones above, or are the same
Little Endian one, both Data Sets are walked here, strictly, into trees of elements (tag, VR where written,
value bytes; sequences as items, encapsulated pixel data as fragments) and the trees compared: the same tags,
the same VR where both files write it, each value's bytes equal. Values are never decoded: text decoded under a
character set it does not follow compares equal when the bytes differ, numbers in strings beyond their
precision. What only encodes a Data Set is not compared: element headers, defined or undefined lengths, Group
Length elements, trailing padding. pydicom's reader is not used for this: it is lenient by design (it stops
quietly at a stray delimiter or before trailing bytes, keeps the last of a repeated tag), which here would
leave bytes uncompared. Anything the walk refuses (bytes outside any element, a tag twice in one Data Set, an
item or delimiter out of place, a length past its end, an unknown VR) and anything else (encapsulated pixel
data in two different transfer syntaxes, Big Endian, a private sequence written without its VR against one
with it) counts as different: when in doubt, a conflict, so that the first copy is kept and the sender is told.
"""

from __future__ import annotations

import logging
import struct
import zlib

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from telerad.archive.parse import file_meta_elements

log = logging.getLogger(__name__)

_TRANSFER_SYNTAX = 0x0010  # (0002,0010) Transfer Syntax UID
_NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 7.5
_TRAILING_PADDING, _PIXEL_DATA = 0xFFFCFFFC, 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64  # sequences in sequences: real objects nest a few levels; each level is a few stack frames
_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
                  "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US",
                  "UT", "UV"})  # PS3.5 6.2
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})  # 7.1.2
_TAG_LENGTH = struct.Struct("<HHI")
_SHORT_HEADER = struct.Struct("<HH2sH")

# An element: (tag, VR as written or None, value); a value: its bytes (a view of the file's), or a tuple of
# items, each a tuple of elements (a sequence) or the bytes of a fragment (encapsulated pixel data).
Element = tuple[int, str | None, "memoryview | tuple[tuple[Element, ...] | memoryview, ...]"]


def same_instance(kept: bytes, received: bytes) -> bool:
    """Whether the Part 10 files ``kept`` and ``received`` hold the same Data Set (their File Meta aside)."""
    try:
        kept_meta, received_meta = file_meta_elements(kept), file_meta_elements(received)
    except ValueError:
        return False
    kept_ts, received_ts = _uid(kept_meta.values), _uid(received_meta.values)
    if kept_ts == received_ts and kept[kept_meta.end:] == received[received_meta.end:]:
        return True
    if (kept_ts != received_ts and not {kept_ts, received_ts} <= _NATIVE) or _BIG_ENDIAN in (kept_ts, received_ts):
        return False
    try:
        return _same(_walk(kept[kept_meta.end:], kept_ts), _walk(received[received_meta.end:], received_ts))
    except Exception as exc:  # noqa: BLE001 - not walked (malformed, too deep, too large): not shown to be the
        log.debug("Data Sets not compared: %s", exc)  # same, so a conflict
        return False


def _uid(values: dict[int, bytes]) -> str:
    return values.get(_TRANSFER_SYNTAX, b"").decode("ascii", "replace").strip("\0 ")


def _walk(body: bytes, ts: str) -> tuple[Element, ...]:
    """The Data Set after the File Meta as a tree of elements; ValueError unless every byte belongs to it."""
    if ts == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5: raw deflate, then Explicit VR Little Endian
        stream = zlib.decompressobj(-zlib.MAX_WBITS)
        body = stream.decompress(body) + stream.flush()
        if not stream.eof or stream.unused_data not in (b"", b"\0"):  # a pad byte to an even length (A.5)
            raise ValueError("the deflated Data Set is cut short or followed by other bytes")
    implicit = ts == ImplicitVRLittleEndian
    if implicit and len(body) >= 6 and all(0x41 <= c <= 0x5A for c in body[4:6]):
        # pydicom reads such a Data Set as Explicit VR whatever the File Meta says (filereader._is_implicit_vr),
        # and what telerad indexed was read that way: walked as Implicit, it would be another Data Set
        raise ValueError("a Data Set said to be Implicit VR that pydicom reads as Explicit")
    elements, _ = _data_set(memoryview(body), 0, len(body), implicit, 0)
    return elements


def _data_set(buf: memoryview, pos: int, end: int | None, implicit: bool,
              depth: int) -> tuple[tuple[Element, ...], int]:
    """The elements from ``pos`` to ``end`` exactly, or (``end`` None: an item of undefined length) up to its
    Item Delimitation Item; and where they end. ``depth``: how many sequences it is nested in."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"sequences nested more than {_MAX_DEPTH} deep")
    elements: list[Element] = []
    seen: set[int] = set()
    limit = len(buf) if end is None else end
    while end is None or pos < end:
        tag, length = _tag_and_length(buf, pos, limit)
        group, number = tag >> 16, tag & 0xFFFF
        if tag == _ITEM_END and end is None:
            if length:
                raise ValueError(f"an Item Delimitation Item of length {length}")
            return tuple(elements), pos + 8
        if group == 0xFFFE or tag in seen:
            raise ValueError(f"({group:04X},{number:04X}) out of place or twice at byte {pos}")
        seen.add(tag)
        vr, length, pos = _header(buf, pos, implicit)
        _written_vr_fits(tag, vr, implicit)
        value, pos = _value(buf, pos, limit, tag, vr, length, implicit, depth)
        # Group Length (a UL) and the top level's trailing padding only encode the Data Set (PS3.5 7.2, PS3.10 7.2)
        padding = tag == _TRAILING_PADDING and depth == 0 and pos == end  # the last element only
        if not ((number == 0 and vr in (None, "UL") and length == 4) or padding):
            elements.append((tag, vr, value))
    return tuple(elements), pos


def _tag_and_length(buf: memoryview, pos: int, limit: int) -> tuple[int, int]:
    """The tag at ``pos`` and the 4-byte length after it (an Implicit VR header, an item's or a delimiter's)."""
    if pos + 8 > limit:
        raise ValueError(f"a header runs past the end at byte {pos}")
    group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
    return group << 16 | number, length


def _written_vr_fits(tag: int, vr: str | None, implicit: bool) -> None:
    """An Explicit VR element of a standard attribute must carry one of its VRs (or UN): compared with an
    Implicit VR file, which carries none, its bytes would otherwise be read as another attribute's."""
    if vr is None or vr == "UN" or tag >> 16 & 1 or not dictionary_has_tag(tag):
        return
    if vr not in dictionary_VR(tag).split(" or "):
        raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) written as {vr}, not as its dictionary says")


def _header(buf: memoryview, pos: int, implicit: bool) -> tuple[str | None, int, int]:
    if implicit:
        return None, _TAG_LENGTH.unpack_from(buf, pos)[2], pos + 8
    _, _, raw_vr, length = _SHORT_HEADER.unpack_from(buf, pos)
    vr = bytes(raw_vr).decode("latin-1")
    if vr not in _VRS:
        raise ValueError(f"unknown VR {vr!r} at byte {pos}")
    if vr in _LONG:
        if pos + 12 > len(buf):
            raise ValueError(f"an element header runs past the end at byte {pos}")
        return vr, struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
    return vr, length, pos + 8


def _value(buf: memoryview, pos: int, limit: int, tag: int, vr: str | None, length: int, implicit: bool,
           depth: int) -> tuple[memoryview | tuple[tuple[Element, ...] | memoryview, ...], int]:
    sequence = vr == "SQ" or (vr is None and dictionary_has_tag(tag) and dictionary_VR(tag) == "SQ")
    if length == _UNDEFINED:
        if vr in (None, "SQ", "UN") and not (vr is None and tag == _PIXEL_DATA):
            # a sequence (undefined length in Implicit VR is one; UN of undefined length: Implicit VR, 6.2.2)
            return _items(buf, pos, None, implicit or vr == "UN", False, depth)
        if vr in ("OB", "OW") and tag == _PIXEL_DATA:  # encapsulated pixel data (A.4)
            return _items(buf, pos, None, implicit, True, depth)
        raise ValueError(f"undefined length for ({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}")
    if pos + length > limit:
        raise ValueError(f"a value of {length} bytes runs past its end at byte {pos}")
    if sequence:
        return _items(buf, pos, pos + length, implicit, False, depth)
    return buf[pos:pos + length], pos + length


def _items(buf: memoryview, pos: int, end: int | None, implicit: bool, fragments: bool,
           depth: int) -> tuple[tuple[tuple[Element, ...] | memoryview, ...], int]:
    """Items from ``pos`` to ``end`` exactly, or (``end`` None) up to the Sequence Delimitation Item."""
    items: list[tuple[Element, ...] | memoryview] = []
    limit = len(buf) if end is None else end
    while end is None or pos < end:
        tag, length = _tag_and_length(buf, pos, limit)
        group, number = tag >> 16, tag & 0xFFFF
        pos += 8
        if tag == _SEQUENCE_END and end is None and length == 0:
            return tuple(items), pos
        if tag != _ITEM:
            raise ValueError(f"({group:04X},{number:04X}) where an item should be, at byte {pos - 8}")
        item: tuple[Element, ...] | memoryview
        if length == _UNDEFINED and not fragments:
            item, pos = _data_set(buf, pos, None, implicit, depth + 1)
        elif length == _UNDEFINED or pos + length > limit:
            raise ValueError(f"an item of length {length} at byte {pos - 8}")
        elif fragments:
            item, pos = buf[pos:pos + length], pos + length
        else:
            item, pos = _data_set(buf, pos, pos + length, implicit, depth + 1)
        items.append(item)
    return tuple(items), pos


def _same(a: tuple[Element, ...], b: tuple[Element, ...]) -> bool:
    """The same tags in order, the same VR where both are written, the same values (items compared alike)."""
    if len(a) != len(b):
        return False
    for (tag, vr, value), (other_tag, other_vr, other_value) in zip(a, b, strict=True):
        if tag != other_tag or (vr is not None and other_vr is not None and vr != other_vr):
            return False
        if isinstance(value, memoryview) or isinstance(other_value, memoryview):
            if value != other_value:
                return False
        elif len(value) != len(other_value) or not all(
                x == y if isinstance(x, memoryview) or isinstance(y, memoryview) else _same(x, y)
                for x, y in zip(value, other_value, strict=True)):
            return False
    return True
