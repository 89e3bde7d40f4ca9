"""An object's DICOM JSON (PS3.18 F.2) as pydicom writes it, with the conversion of repeated values cached.

Why: converting a CT header to DICOM JSON with :meth:`pydicom.dataset.Dataset.to_json_dict` took ~1 ms of
the ~2 ms of Python an ingested object costs, most of it in pydicom's element conversion (bytes to Python
values to JSON values), and that time is spent holding the GIL every concurrent association needs. The
slices of a series repeat almost every element byte for byte (patient, study, series, equipment, image
plane and pixel modules): only the SOP Instance UID, the Instance Number, the position and a few others
change. The JSON of an element is a function of its tag, VR, value bytes, byte order and the object's
Specific Character Set, so it is computed by pydicom once and looked up afterwards.

Output is exactly that of ``ds.to_json_dict(threshold, handler, suppress_invalid_tags=True)``:
``tests/archive/test_dicom_json.py`` compares the two on every file in pydicom's test data. Only elements
whose JSON cannot depend on anything else are cached: short values of a VR that is never sent as bulk data (a
BulkDataURI names the element's place in the object), written explicitly or, for implicit VR, the data
dictionary's VR of a public tag when that is unambiguous (not "US or SS", whose choice depends on Pixel
Representation; not private tags, whose VR depends on their private creator). Everything else (sequences,
binary VRs, ambiguous VRs, private tags without an explicit VR, long values, values already converted) goes
through pydicom as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.dataset import logger as pydicom_logger  # the logger pydicom's own to_json_dict warns on

# VRs whose JSON is a function of the value bytes alone (given byte order and character set); binary VRs
# (OB, OW, UN...) may become BulkDataURIs and SQ holds datasets, so they are not here.
CACHED_VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST",
    "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV",
})
MAX_CACHED_VALUE = 1024  # bytes; longer values (free text) rarely repeat
MAX_ENTRIES = 16384  # ~ a few MB; cleared when full (a new series refills it within one object)

_Key = tuple[int, str, bytes, bool, str]
_cache: dict[_Key, dict[str, Any]] = {}


def to_json_dict(ds: Dataset, bulk_data_threshold: int,
                 bulk_data_handler: Callable[[DataElement], str]) -> dict[str, Any]:
    """The DICOM JSON of ``ds``'s top level, elements that cannot be converted left out (and logged by
    pydicom), as ``Dataset.to_json_dict(..., suppress_invalid_tags=True)`` returns it.

    The element objects of the result may be shared with earlier results: read them, never change them.
    """
    charset = _charset(ds)
    out: dict[str, Any] = {}
    with config.strict_reading():  # a bad value raises, and the element is left out (as pydicom does)
        for tag in ds.keys():
            raw = ds.get_item(tag)
            key = _key(raw, charset) if isinstance(raw, RawDataElement) else None
            if key is not None:
                cached = _cache.get(key)
                if cached is not None:
                    out[f"{tag:08X}"] = cached
                    continue
            try:
                element = ds[tag].to_json_dict(bulk_data_handler, bulk_data_threshold)
            except Exception as exc:  # pydicom, with suppress_invalid_tags=True, logs and drops it the same way
                pydicom_logger.warning(f"Error while processing tag {tag:08X}: {exc}")
                continue
            out[f"{tag:08X}"] = element
            if key is not None:
                if len(_cache) >= MAX_ENTRIES:
                    _cache.clear()
                _cache[key] = element
    return out


def _key(raw: RawDataElement, charset: str) -> _Key | None:
    value = raw.value
    if not isinstance(value, bytes) or len(value) > MAX_CACHED_VALUE:
        return None
    tag = int(raw.tag)
    vr = raw.VR if raw.VR is not None else _dictionary_vr(tag)  # implicit VR: the data dictionary's (PS3.5 7.1.3)
    if vr not in CACHED_VRS:
        return None
    return (tag, vr, value, bool(raw.is_little_endian), charset)


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The VR of a public tag in the data dictionary (PS3.6), None for private, unknown or ambiguous ones
    (their VR depends on other elements: a private creator, Pixel Representation...)."""
    if (tag >> 16) % 2 or not dictionary_has_tag(tag):
        return None
    vr = dictionary_VR(tag)
    return vr if vr in CACHED_VRS else None


def _charset(ds: Dataset) -> str:
    """The Specific Character Set (0008,0005) as written, the part of the context text values depend on."""
    elem = ds.get_item(0x00080005)
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return "raw:" + value.decode("latin-1")
    return "value:" + repr(value)

