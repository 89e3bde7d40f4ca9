"""Send stored files byte for byte in the C-STORE sub-operations of C-GET and C-MOVE.

pynetdicom's Q/R SCPs only take :class:`~pydicom.dataset.Dataset` objects from a handler and encode them again
before sending, which loses what the sender put on the wire (group length elements, big endian values,
odd padding) and costs a decode/encode of every instance. ``Association.send_c_store`` itself can send a file
*path* raw, in PDU-sized chunks, when ``_config.STORE_SEND_CHUNKED_DATASET`` is set. So the handlers yield a
:class:`StoredFile` (a Dataset carrying the SOP UIDs, the stored transfer syntax and the blob path), and the
wrapper installed by :func:`install` hands pynetdicom the path instead. A sub-operation whose transfer syntax
the peer did not accept fails (no transcoding), as PS3.4 C.4.3.3.1 allows. The wrapper leaves the status
of the peer's C-STORE response on the :class:`StoredFile` (:func:`sent_status`) for the audit records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.association import Association

_installed = False


class StoredFile(Dataset):
    """Stands for a stored Part 10 file in a Q/R handler's yield; sent raw by the wrapped send_c_store."""

    def __init__(self, path: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = UID(sop_class_uid)
        self.SOPInstanceUID = UID(sop_instance_uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        self.file_meta = meta
        self.__dict__["stored_path"] = path


def sent_status(item: Dataset) -> int | None:
    """The Status of the peer's C-STORE response to ``item`` (None: not sent, or no response)."""
    value = item.__dict__.get("sent_status")
    return value if isinstance(value, int) else None


def install() -> None:
    """Wrap ``Association.send_c_store`` once per process (idempotent)."""
    global _installed
    if _installed:
        return
    original = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if not isinstance(dataset, StoredFile):
            return original(self, dataset, *args, **kwargs)
        rsp = original(self, dataset.__dict__["stored_path"], *args, **kwargs)
        code = getattr(rsp, "Status", None)
        if isinstance(code, int):
            dataset.__dict__["sent_status"] = code
        return rsp

    _config.STORE_SEND_CHUNKED_DATASET = True
    Association.send_c_store = send_c_store  # type: ignore[method-assign]
    _installed = True
