"""``lithops.storage.utils``: Lithops' cloud object reference and missing-key error."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import StorageError


class StorageNoSuchKeyError(StorageError):
    """No object at ``bucket``/``key`` (a :class:`cloudbutton.StorageError`)."""

    def __init__(self, bucket=None, key=None, message: str | None = None):
        self.bucket, self.key = bucket, key
        super().__init__(message or f"No such key /{bucket}/{key} found in storage.")


@dataclass(frozen=True)
class CloudObject:
    """Lithops' reference to an object: ``CloudObject(backend, bucket, key)``."""

    backend: str
    bucket: str
    key: str
