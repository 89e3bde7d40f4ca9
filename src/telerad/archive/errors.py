"""Ingest failures, each with the DICOM status that reports it (PS3.4 Annex B.2.3, PS3.7 C.4.2.1.5).

STOW-RS reports the same codes in FailureReason (0008,1197) (PS3.18 Table I.2-3), so one code serves both
transports; adapters only map the code to their HTTP / DIMSE envelope.
"""

from __future__ import annotations

OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111  # Different bytes under an already stored SOP Instance UID


class RejectedObject(Exception):
    """An object that will not be stored; ``status`` is the DICOM failure code."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
