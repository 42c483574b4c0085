"""Storage: a small Lithops-style facade over fsspec (never a hand-written client).

Storage is bucket-less: keys are paths under the storage URL (``file://`` directory by default,
``memory://``, ``s3://bucket/prefix`` via s3fs, ...). Where the Lithops API takes a ``bucket``, it
is accepted and means a sub-folder of the storage URL, so ``put_object(bucket, key, body)`` works
as well as ``put_object(key, body)``.

Byte ranges: ``byte_range=(start, end)`` is half-open like a Python slice (``end`` excluded, ``None``
for the end of the object); ``extra_get_args={"Range": "bytes=a-b"}`` follows HTTP, ``b`` included.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .errors import StorageError

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def default_storage_url() -> str:
    """The configured ``storage_url`` or a local directory under ``~/.cache/cloudbutton/storage``."""
    from .config import resolve_config

    url = resolve_config().storage_url
    if url:
        return url
    return "file://" + os.path.join(os.path.expanduser("~"), ".cache", "cloudbutton", "storage")


def filesystem(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path for ``url``; local directories create their parents on write."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("file", "local"):
        storage_options.setdefault("auto_mkdir", True)
    try:
        return url_to_fs(url, **storage_options)
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot use storage URL {url!r}: {e}") from e


def _lithops_args(args: tuple, n: int, bucket: str | None) -> tuple[str | None, tuple]:
    """Accept ``(bucket, *args)`` (the Lithops form) as well as ``args``; return (bucket, args)."""
    if len(args) == n + 1:
        if bucket is not None:
            raise TypeError("bucket given both positionally and by keyword")
        return args[0], args[1:]
    return bucket, args


class Storage:
    """Objects under one fsspec URL: ``Storage("s3://bucket/prefix")``, ``Storage("memory://x")``, ``Storage()``."""

    def __init__(self, url: str | None = None, bucket: str | None = None, **storage_options: Any):
        self.url = (url or default_storage_url()).rstrip("/")
        self.storage_options = storage_options
        self.fs, self.root = filesystem(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # --- paths --------------------------------------------------------------------------------

    def _base(self, bucket: str | None) -> str:
        bucket = bucket if bucket is not None else self.bucket
        return f"{self.root}/{bucket.strip('/')}" if bucket else self.root

    def _path(self, key: str, bucket: str | None) -> str:
        key = key.lstrip("/")
        if not key:
            raise ValueError("an object key must not be empty")
        return f"{self._base(bucket)}/{key}"

    def object_url(self, key: str, bucket: str | None = None) -> str:
        """The full URL of ``key`` (what error messages and partitions name)."""
        return self.fs.unstrip_protocol(self._path(key, bucket))

    def _missing(self, path: str, e: BaseException) -> StorageError:
        return StorageError(f"no object at {self.fs.unstrip_protocol(path)}: {e}")

    # --- objects ------------------------------------------------------------------------------

    def put_object(self, *args, bucket: str | None = None) -> None:
        """``put_object(key, body)`` or ``put_object(bucket, key, body)``; body is bytes, str or a binary file."""
        bucket, (key, body) = _lithops_args(args, 2, bucket)
        path = self._path(key, bucket)
        if isinstance(body, str):
            body = body.encode()
        try:
            if isinstance(body, bytes | bytearray | memoryview):
                self.fs.pipe_file(path, bytes(body))
            else:
                with self.fs.open(path, "wb") as f:
                    while chunk := body.read(1 << 20):
                        f.write(chunk)
        except OSError as e:
            raise StorageError(f"cannot write {self.fs.unstrip_protocol(path)}: {e}") from e

    def get_object(
        self,
        *args,
        stream: bool = False,
        extra_get_args: dict | None = None,
        byte_range: tuple[int, int | None] | None = None,
        bucket: str | None = None,
    ):
        """``get_object(key)`` or ``get_object(bucket, key)``: the bytes, or a binary file if ``stream``."""
        if len(args) == 2 and isinstance(args[1], bool):  # get_object(key, stream)
            args, stream = args[:1], args[1]
        bucket, (key,) = _lithops_args(args, 1, bucket)
        path = self._path(key, bucket)
        start, end = None, None
        if extra_get_args and "Range" in extra_get_args:
            if byte_range is not None:
                raise ValueError("give either byte_range or extra_get_args['Range'], not both")
            m = _RANGE.match(extra_get_args["Range"].strip())
            if not m:
                raise ValueError(f"unsupported Range {extra_get_args['Range']!r}; expected 'bytes=a-b'")
            start, end = int(m.group(1)), (int(m.group(2)) + 1 if m.group(2) else None)
        elif byte_range is not None:
            start, end = byte_range
        if (start is not None and start < 0) or (end is not None and start is not None and end < start):
            raise ValueError(f"invalid byte range {(start, end)}")
        try:
            if stream and start is None and end is None:
                return self.fs.open(path, "rb")
            data = self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError as e:
            raise self._missing(path, e) from e
        except IsADirectoryError as e:
            raise self._missing(path, e) from e
        except OSError as e:
            raise StorageError(f"cannot read {self.fs.unstrip_protocol(path)}: {e}") from e
        return io.BytesIO(data) if stream else data

    def head_object(self, *args, bucket: str | None = None) -> dict:
        """Metadata of an object: ``content-length`` (a string, as in HTTP/Lithops), ``size`` (int), ``url``."""
        bucket, (key,) = _lithops_args(args, 1, bucket)
        path = self._path(key, bucket)
        try:
            info = self.fs.info(path)
        except FileNotFoundError as e:
            raise self._missing(path, e) from e
        if info.get("type") == "directory":
            raise self._missing(path, IsADirectoryError(path))
        size = int(info.get("size") or 0)
        meta = {"content-length": str(size), "size": size, "url": self.fs.unstrip_protocol(path)}
        for name in ("mtime", "LastModified", "created", "ETag"):
            if name in info:
                meta[name.lower()] = info[name]
        return meta

    def delete_object(self, *args, bucket: str | None = None) -> None:
        """Delete one object; a missing one is a StorageError."""
        bucket, (key,) = _lithops_args(args, 1, bucket)
        path = self._path(key, bucket)
        try:
            if self.fs.isdir(path):
                raise IsADirectoryError(path)
            self.fs.rm_file(path)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise self._missing(path, e) from e

    def delete_objects(self, *args, bucket: str | None = None) -> None:
        """Delete several objects (``delete_objects(keys)`` or ``(bucket, keys)``); missing ones are skipped."""
        bucket, (keys,) = _lithops_args(args, 1, bucket)
        if isinstance(keys, str):
            raise TypeError("delete_objects takes a list of keys; use delete_object for one")
        for key in keys:
            try:
                self.fs.rm_file(self._path(key, bucket))
            except FileNotFoundError:
                pass

    # --- listing ------------------------------------------------------------------------------

    def list_objects(self, *args, bucket: str | None = None) -> list[dict]:
        """``[{"Key": key, "Size": size}, ...]`` of every object whose key starts with ``prefix``, sorted."""
        if len(args) == 2:
            bucket, args = _lithops_args(args, 1, bucket)
        prefix = args[0] if args and args[0] else ""
        prefix = prefix.lstrip("/")
        base = self._base(bucket)
        folder = f"{base}/{prefix}".rsplit("/", 1)[0]  # the deepest folder that holds every match
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in sorted(found.items()):
            key = self.fs._strip_protocol(path)[len(base) + 1 :]
            if key.startswith(prefix) and info.get("type") != "directory":
                out.append({"Key": key, "Size": int(info.get("size") or 0)})
        return out

    def list_keys(self, *args, bucket: str | None = None) -> list[str]:
        """Keys (relative to the storage URL, or to ``bucket``) starting with ``prefix``; [] if none."""
        return [o["Key"] for o in self.list_objects(*args, bucket=bucket)]
