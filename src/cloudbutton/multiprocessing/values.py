"""``multiprocessing.Value`` and ``multiprocessing.Array`` over the state store.

A value is one object on the server, an array a list of them; reads and writes go to the server, and
values are converted through their ctypes type exactly as the standard library stores them (``'i'``
wraps to a C int, assigning a float to it raises ``TypeError``). As in the standard library, the
synchronized wrappers take their lock around every single read and write (an RLock by default, so
``with v.get_lock(): v.value += 1`` makes an exact counter), and ``lock=False`` returns the raw object,
which has no ``get_lock``. Only simple ctypes types (numbers, ``'c'``) are supported. Lifetime: see
:mod:`cloudbutton.multiprocessing.synchronize`.
"""

from __future__ import annotations

import ctypes
from multiprocessing.sharedctypes import typecode_to_type
from typing import Any

from .. import state
from .synchronize import RLock, _name, _Shared

__all__ = ["Array", "RawArray", "RawValue", "SynchronizedArray", "Synchronized", "Value", "copy", "synchronized"]


def _ctype(typecode_or_type) -> type:
    ctype = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if not (isinstance(ctype, type) and issubclass(ctype, ctypes._SimpleCData)):
        raise NotImplementedError(
            f"shared values of type {typecode_or_type!r} are not supported: use a typecode such as 'i' or 'd' or a "
            "simple ctypes type, or share Python objects through a Manager's dict/list/Namespace"
        )
    return ctype


def _convert(ctype: type, value: Any) -> Any:
    """``value`` as the ctypes object stores it (raises TypeError as ctypes does)."""
    return ctype(value).value


class _RawValue(_Shared):
    """What ``RawValue`` and ``Value(..., lock=False)`` return: ``.value`` read and written on the server."""

    def __init__(self, ctype: type, *args):
        self._type = ctype
        self._ref = state.AtomicReference(_name("Value"), ctype(*args).value)
        self._own(self._ref)

    @property
    def value(self) -> Any:
        return self._ref.get()

    @value.setter
    def value(self, value: Any) -> None:
        self._ref.set(_convert(self._type, value))

    def __repr__(self) -> str:
        return f"{self._type.__name__}({self.value!r})"


class _RawArray(_Shared):
    """What ``RawArray`` and ``Array(..., lock=False)`` return: a fixed-length sequence on the server."""

    def __init__(self, ctype: type, size_or_initializer):
        self._type = ctype
        if isinstance(size_or_initializer, int):
            items = [ctype().value] * size_or_initializer
        else:
            items = [_convert(ctype, v) for v in size_or_initializer]
        self._length = len(items)
        self._list = state.SharedList(_name("Array"))
        self._list.extend(items)
        self._own(self._list)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._list[index]
        return self._list[self._index(index)]

    def __setitem__(self, index, value) -> None:
        if isinstance(index, slice):
            positions = range(*index.indices(self._length))
            values = [_convert(self._type, v) for v in value]
            if len(values) != len(positions):
                raise ValueError("Can only assign sequence of same size")
            for i, v in zip(positions, values, strict=True):
                self._list[i] = v
        else:
            self._list[self._index(index)] = _convert(self._type, value)

    def _index(self, index) -> int:
        i = index.__index__()
        if not -self._length <= i < self._length:
            raise IndexError("invalid index")
        return i

    def __iter__(self):
        return iter(self[:])

    def __repr__(self) -> str:
        return f"<{self._type.__name__}_Array_{self._length} {self[:]!r}>"


