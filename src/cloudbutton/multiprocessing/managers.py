"""``multiprocessing.Manager`` over the state store.

The standard library's manager is a server process holding the objects, reached by proxies. Here the
state server already plays that part, so no manager process is started: ``Manager()`` returns a
``SyncManager`` whose methods create objects in the store and return picklable proxies to them, usable
from any worker. ``shutdown()`` (or leaving its ``with`` block) deletes every object it created.
"""

from __future__ import annotations

import pickle
import weakref
from collections.abc import Callable
from typing import Any

import redis

from .. import state
from ..state.objects import _dumps, _invalidate_local, _state_op
from . import queues, synchronize, values
from .synchronize import _collect, _finalize, _name, _Shared

__all__ = ["DictProxy", "ListProxy", "Manager", "Namespace", "SyncManager", "ValueProxy"]


class DictProxy(state.SharedDict):
    """A dict in the store (``Manager().dict()``); every operation is one atomic server operation."""

    def copy(self) -> dict:
        return self.to_dict()


class ListProxy(state.SharedList):
    """A list in the store (``Manager().list()``); see :class:`cloudbutton.state.SharedList` for what is
    atomic. ``sort``, slice assignment and deletion, and ``*=`` rewrite the whole list atomically (retried
    if another process changed it meanwhile); ``+`` and ``*`` return plain lists, as the standard
    library's proxy does."""

    @_state_op
    def _rewrite(self, change: Callable[[list], list]) -> None:
        """Replace the list by ``change(its items)``: an optimistic transaction (WATCH/MULTI/EXEC)."""
        while True:
            with self._r.pipeline() as p:
                try:
                    p.watch(self._key)
                    items = change([pickle.loads(data) for data in p.lrange(self._key, 0, -1)])
                    data = [_dumps(item, "a list item") for item in items]
                    p.multi()
                    p.delete(self._key)
                    if data:
                        p.rpush(self._key, *data)
                    p.execute()
                    break
                except redis.WatchError:
                    continue
        _invalidate_local(self.url, self._keys())

    def sort(self, *, key=None, reverse: bool = False) -> None:
        self._rewrite(lambda items: sorted(items, key=key, reverse=reverse))

    def __setitem__(self, index, value: Any) -> None:
        if not isinstance(index, slice):
            return super().__setitem__(index, value)
        values = list(value)
        self._rewrite(lambda items: (items.__setitem__(index, values), items)[1])

    def __delitem__(self, index) -> None:
        if not isinstance(index, slice):
            return super().__delitem__(index)
        self._rewrite(lambda items: (items.__delitem__(index), items)[1])

    def __iadd__(self, values) -> ListProxy:
        self.extend(values)
        return self

    def __imul__(self, n: int) -> ListProxy:
        self._rewrite(lambda items: items * n)
        return self

    def __add__(self, other) -> list:
        return self.to_list() + other

    def __mul__(self, n: int) -> list:
        return self.to_list() * n

    __rmul__ = __mul__


class Namespace:
    """Attributes in the store (``Manager().Namespace()``); names starting with ``_`` stay local, as in the
    standard library's proxy."""

    def __init__(self, _dict: state.SharedDict, **kwds):
        object.__setattr__(self, "_dict", _dict)
        _dict.update(kwds)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._dict[name]
        except KeyError:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._dict[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        try:
            del self._dict[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        items = sorted(self._dict.to_dict().items())
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in items)})"


class ValueProxy(_Shared):
    """A value in the store (``Manager().Value(typecode, value)``): ``.value``, ``get()`` and ``set()``.

    As the standard library's manager does, it stores any picklable object as it is (the typecode is kept
    but not enforced: no conversion to a C type)."""

    def __init__(self, typecode, value):
        self._typecode = typecode
        self._ref = state.AtomicReference(_name("Value"), value)
        self._own(self._ref)

    def get(self) -> Any:
        return self._ref.get()

    def set(self, value: Any) -> None:
        self._ref.set(value)

    value = property(get, set)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self.get()!r})"


