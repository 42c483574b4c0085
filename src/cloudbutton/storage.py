"""Storage: a small Lithops-style facade over fsspec (never a hand-written client).

Storage is bucket-less: keys are paths under the storage URL (``file://`` directory by default,
``memory://``, ``s3://bucket/prefix`` via s3fs, ...). Where the Lithops API takes a ``bucket``, it
is accepted and means a sub-folder of the storage URL, so ``put_object(bucket, key, body)`` works
as well as ``put_object(key, body)``.

Byte ranges: ``byte_range=(start, end)`` is half-open like a Python slice (``end`` excluded, ``None``
for the end of the object); ``extra_get_args={"Range": "bytes=a-b"}`` follows HTTP, ``b`` included.

Whatever fsspec or its implementations raise (a missing object or bucket, a refused credential, an
unreachable endpoint) becomes a ``StorageError`` naming the URL and carrying the provider's message.
The module-level ``ls``, ``upload``, ``download``, ``remove`` and ``open_url`` work on whole URLs and
back the ``cloudbutton storage`` command; ``resolve_url`` is the one rule by which it and ``map`` turn a
reference (a URL, an absolute path, or a key under ``storage_url``) into a URL.
"""

from __future__ import annotations

import io
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import CloudbuttonError, StorageError

if TYPE_CHECKING:
    import fsspec

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_GLOB = re.compile(r"[*?\[]")


def is_glob(path: str) -> bool:
    """Whether ``path`` (or a URL) is a glob pattern (``*``, ``?`` or ``[...]``)."""
    return bool(_GLOB.search(path))


def default_storage_url() -> str:
    """The configured ``storage_url`` or a local directory under ``~/.cache/cloudbutton/storage``."""
    from .config import resolve_config

    url = resolve_config().storage_url
    if url:
        return url
    return "file://" + os.path.join(os.path.expanduser("~"), ".cache", "cloudbutton", "storage")


def resolve_url(ref: str, storage_url: str | None = None) -> str:
    """The URL a storage reference names, the one rule of ``map`` and ``cloudbutton storage``: a URL as
    given; an absolute path as a local file; anything else a key under ``storage_url`` (by default the
    configured one, see ``default_storage_url``)."""
    if "://" in ref or os.path.isabs(ref):
        return ref
    return f"{(storage_url or default_storage_url()).rstrip('/')}/{ref.lstrip('/')}"


