"""``lithops.storage``: Lithops' ``Storage`` over cloudbutton's (fsspec) :class:`~cloudbutton.storage.Storage`.

``Storage(config=None, backend=None, storage_config=None)`` takes a Lithops config (see
:mod:`cloudbutton.lithops.config`); ``bucket`` is Lithops' ``storage_bucket`` and ``backend`` its
storage backend's name. Methods take ``bucket`` first, as Lithops' do.
"""

from __future__ import annotations

import os
import uuid

from ...storage import Storage as _Storage
from ...storage import StorageError, default_storage_url
from ..config import default_config, extract_storage_config, storage_settings, warn_ignored
from .utils import CloudObject, StorageNoSuchKeyError

__all__ = ["CloudObject", "Storage", "StorageNoSuchKeyError"]


def _file_storage_url() -> str:
    """Where ``localhost`` storage keeps objects: the configured storage URL if it is local, else the default."""
    url = default_storage_url()
    if url.startswith("file://") or "://" not in url:
        return url
    return "file://" + os.path.join(os.path.expanduser("~"), ".cache", "cloudbutton", "storage")


def _missing(error: StorageError, bucket, key) -> StorageError:
    if isinstance(error.__cause__, FileNotFoundError):
        return StorageNoSuchKeyError(bucket, key, str(error))
    return error


class Storage(_Storage):
    def __init__(self, config: dict | None = None, backend: str | None = None, storage_config: dict | None = None):
        if storage_config is None:
            storage_config = extract_storage_config(default_config(config_data=config))
        if backend is not None and backend != storage_config.get("backend"):
            storage_config = {"backend": backend, backend: dict((config or {}).get(backend) or {})}
        settings = storage_settings(storage_config)
        warn_ignored(settings.ignored)
        os.environ.update(settings.env)  # credentials the AWS way, for this process and its workers
        self.backend = settings.backend
        self._buckets_are_root = settings.url is not None  # s3: a bucket is a bucket, not a folder
        super().__init__(settings.url or _file_storage_url(), bucket=settings.bucket, **settings.options)

    def _base(self, bucket: str | None) -> str:
        if self._buckets_are_root:
            return (bucket or self.bucket).strip("/")
        return super()._base(bucket)

    def get_storage_config(self) -> dict:
        return {"backend": self.backend, self.backend: {"storage_bucket": self.bucket}}

    def get_client(self):
        """The fsspec filesystem (Lithops returns its provider's client)."""
        return self.fs

    def get_object(self, bucket, key, stream=False, extra_get_args=None):
        try:
            return super().get_object(key, stream=stream, extra_get_args=extra_get_args, bucket=bucket)
        except StorageError as e:
            raise _missing(e, bucket, key) from e.__cause__

    def head_object(self, bucket, key) -> dict:
        try:
            return super().head_object(key, bucket=bucket)
        except StorageError as e:
            raise _missing(e, bucket, key) from e.__cause__

    def head_bucket(self, bucket=None) -> dict:
        try:
            return super().head_bucket(bucket)
        except StorageError as e:
            raise _missing(e, bucket, None) from e.__cause__

    def put_object(self, bucket, key, body) -> None:
        super().put_object(key, body, bucket=bucket)

    def delete_object(self, bucket, key) -> None:
        super().delete_object(key, bucket=bucket)

    def delete_objects(self, bucket, key_list) -> None:
        super().delete_objects(key_list, bucket=bucket)

    def list_objects(self, bucket=None, prefix=None, match_pattern=None) -> list[dict]:
        return super().list_objects(prefix or "", bucket=bucket)

    def list_keys(self, bucket=None, prefix=None) -> list[str]:
        return [o["Key"] for o in super().list_objects(prefix or "", bucket=bucket)]

    def put_cloudobject(self, body, bucket=None, key=None) -> CloudObject:
        bucket, key = bucket or self.bucket, key or f"{self.cloudobject_prefix}/{uuid.uuid4().hex}"
        self.put_object(bucket, key, body)
        return CloudObject(self.backend, bucket, key)

    def get_cloudobject(self, cloudobject, stream=False):
        if isinstance(cloudobject, CloudObject):
            return self.get_object(cloudobject.bucket, cloudobject.key, stream=stream)
        return super().get_cloudobject(cloudobject, stream)

    def delete_cloudobject(self, cloudobject) -> None:
        if isinstance(cloudobject, CloudObject):
            return self.delete_object(cloudobject.bucket, cloudobject.key)
        return super().delete_cloudobject(cloudobject)
