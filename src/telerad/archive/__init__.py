"""The image archive: ingest, index, query and retrieve."""