class _RawCharArray(_RawArray):
    """An array of ``c_char`` (typecode ``'c'``): slices are bytes, and ``value`` (up to the first NUL)
    and ``raw`` (every byte) read and write it as the standard library's ctypes array does."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return b"".join(item) if isinstance(index, slice) else item

    def __iter__(self):
        return iter(super().__getitem__(slice(None)))  # 1-byte bytes, not the ints of a bytes object

    @property
    def raw(self) -> bytes:
        return self[:]

    @raw.setter
    def raw(self, data: bytes) -> None:
        if len(data) > self._length:
            raise ValueError("byte string too long")
        self[: len(data)] = data

    @property
    def value(self) -> bytes:
        return self.raw.split(b"\0", 1)[0]

    @value.setter
    def value(self, data: bytes) -> None:
        if len(data) > self._length:
            raise ValueError("byte string too long")
        self.raw = data + b"\0" if len(data) < self._length else data


def RawValue(typecode_or_type, *args) -> _RawValue:  # noqa: N802 - the standard library's name
    """A value on the server, without a lock."""
    return _RawValue(_ctype(typecode_or_type), *args)


def RawArray(typecode_or_type, size_or_initializer) -> _RawArray:  # noqa: N802 - the standard library's name
    """An array on the server, without a lock."""
    ctype = _ctype(typecode_or_type)
    return (_RawCharArray if ctype is ctypes.c_char else _RawArray)(ctype, size_or_initializer)


def _lock_for(lock):
    if lock is True or lock is None:
        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


class _Synchronized:
    """A raw value or array with the lock that guards each of its reads and writes."""

    def __init__(self, obj, lock):
        self._obj, self._lock = obj, lock
        self.acquire, self.release = lock.acquire, lock.release

    def __getstate__(self) -> dict:
        return {"_obj": self._obj, "_lock": self._lock}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["_obj"], state["_lock"])

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc_info) -> None:
        self._lock.__exit__(*exc_info)

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj!r}>"


class Synchronized(_Synchronized):
    @property
    def value(self) -> Any:
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        with self._lock:
            self._obj.value = value


class SynchronizedArray(_Synchronized):
    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, index):
        with self._lock:
            return self._obj[index]

    def __setitem__(self, index, value) -> None:
        with self._lock:
            self._obj[index] = value

    def __iter__(self):
        return iter(self[:])


class SynchronizedString(Synchronized, SynchronizedArray):
    """A char array with its lock: ``value`` (from ``Synchronized``), ``raw``, and the array's items."""

    def __iter__(self):
        with self._lock:
            return iter(list(self._obj))

    @property
    def raw(self) -> bytes:
        with self._lock:
            return self._obj.raw

    @raw.setter
    def raw(self, data: bytes) -> None:
        with self._lock:
            self._obj.raw = data


def copy(obj):
    """A new raw value or array on the server with the contents of ``obj`` (a raw or synchronized one)."""
    if isinstance(obj, _Synchronized):
        obj = obj.get_obj()
    if isinstance(obj, _RawValue):
        return RawValue(obj._type, obj.value)
    if isinstance(obj, _RawArray):
        return RawArray(obj._type, obj[:])
    raise TypeError(f"copy() takes a shared value or array, not {type(obj).__name__}")


def synchronized(obj, lock=None):
    """``obj`` (a raw value or array) with a lock that guards each of its reads and writes."""
    if isinstance(obj, _RawCharArray):
        return SynchronizedString(obj, _lock_for(lock))
    if isinstance(obj, _RawArray):
        return SynchronizedArray(obj, _lock_for(lock))
    if isinstance(obj, _RawValue):
        return Synchronized(obj, _lock_for(lock))
    raise TypeError(f"synchronized() takes a shared value or array, not {type(obj).__name__}")


def Value(typecode_or_type, *args, lock=True):  # noqa: N802 - the standard library's name
    """A value shared through the state store; ``lock``: True (a new RLock), False (no lock) or a lock."""
    obj = RawValue(typecode_or_type, *args)
    return obj if lock is False else Synchronized(obj, _lock_for(lock))


def Array(typecode_or_type, size_or_initializer, *, lock=True):  # noqa: N802 - the standard library's name
    """An array shared through the state store; ``lock``: True (a new RLock), False (no lock) or a lock."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return (SynchronizedString if isinstance(obj, _RawCharArray) else SynchronizedArray)(obj, _lock_for(lock))
