"""Storage partitioner: split objects into byte ranges aligned to newlines, without reading them.

Planning uses only listing/info calls (sizes). Each ``Partition`` reads its own bytes, through
fsspec, where it runs. Ranges are half-open: ``data_byte_range = (start, end)`` covers ``start``
up to, not including, ``end`` (the *nominal* range, before newline alignment).

With a ``newline`` separator, partition ``i`` of nominal range ``[s, e)`` yields the bytes from just
after the first separator that ends at or after ``s`` (or from 0 for part 0) up to the end of the first
separator that ends at or after ``e`` (or the end of the object). Neighbours use the same boundary,
so every line is read by exactly one partition, whatever the chunk size.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import StorageError
from .storage import _is_object, filesystem, is_glob, storage_errors

_BLOCK = 1 << 16
_PROBE = 1 << 12  # first read when looking for a separator (lines are usually shorter)
_MAX_FETCH = 8 << 20  # bytes per request when reading a partition from an object store


@dataclass
class Partition:
    """One partition of one object: what a function receives as its ``obj`` argument."""

    url: str
    key: str
    part: int
    data_byte_range: tuple[int, int]
    chunk_size: int
    size: int
    newline: bytes | None = b"\n"
    storage_options: dict = field(default_factory=dict, repr=False)
    _stream: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_stream"] = None  # an open file never travels
        return state

    @property
    def bucket(self) -> str | None:
        """The bucket (container) of an object-store URL such as ``s3://bucket/key``; None for files and HTTP."""
        protocol, _, rest = self.url.partition("://")
        if protocol in ("file", "local", "http", "https", "memory") or not rest:
            return None
        return rest.split("/", 1)[0]

    @property
    def data_stream(self) -> io.BufferedReader:
        """A binary file-like object reading exactly this partition's bytes (opened on first use)."""
        if self._stream is None:
            self._stream = self.open()
        return self._stream

    def open(self) -> io.BufferedReader:
        """A new binary stream over this partition's bytes.

        The object is read forwards, in requests of the partition's size (at most ``_MAX_FETCH``) that
        never go past the partition's end (fsspec's object-store files otherwise read ahead by their
        block size, 50 MB on s3fs); the end boundary is looked for only when the reader gets there."""
        fs, path = filesystem(self.url, **self.storage_options)
        fetch = min(max(self.chunk_size, _BLOCK), _MAX_FETCH)
        with storage_errors(self.url, "read"):
            fs.invalidate_cache(path)  # the size must come from the object now, not from a listing cache
            f = fs.open(path, "rb", cache_type="none")
            size = f.size if getattr(f, "size", None) is not None else fs.size(path)
            if size != self.size:
                f.close()
                raise StorageError(f"object {self.url} changed size since partitioning: {self.size} -> {size} bytes")
            start, end = self.data_byte_range
            if self.newline and self.part > 0:
                start = _after_separator(f, start, self.newline, size)
        return io.BufferedReader(_RangeReader(f, start, end, self.url, self.newline, size), buffer_size=fetch)


def _after_separator(f, pos: int, sep: bytes, size: int) -> int:
    """The offset just past the first ``sep`` that ends at or after ``pos`` (``size`` if none)."""
    if pos >= size:
        return size
    base = max(0, pos - len(sep))  # a separator starting here or later ends at or after pos
    f.seek(base)
    buf, keep, step = b"", len(sep) - 1, _PROBE
    while block := f.read(step):
        step = min(2 * step, _MAX_FETCH)  # a long line: fewer, larger requests
        buf += block
        i = buf.find(sep)
        if i >= 0:
            return base + i + len(sep)
        base += len(buf) - keep
        buf = buf[len(buf) - keep :]
    return size


class _RangeReader(io.RawIOBase):
    """Raw reads of ``[start, end)`` of an open fsspec file; with a ``newline`` separator ``end`` is the
    nominal end, moved to just past the first separator ending at or after it when the reader gets there."""

    def __init__(self, f, start: int, end: int, url: str, newline: bytes | None = None, size: int = 0):
        self._f, self._pos, self._end, self._url = f, start, end, url
        self._newline, self._size = newline, size
        f.seek(start)

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the range (b"" at its end)."""
        with storage_errors(self._url, "read"):
            if self._newline and self._pos >= self._end:  # at the nominal end: find the real one
                self._end = max(self._pos, _after_separator(self._f, self._end, self._newline, self._size))
                self._newline = None
                self._f.seek(self._pos)
            n = min(n, self._end - self._pos)
            data = self._f.read(n) if n > 0 else b""
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self._read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        """The rest, in few large reads straight from the file (io's default reads 8 KiB at a time,
        one request each on object stores, and copies every byte twice)."""
        chunks = []
        while data := self._read(_MAX_FETCH):
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def _objects(source: str, storage_options: dict) -> list[tuple[str, str, int]]:
    """``(url, path, size)`` of each object named by a URL, a prefix (folder) or a glob; sorted.
    Listing calls only: one ``find`` (a paginated listing on object stores), preceded by an ``info`` unless
    the URL ends with ``/``."""
    fs, path = filesystem(source, **storage_options)
    with storage_errors(source, "list", missing="no objects at"):
        if is_glob(path):
            found = fs.glob(path, detail=True)
        elif source.endswith("/"):  # a prefix: list it at once (no info request, which may be a HEAD)
            found = fs.find(path, detail=True)
        else:
            info = fs.info(path)
            found = fs.find(path, detail=True) if info.get("type") == "directory" else {path: info}
    objects, scheme = [], None
    for p, i in sorted(found.items()):
        if not _is_object(i):
            continue
        if scheme is None:  # paths of one listing share one URL prefix (unstrip_protocol costs ~10 us a call)
            url = fs.unstrip_protocol(p)
            scheme = url[: -len(p)] if url.endswith(p) else None
        url = scheme + p if scheme is not None else fs.unstrip_protocol(p)
        if i.get("size") is None:
            raise StorageError(f"cannot partition {url}: its size is unknown (the server does not report it)")
        objects.append((url, p, int(i["size"])))
    if not objects:
        raise StorageError(f"no objects at {source}")
    return objects


def plan_partitions(
    sources,
    chunk_size: int | None = None,
    chunk_number: int | None = None,
    newline: str | bytes | None = "\n",
    storage_options: dict | None = None,
) -> list[Partition]:
    """Partitions of every object named by ``sources`` (a URL, prefix or glob, or a list of them).

    ``chunk_size`` (bytes) or ``chunk_number`` (parts per object) splits objects; neither: one
    partition per object. An empty object gives one empty partition. Objects are not read."""
    if chunk_size is not None and chunk_number is not None:
        raise ValueError("give chunk_size or chunk_number, not both")
    for name, value in (("chunk_size", chunk_size), ("chunk_number", chunk_number)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if isinstance(newline, str):
        newline = newline.encode()
    if newline == b"":
        raise ValueError("newline must be a non-empty separator or None")
    storage_options = storage_options or {}
    partitions = []
    for source in [sources] if isinstance(sources, str) else list(sources):
        for url, path, size in _objects(source, storage_options):
            if chunk_number is not None:
                step = max(1, math.ceil(size / chunk_number))
            else:
                step = chunk_size or max(size, 1)
            count = max(1, math.ceil(size / step))
            for part in range(count):
                start, end = part * step, min(size, (part + 1) * step)
                partitions.append(Partition(url, path, part, (start, end), step, size, newline, storage_options))
    return partitions
