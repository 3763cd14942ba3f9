"""Errors of the storage layer (backends, fetcher, cache)."""

from __future__ import annotations


class StorageError(OSError):
    """A read could not be served (backend down after retries, bad data, ...): the FUSE layer answers EIO."""


class BackendError(StorageError):
    """A backend request failed for good."""


class TemporaryBackendError(BackendError):
    """A backend request failed in a way worth retrying (connection, timeout, 5xx, 429, short body)."""


class WouldBlock(Exception):
    """A read asked not to wait (on the FUSE loop) needs the network or another thread's fetch."""
