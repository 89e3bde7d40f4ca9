"""The Part 10 header of received C-STORE Data Sets (adapters/dimse/filemeta.py)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from telerad.adapters.dimse.filemeta import part10_header

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "9" * 38])
@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50",
                                             "1.2.840.10008.1.2.1.99"])
def test_the_same_bytes_as_pynetdicom_builds(instance: str, transfer_syntax: str) -> None:
    """Byte for byte what pynetdicom's path stores: a resend over the other path has the same hash."""
    theirs = encode_file_meta(create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(instance),
                                               transfer_syntax=UID(transfer_syntax)))
    assert part10_header(CT, instance, transfer_syntax) == b"\x00" * 128 + b"DICM" + theirs


@pytest.mark.parametrize("sent", [" 1.2.3", "1.2.3\t", "1.2.34\n", "1.2\x0b"])
def test_surrounding_whitespace_is_dropped_as_pydicom_does(sent: str) -> None:
    theirs = encode_file_meta(create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(sent),
                                               transfer_syntax=UID("1.2.840.10008.1.2.1")))
    assert part10_header(CT, sent, "1.2.840.10008.1.2.1") == b"\x00" * 128 + b"DICM" + theirs


@pytest.mark.parametrize("bad", ["1.2.\u00e9", "1." * 40000, "", " \t"])
def test_values_that_cannot_be_encoded_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        part10_header(CT, bad, "1.2.840.10008.1.2.1")
