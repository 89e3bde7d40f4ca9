"""Blob stores. Keys are opaque content hashes, never built from DICOM values or user input."""

from telerad.storage.filesystem import FileSystemStore

__all__ = ["FileSystemStore"]