class SyncManager:
    """``multiprocessing.managers.SyncManager`` without a server process (see the module docstring).

    Objects are deleted by ``shutdown()``, or earlier once this process drops the proxy the manager
    returned (the standard library's manager deletes an object once no proxy refers to it; here copies
    pickled to other processes do not count, so keep the proxy while they use it, e.g. in the Process's
    arguments). ``register()`` and ``Pool()`` are not supported.
    """

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *, shutdown_timeout=1.0):
        self._objects: list = []  # what shutdown() deletes: the finalizers of what this manager made
        self._proxies: weakref.WeakSet = weakref.WeakSet()  # dict, list, Namespace: unusable after shutdown()
        self._prune_at = 1024
        self._started = False

    def start(self, initializer=None, initargs=()) -> None:
        if self._started:
            raise RuntimeError("Already started server")
        if initializer is not None:
            initializer(*initargs)
        self._started = True

    def connect(self) -> None:
        self._started = True

    def shutdown(self) -> None:
        """Delete every object this manager created."""
        objects, self._objects = self._objects, []
        for finalizer in objects:
            finalizer()
        for proxy in list(self._proxies):  # their data was deleted through other handles: end these too
            proxy._deleted = True
        self._started = False

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: there is no manager process."""

    def __enter__(self) -> SyncManager:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None, method_to_typeid=None,
                 create_method=True):
        raise NotImplementedError(
            "custom manager types cannot be registered: there is no manager process to hold them. Share an "
            "instance of your own class with cloudbutton.state.shared (@shared), or use dict/list/Namespace"
        )

    def Pool(self, *args, **kwargs):  # noqa: N802 - the standard library's names
        raise NotImplementedError("a manager cannot hold a Pool here: use cloudbutton.multiprocessing.Pool")

    def _make(self, factory, *args, **kwargs):
        """``factory(*args, **kwargs)``, whose store data (nested objects' included) shutdown() deletes."""
        if not self._started:
            raise AssertionError("server not yet started")
        obj, finalizers = _collect(factory, *args, **kwargs)
        self._objects.extend(finalizers)
        if len(self._objects) >= self._prune_at:  # forget those already collected
            self._objects = [f for f in self._objects if f.alive]
            self._prune_at = 2 * len(self._objects) + 1024
        return obj

    def _proxy(self, cls, kind: str):
        """A new ``cls`` (a state object) deleted when it is finalized (by a second handle: the finalizer must
        not keep the proxy alive)."""
        proxy = cls(_name(kind))
        _finalize(proxy, (cls._from_handle(proxy.name, proxy.url),))
        self._proxies.add(proxy)
        return proxy

    def dict(self, *args, **kwargs) -> DictProxy:
        d = self._make(self._proxy, DictProxy, "dict")
        d.update(*args, **kwargs)
        return d

    def list(self, sequence=()) -> ListProxy:
        lst = self._make(self._proxy, ListProxy, "list")
        lst.extend(sequence)
        return lst

    def Namespace(self, **kwds) -> Namespace:  # noqa: N802
        return Namespace(self._make(self._proxy, DictProxy, "Namespace"), **kwds)

    def Queue(self, maxsize: int = 0) -> queues.Queue:  # noqa: N802
        return self._make(queues.Queue, maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> queues.JoinableQueue:  # noqa: N802
        return self._make(queues.JoinableQueue, maxsize)

    def Lock(self) -> synchronize.Lock:  # noqa: N802
        return self._make(synchronize.Lock)

    def RLock(self) -> synchronize.RLock:  # noqa: N802
        return self._make(synchronize.RLock)

    def Semaphore(self, value: int = 1) -> synchronize.Semaphore:  # noqa: N802
        return self._make(synchronize.Semaphore, value)

    def BoundedSemaphore(self, value: int = 1) -> synchronize.BoundedSemaphore:  # noqa: N802
        return self._make(synchronize.BoundedSemaphore, value)

    def Condition(self, lock=None) -> synchronize.Condition:  # noqa: N802
        return self._make(synchronize.Condition, lock)

    def Event(self) -> synchronize.Event:  # noqa: N802
        return self._make(synchronize.Event)

    def Barrier(self, parties: int, action=None, timeout: float | None = None) -> synchronize.Barrier:  # noqa: N802
        return self._make(synchronize.Barrier, parties, action, timeout)

    def Value(self, typecode, value, lock=True) -> ValueProxy:  # noqa: N802
        """A value proxy (``get``/``set``/``.value``); as in the standard library, ``lock`` is ignored."""
        return self._make(ValueProxy, typecode, value)

    def Array(self, typecode, sequence, lock=True) -> values._RawArray:  # noqa: N802
        """An array proxy (``len``, indexing, slicing); as in the standard library, ``lock`` is ignored."""
        return self._make(values.RawArray, typecode, sequence)


def Manager() -> SyncManager:  # noqa: N802 - the standard library's name
    """A started ``SyncManager`` (no process is started: the objects live in the state store)."""
    manager = SyncManager()
    manager.start()
    return manager