def filesystem(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path for ``url``; local directories create their parents on write."""
    from fsspec.core import url_to_fs  # imported when needed: it takes longer than the rest of cloudbutton

    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("file", "local"):
        storage_options.setdefault("auto_mkdir", True)
    try:
        return url_to_fs(url, **storage_options)
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot use storage URL {url!r}: {e}") from e


@contextmanager
def storage_errors(url: str, verb: str, missing: str = "no object at") -> Iterator[None]:
    """Re-raise what fsspec raises as a StorageError naming ``url``: a failed connection names the
    endpoint; ``missing`` for a missing object, bucket or folder (a write, whose ``verb`` starts with
    "write", says it cannot write and why); "permission denied" for refused credentials, else
    "cannot <verb>"."""
    try:
        yield
    except (CloudbuttonError, TypeError, AttributeError):  # ours, or a programming error: as they are
        raise
    except Exception as e:  # botocore / aiohttp / OS errors: an unreachable endpoint, a timeout, ...
        raise StorageError(_storage_message(e, url, verb, missing)) from e


def _storage_message(e: Exception, url: str, verb: str, missing: str) -> str:
    unreachable = _connection_failure(e, url)
    if unreachable:
        return f"cannot {verb} {url}: {unreachable}"
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        if not verb.startswith("write"):
            return f"{missing} {url}: {e}"
        why = "the folder or bucket does not exist: " if isinstance(e, FileNotFoundError) else ""
        return f"cannot {verb} {url}: {why}{e}"
    if isinstance(e, PermissionError):
        return f"permission denied: cannot {verb} {url}: {e}"
    return f"cannot {verb} {url}: {type(e).__name__}: {e}"


def _connection_failure(e: BaseException | None, url: str) -> str | None:
    """If ``e`` comes from a connection that could not be made (refused, unknown host, ...), what to
    say: the endpoint and what to check; else None."""
    endpoint, seen = url, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        kwargs = getattr(e, "kwargs", None)  # botocore's EndpointConnectionError names the endpoint
        if isinstance(kwargs, dict) and isinstance(kwargs.get("endpoint_url"), str):
            endpoint = kwargs["endpoint_url"]
        cause = getattr(e, "os_error", e)  # aiohttp's ClientConnectorError holds the OS error
        if isinstance(cause, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(cause, socket.gaierror):
            why = f"unknown host: {cause.strerror}"
        elif cause is not e and isinstance(cause, OSError):
            why = str(cause)  # e.g. several addresses, none of which answered
        else:
            e = e.__cause__ or e.__context__
            continue
        parts = urlsplit(endpoint)
        where = f"{parts.scheme}://{parts.netloc}" if parts.netloc else endpoint
        check = "endpoint_url (or AWS_ENDPOINT_URL)" if url.startswith(("s3://", "s3a://")) else "the URL"
        hint = f"check that the server is running and that {check} is right"
        return f"cannot connect to the endpoint {where} ({why}); {hint}"
    return None


def _is_object(info: dict) -> bool:
    """A file, not a folder nor an S3 "directory marker" (an empty object whose key ends with /)."""
    return info.get("type") != "directory" and not info["name"].endswith("/")


def _lithops_args(args: tuple, n: int, bucket: str | None) -> tuple[str | None, tuple]:
    """Accept ``(bucket, *args)`` (the Lithops form) as well as ``args``; return (bucket, args)."""
    if len(args) == n + 1:
        if bucket is not None:
            raise TypeError("bucket given both positionally and by keyword")
        return args[0], args[1:]
    return bucket, args


@dataclass(frozen=True)
class CloudObject:
    """A reference to an object written by ``Storage.put_cloudobject``: small and picklable, so it can
    be passed to calls, which read the value with ``Storage().get_cloudobject(cobj)``."""

    url: str
    key: str


class Storage:
    """Objects under one fsspec URL: ``Storage("s3://bucket/prefix")``, ``Storage("memory://x")``, ``Storage()``."""

    cloudobject_prefix = "cloudobjects"
    """Where ``put_cloudobject`` puts objects given no key."""

    def __init__(self, url: str | None = None, bucket: str | None = None, **storage_options: Any):
        self.url = (url or default_storage_url()).rstrip("/")
        self.storage_options = storage_options
        self.fs, self.root = filesystem(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        self.bucket = bucket

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __getstate__(self) -> dict:
        """A Storage pickles as its URL and options (a call may receive one); its filesystem is made again."""
        return {k: v for k, v in self.__dict__.items() if k not in ("fs", "root")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fs, root = filesystem(self.url, **self.storage_options)
        self.root = root.rstrip("/")

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

    # --- objects ------------------------------------------------------------------------------

    def put_object(self, *args, bucket: str | None = None) -> None:
        """``put_object(key, body)`` or ``put_object(bucket, key, body)``; body is bytes, str or a binary file."""
        bucket, (key, body) = _lithops_args(args, 2, bucket)
        path = self._path(key, bucket)
        if isinstance(body, str):
            body = body.encode()
        with storage_errors(self.fs.unstrip_protocol(path), "write"):
            if isinstance(body, bytes | bytearray | memoryview):
                self.fs.pipe_file(path, bytes(body))
            else:
                with self.fs.open(path, "wb") as f:
                    while chunk := body.read(1 << 20):
                        f.write(chunk)

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
        return self._read(self.fs, self._path(key, bucket), stream, start, end)

    @staticmethod
    def _read(fs, path: str, stream: bool, start: int | None = None, end: int | None = None):
        with storage_errors(fs.unstrip_protocol(path), "read"):
            if stream and start is None and end is None:
                return fs.open(path, "rb")
            data = fs.cat_file(path, start=start, end=end)
        return io.BytesIO(data) if stream else data

    def head_object(self, *args, bucket: str | None = None) -> dict:
        """Metadata of an object: ``content-length`` (a string, as in HTTP/Lithops), ``size`` (int), ``url``."""
        bucket, (key,) = _lithops_args(args, 1, bucket)
        info = self._info(self._path(key, bucket))
        size = int(info.get("size") or 0)
        meta = {"content-length": str(size), "size": size, "url": self.fs.unstrip_protocol(info["name"])}
        for name in ("mtime", "LastModified", "created", "ETag"):
            if name in info:
                meta[name.lower()] = info[name]
        return meta

    def _info(self, path: str) -> dict:
        """Info of the object at ``path``; a folder (prefix) is not an object."""
        with storage_errors(self.fs.unstrip_protocol(path), "read"):
            info = self.fs.info(path)
            if not _is_object(info):
                raise IsADirectoryError("a folder (prefix), not an object")
        return info

    def delete_object(self, *args, bucket: str | None = None) -> None:
        """Delete one object; a missing one is a StorageError (object stores would delete nothing silently)."""
        bucket, (key,) = _lithops_args(args, 1, bucket)
        path = self._path(key, bucket)
        self._info(path)
        with storage_errors(self.fs.unstrip_protocol(path), "delete"):
            self.fs.rm_file(path)

    def delete_objects(self, *args, bucket: str | None = None) -> None:
        """Delete several objects (``delete_objects(keys)`` or ``(bucket, keys)``); missing ones are skipped."""
        bucket, (keys,) = _lithops_args(args, 1, bucket)
        if isinstance(keys, str):
            raise TypeError("delete_objects takes a list of keys; use delete_object for one")
        for key in keys:
            path = self._path(key, bucket)
            with storage_errors(self.fs.unstrip_protocol(path), "delete"):
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    # --- cloud objects ------------------------------------------------------------------------

    def put_cloudobject(self, body, key: str | None = None, *, bucket: str | None = None) -> CloudObject:
        """Store ``body`` (bytes, str or a binary file) and return a reference a later call can read.
        Without ``key``, a unique one under ``cloudobjects/`` is chosen."""
        key = key or f"{self.cloudobject_prefix}/{uuid.uuid4().hex}"
        self.put_object(key, body, bucket=bucket)
        return CloudObject(self.object_url(key, bucket), key)

    def get_cloudobject(self, cobj: CloudObject, stream: bool = False):
        """The bytes of a ``CloudObject`` (a binary file if ``stream``), read through its URL."""
        fs, path = filesystem(cobj.url, **self.storage_options)
        return self._read(fs, path, stream)

    def delete_cloudobject(self, cobj: CloudObject) -> None:
        """Delete the object a ``CloudObject`` refers to; a missing one is a StorageError."""
        fs, path = filesystem(cobj.url, **self.storage_options)
        with storage_errors(cobj.url, "delete"):
            fs.info(path)
            fs.rm_file(path)

    def delete_cloudobjects(self, cobjs) -> None:
        """Delete the objects of several ``CloudObject``s; missing ones are skipped."""
        for cobj in cobjs:
            try:
                self.delete_cloudobject(cobj)
            except StorageError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise

    def head_bucket(self, bucket: str | None = None) -> dict:
        """Metadata of the bucket (folder) ``bucket`` (default: the storage's own), in Lithops' shape
        (``{"ResponseMetadata": {"HTTPStatusCode": 200}, ...}``); a missing one is a StorageError."""
        base = self._base(bucket)
        url = self.fs.unstrip_protocol(base)
        with storage_errors(url, "read", missing="no bucket at"):
            if not self.fs.isdir(base) and not self.fs.exists(base):
                raise FileNotFoundError(url)
        return {"ResponseMetadata": {"HTTPStatusCode": 200}, "url": url}

    # --- listing ------------------------------------------------------------------------------

    def list_objects(self, *args, bucket: str | None = None) -> list[dict]:
        """``[{"Key": key, "Size": size}, ...]`` of every object whose key starts with ``prefix``, sorted.

        A prefix with no objects gives []; a missing bucket is a StorageError."""
        if len(args) == 2:
            bucket, args = _lithops_args(args, 1, bucket)
        prefix = args[0] if args and args[0] else ""
        prefix = prefix.lstrip("/")
        base = self._base(bucket)
        folder = f"{base}/{prefix}".rsplit("/", 1)[0]  # the deepest folder that holds every match
        with storage_errors(self.fs.unstrip_protocol(f"{base}/{prefix}"), "list", missing="cannot list"):
            found = self.fs.find(folder, detail=True)  # {} for a missing folder; a missing bucket raises
        out = []
        for path, info in sorted(found.items()):
            key = self.fs._strip_protocol(path)[len(base) + 1 :]
            if key.startswith(prefix) and _is_object(info):
                out.append({"Key": key, "Size": int(info.get("size") or 0)})
        return out

    def list_keys(self, *args, bucket: str | None = None) -> list[str]:
        """Keys (relative to the storage URL, or to ``bucket``) starting with ``prefix``; [] if none."""
        return [o["Key"] for o in self.list_objects(*args, bucket=bucket)]


# --- whole URLs (the `cloudbutton storage` command) -----------------------------------------------


def _infos(fs, path: str, url: str) -> list[dict]:
    """Infos of what ``url`` names: the object or folder itself, or a glob's matches (never empty)."""
    if not is_glob(path):
        with storage_errors(url, "read"):
            return [fs.info(path)]
    with storage_errors(url, "list", missing="no objects at"):
        found = [i for i in fs.glob(path, detail=True).values() if i.get("type") == "directory" or _is_object(i)]
        if not found:
            raise FileNotFoundError("nothing matches")
        return found


def ls(url: str, recursive: bool = False, **storage_options: Any) -> list[dict]:
    """``[{"url", "size", "type"}, ...]`` named by ``url``, sorted by URL: an object, a glob's matches, or a
    folder's content (every object below it if ``recursive``); folders end with ``/``. Nothing there is a
    StorageError; an empty local folder gives []."""
    fs, path = filesystem(url, **storage_options)
    folder = url.endswith("/") and not is_glob(path)  # certainly a folder: list it at once
    infos = [{"name": path, "type": "directory"}] if folder else _infos(fs, path, url)
    if len(infos) == 1 and infos[0].get("type") == "directory" and not is_glob(path):
        with storage_errors(url, "list", missing="no objects at"):
            found = fs.find(path, detail=True).values() if recursive else fs.ls(path, detail=True)
        infos = [i for i in found if i.get("type") == "directory" or _is_object(i)]
    out = []
    for info in infos:
        folder = info.get("type") == "directory"
        name = fs.unstrip_protocol(info["name"].rstrip("/")) + ("/" if folder else "")
        out.append({"url": name, "size": 0 if folder else int(info.get("size") or 0), "type": info.get("type")})
    return sorted(out, key=lambda e: e["url"])


def _remote_sources(fs, path: str, url: str, recursive: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    """What ``url`` names, as ``[(name, [(object path, path relative to name)])]``: an object is its own
    one entry (relative path ""); a folder (only with ``recursive``) holds its objects."""
    out = []
    for info in _infos(fs, path, url):
        name = info["name"].rstrip("/")
        if info.get("type") != "directory":
            out.append((name, [(name, "")]))
        elif not recursive:
            raise StorageError(f"{fs.unstrip_protocol(name)} is a folder (use -r to copy folders)")
        else:
            with storage_errors(url, "list", missing="no objects at"):
                found = fs.find(name, detail=True)
            out.append((name, [(p, p[len(name) + 1 :]) for p, i in sorted(found.items()) if _is_object(i)]))
    return out


def _local_sources(local: str, recursive: bool) -> tuple[str, list[tuple[str, str]]]:
    """A local file or folder (only with ``recursive``) as ``(name, [(file, path relative to name)])``."""
    local = local.rstrip("/") or "/"
    if os.path.isfile(local):
        return local, [(local, "")]
    if not os.path.isdir(local):
        raise StorageError(f"no file at {local}")
    if not recursive:
        raise StorageError(f"{local} is a folder (use -r to copy folders)")
    files = [os.path.join(root, name) for root, _, names in os.walk(local) for name in names]
    return local, [(f, os.path.relpath(f, local)) for f in sorted(files)]


def _targets(sources: list, dest: str, inside: bool) -> list[tuple[str, str]]:
    """``(source, destination)`` pairs, with ``cp`` rules: into ``dest`` under each source's name when
    ``inside`` (several sources, a trailing ``/`` or an existing folder), else ``dest`` is the copy."""
    dest = dest.rstrip("/") or "/"
    pairs = []
    for name, files in sources:
        top = f"{dest}/{os.path.basename(name)}" if inside else dest
        pairs += [(src, f"{top}/{rel}" if rel else top) for src, rel in files]
    return pairs


def upload(local_paths: list[str], url: str, recursive: bool = False, **storage_options: Any) -> list[str]:
    """Copy local files (folders too if ``recursive``) to ``url`` with ``cp`` rules; returns the URLs written."""
    fs, dest = filesystem(url, **storage_options)
    sources = [_local_sources(local, recursive) for local in local_paths]
    with storage_errors(url, "write"):
        inside = len(sources) > 1 or url.endswith("/") or fs.isdir(dest)
        pairs = _targets(sources, dest, inside)
        if pairs:
            fs.put([p[0] for p in pairs], [p[1] for p in pairs])
    return [fs.unstrip_protocol(p[1]) for p in pairs]


def download(urls: list[str], local: str, recursive: bool = False, **storage_options: Any) -> list[str]:
    """Copy objects named by ``urls`` (folders too if ``recursive``; globs) to the local path ``local``
    with ``cp`` rules; returns the local paths written."""
    named = []
    for url in urls:
        fs, path = filesystem(url, **storage_options)
        named += [(fs, url, sources) for sources in _remote_sources(fs, path, url, recursive)]
    inside = len(named) > 1 or local.endswith("/") or os.path.isdir(local)
    written = []
    for fs, url, sources in named:
        pairs = _targets([sources], local, inside)
        for _, target in pairs:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with storage_errors(url, "read"):
            if pairs:
                fs.get([p[0] for p in pairs], [p[1] for p in pairs])
        written += [p[1] for p in pairs]
    return written


def remove(url: str, recursive: bool = False, **storage_options: Any) -> list[str]:
    """Delete what ``url`` names: an object, a glob's matches, a folder and everything below it (only with
    ``recursive``). Nothing there is a StorageError. Returns the URLs deleted (folders end with ``/``)."""
    fs, path = filesystem(url, **storage_options)
    infos = _infos(fs, path, url)
    for info in infos:
        if info.get("type") == "directory" and not recursive:
            raise StorageError(f"{fs.unstrip_protocol(info['name'].rstrip('/'))} is a folder (use -r to remove it)")
    with storage_errors(url, "delete"):
        fs.rm([i["name"] for i in infos], recursive=recursive)
    return [fs.unstrip_protocol(i["name"].rstrip("/")) + ("/" if i.get("type") == "directory" else "") for i in infos]


def open_url(url: str, **storage_options: Any):
    """A binary file reading the object at ``url``; a folder or nothing there is a StorageError."""
    fs, path = filesystem(url, **storage_options)
    with storage_errors(url, "read"):
        if fs.info(path).get("type") == "directory":
            raise StorageError(f"{url} is a folder (prefix), not an object")
        return fs.open(path, "rb")
