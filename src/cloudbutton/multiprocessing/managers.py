"""``multiprocessing.managers`` over the state store.

The standard library's manager is a server process holding the objects, reached by proxies. Here the
state server already plays that part, so no manager process is started: ``Manager()`` returns a
``SyncManager`` whose methods create objects in the store and return picklable proxies to them, usable
from any worker. ``shutdown()`` (or leaving its ``with`` block) deletes every object it created.

The proxies of ``dict``, ``list``, ``Namespace``, ``Value`` and registered types (``BaseManager.register``) are
reference counted on the server, as the standard library's manager counts them: each such proxy alive in some process,
and each item of a manager ``dict`` or ``list`` that refers to the object, holds a reference; the object is
deleted with its last reference (see "Reference counts" in :mod:`cloudbutton.state.objects`).
"""

from __future__ import annotations

import functools
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import redis

from .. import state
from ..errors import StateError
from ..state.classes import SharedClassObject
from ..state.objects import (
    _REFS_PREFIX,
    _client_for,
    _delete_counted,
    _dumps,
    _invalidate_local,
    _Reference,
    _state_op,
)
from . import queues, synchronize, values
from .synchronize import _collect, _finalize, _name

__all__ = ["BaseManager", "BaseProxy", "DictProxy", "ListProxy", "Manager", "Namespace", "RemoteError",
           "SyncManager", "ValueProxy", "public_methods"]


class RemoteError(Exception):
    """A method a proxy may not call (not in its ``exposed`` names), as the standard library's error."""

    def __str__(self) -> str:
        return "\n" + "-" * 75 + "\n" + str(self.args[0]) + "-" * 75


class _Counted:
    """What the counted proxies share: their references are finalizers a manager collects (see _make)."""

    _counted = True

    def _keep(self, reference: _Reference) -> None:
        _finalize(self, (reference,))


class DictProxy(_Counted, state.SharedDict):
    """A dict in the store (``Manager().dict()``); every operation is one atomic server operation.

    As the standard library's proxy: ``keys()``, ``values()`` and ``items()`` return lists (read in one round
    trip), and an iterator raises RuntimeError if the dict changed size since it was made (it checks the
    size at each step: one round trip per key)."""

    def copy(self) -> dict:
        return self.to_dict()

    def keys(self) -> list:
        return list(state.SharedDict.__iter__(self))

    def values(self) -> list:
        return list(self.to_dict().values())

    def items(self) -> list:
        return list(self.to_dict().items())

    def __iter__(self):
        return self._iterate(list(super().__iter__()))

    def _iterate(self, keys: list):
        for key in keys:
            self._check_size(len(keys))
            yield key
        self._check_size(len(keys))

    def _check_size(self, size: int) -> None:
        if len(self) != size:
            raise RuntimeError("dictionary changed size during iteration")


class ListProxy(_Counted, state.SharedList):
    """A list in the store (``Manager().list()``); see :class:`cloudbutton.state.SharedList` for what is
    atomic. An iterator reads the list as it goes (in growing chunks), so it sees changes made meanwhile.
    ``sort``, slice assignment and deletion, and ``*=`` rewrite the whole list atomically (retried if another
    process changed it meanwhile); ``+`` and ``*`` return plain lists, as the standard library's proxy does."""

    @_state_op
    def _rewrite(self, change: Callable[[list], list]) -> None:
        """Replace the list by ``change(its items)``: an optimistic transaction (WATCH/MULTI/EXEC)."""
        while True:
            with self._r.pipeline() as p:
                try:
                    p.watch(self._key)
                    items = change(self._load_items(p.lrange(self._key, 0, -1)))
                    p.multi()
                    self._replace(items, p)
                    p.execute()
                    break
                except redis.WatchError:
                    continue
        _invalidate_local(self.url, self._keys())

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        """Read as it goes, as the standard library's iterator does: from the first ``next()``, 64 items per round
        trip, twice as many each time up to 4096."""
        start, size = 0, 64
        while True:
            items = self[start : start + size]
            yield from items
            if len(items) < size:
                return
            start, size = start + size, min(2 * size, 4096)

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


class _CountedReference(_Counted, state.AtomicReference):
    def __init__(self, name: str, value: Any):
        state.SharedObject.__init__(self, name)
        self._claim()
        if value is not None:
            self.set(value)


class ValueProxy:
    """A value in the store (``Manager().Value(typecode, value)``): ``.value``, ``get()`` and ``set()``.

    As the standard library's manager does, it stores any picklable object as it is (the typecode is kept
    but not enforced: no conversion to a C type)."""

    def __init__(self, typecode, value):
        self._typecode = typecode
        self._ref = _CountedReference(_name("Value"), value)

    def get(self) -> Any:
        return self._ref.get()

    def set(self, value: Any) -> None:
        self._ref.set(value)

    value = property(get, set)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self.get()!r})"


# --- registered types ---------------------------------------------------------------------------------

def public_methods(obj) -> list[str]:
    """The names of ``obj``'s public methods (callable attributes not starting with ``_``)."""
    return [name for name in dir(obj) if name[0] != "_" and callable(getattr(obj, name))]


class _Referent(_Counted, SharedClassObject):
    """The object of a registered type, stored (pickled whole) under a counted name; ``_apply`` runs a function
    on it atomically (see :mod:`cloudbutton.state.classes`)."""

    _type_name = "managed object"

    def __init__(self, name: str, factory: Callable, args: tuple, kwds: dict):
        state.SharedObject.__init__(self, name)
        self._claim()
        self._factory = factory
        self._create(args, kwds)

    def _initial(self, args: tuple, kwds: dict) -> Any:
        self._made = self._factory(*args, **kwds)  # kept for its public methods (see BaseManager._create)
        return self._made

    def _state_of(self, obj: Any) -> Any:
        return obj

    def _dump(self, obj: Any) -> bytes:
        return _dumps(obj, f"the object of the registered type {self.name.split(':')[1]!r} (it lives in the state "
                           "store, so it must be picklable)")

    def _load(self, data: bytes) -> Any:
        return pickle.loads(data)


def _call(obj, name: str, /, *args, **kwds) -> Any:
    return getattr(obj, name)(*args, **kwds)


def _itself(obj):
    return obj


class BaseProxy:
    """A proxy to an object of a type registered with :meth:`BaseManager.register`, which lives in the state
    store; picklable, usable from any process. ``_callmethod(name, args, kwds)`` calls a method of the object
    atomically and returns (a copy of) its result; ``_getvalue()`` returns a copy of the object. Subclasses
    (a ``proxytype``) list the methods they call in ``_exposed_``, as in the standard library."""

    _exposed_: tuple[str, ...] | None = None
    _auto = False  # an AutoProxy type: made again from its exposed names when unpickled

    def __init__(self, referent: _Referent, typeid: str, exposed: tuple[str, ...] | None = None):
        self._referent, self._typeid, self._exposed = referent, typeid, exposed

    def _callmethod(self, methodname: str, args: tuple = (), kwds: dict | None = None) -> Any:
        if self._exposed is not None and methodname not in self._exposed:
            raise RemoteError(f"method {methodname!r} of {self._typeid!r} object is not in exposed={self._exposed!r}\n")
        return self._referent._apply(_call, (methodname, *args), kwds or {})

    def _getvalue(self) -> Any:
        return self._referent._apply(_itself, (), {})

    def __reduce__(self):
        return _rebuild_proxy, (None if self._auto else type(self), self._referent, self._typeid, self._exposed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        return self._referent._apply(_call, ("__repr__",), {})


@functools.cache
def _auto_proxy_type(exposed: tuple[str, ...]) -> type[BaseProxy]:
    """A BaseProxy type with one method per ``exposed`` name (the standard library's AutoProxy)."""

    def method(name: str):
        def call(self, /, *args, **kwds):
            return self._callmethod(name, args, kwds)

        call.__name__ = call.__qualname__ = name
        return call

    return type("AutoProxy", (BaseProxy,), {"_exposed_": exposed, "_auto": True, **{n: method(n) for n in exposed}})


def _rebuild_proxy(proxytype, referent: _Referent, typeid: str, exposed):
    return (proxytype or _auto_proxy_type(exposed))(referent, typeid, exposed)


# --- managers -----------------------------------------------------------------------------------------

class BaseManager:
    """``multiprocessing.managers.BaseManager`` without a server process: the objects live in the state store.

    ``register(typeid, callable)`` adds a method ``typeid(*args, **kwds)``, which calls ``callable(*args,
    **kwds)`` in the calling process and stores the object it returns, pickled whole, in the state store, where
    every process can reach it (workers on other hosts too); it returns a picklable proxy (``proxytype``, by
    default one with a method for each name in ``exposed`` or, without it, each public method of the object).
    A method call loads the object, runs the method on that copy and stores it back, only if no other call
    changed it meanwhile (otherwise it runs again on the new state), so calls are atomic and none is lost; a
    call that raises changes nothing, and its exception is raised in the caller. So the object must be
    picklable and small, its methods should act on the object only (they may run more than once), and a
    method that waits for other processes (a ``queue.Queue.get``) cannot work: use the manager's own
    ``Queue``, ``Event``, ... ``method_to_typeid`` is not supported (results are returned as copies);
    ``address``, ``authkey`` and ``serializer`` are accepted and ignored (there is no server to reach:
    ``connect()`` only marks the manager started).

    Objects are deleted by ``shutdown()``, or earlier once nothing refers to them (see the module docstring).
    """

    _registry: dict[str, tuple] = {}

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *, shutdown_timeout=1.0):
        self.address = address
        self._objects: list = []  # the finalizers of what this manager made: shutdown() runs them
        self._counted: list[tuple[str, str]] = []  # (url, name) of the counted objects made: shutdown() deletes them
        self._proxies: weakref.WeakSet = weakref.WeakSet()  # dict, list, Namespace: unusable after shutdown()
        self._pools: weakref.WeakSet = weakref.WeakSet()
        self._prune_at = 1024
        self._started = False

    @classmethod
    def register(cls, typeid: str, callable: Callable | None = None, proxytype: type | None = None,  # noqa: A002
                 exposed=None, method_to_typeid=None, create_method: bool = True) -> None:
        """Register a type: see the class docstring."""
        if method_to_typeid:
            raise NotImplementedError("method_to_typeid is not supported: a method's result is returned as a copy")
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        if exposed is None and proxytype is not None:
            exposed = proxytype._exposed_
        cls._registry[typeid] = (callable, None if exposed is None else tuple(exposed), proxytype)
        if create_method:
            def create(self, /, *args, **kwds):
                return self._create(typeid, args, kwds)

            create.__name__ = create.__qualname__ = typeid
            setattr(cls, typeid, create)

    def _create(self, typeid: str, args: tuple, kwds: dict) -> BaseProxy:
        factory, exposed, proxytype = self._registry[typeid]
        if factory is None:
            raise NotImplementedError(f"{typeid!r} was registered without a callable, to reach a manager server's "
                                      "object: there is none here; register the callable in this process")
        referent = self._make(_Referent, _name(typeid), factory, args, kwds)
        self._counted.append((referent.url, referent.name))
        if exposed is None:
            exposed = tuple(public_methods(referent.__dict__.pop("_made")))
        return (proxytype or _auto_proxy_type(exposed))(referent, typeid, exposed)

    def get_server(self):
        raise NotImplementedError("there is no manager server: the objects live in the state store; call start()")

    def start(self, initializer=None, initargs=()) -> None:
        if self._started:
            raise RuntimeError("Already started server")
        if initializer is not None:
            initializer(*initargs)
        self._started = True

    def connect(self) -> None:
        self._started = True

    def shutdown(self) -> None:
        """Delete every object this manager created, whatever still refers to it."""
        objects, self._objects = self._objects, []
        counted, self._counted = self._counted, []
        names = set(counted)
        for finalizer in objects:
            info = finalizer.peek()
            if info and all(isinstance(h, _Reference) and (h.url, h.name) in names for h in info[2][0]):
                finalizer.detach()  # a reference to an object deleted below
            else:
                finalizer()
        for url in dict.fromkeys(url for url, _ in counted):
            try:
                _delete_counted(url, [name for u, name in counted if u == url])
            except (redis.RedisError, StateError):  # the server is gone: so are the objects
                pass
        for proxy in list(self._proxies):
            proxy._deleted = True
        for pool in list(self._pools):
            pool.terminate()
        self._started = False

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: there is no manager process."""

    def __enter__(self):
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def _number_of_objects(self) -> int:
        """How many objects this manager made are still in the store (or owned by a live object)."""
        self._prune_counted()
        owned = [f.peek() for f in self._objects]
        return len(self._counted) + sum(1 for info in owned if info and not isinstance(info[2][0][0], _Reference))

    def _debug_info(self) -> str:
        self._prune_counted()
        return "\n".join(name for _, name in self._counted)

    def _prune_counted(self) -> None:
        """Forget the counted objects already deleted (one round trip per store)."""
        alive = []
        for url in dict.fromkeys(url for url, _ in self._counted):
            names = [name for u, name in self._counted if u == url]
            with _client_for(url).pipeline(transaction=False) as p:
                for name in names:
                    p.exists(_REFS_PREFIX + name)
                alive += [(url, name) for name, found in zip(names, p.execute(), strict=True) if found]
        self._counted = alive

    def _make(self, factory, *args, **kwargs):
        """``factory(*args, **kwargs)``, whose store data (nested objects' included) shutdown() deletes."""
        if not self._started:
            raise AssertionError("server not yet started")
        obj, finalizers = _collect(factory, *args, **kwargs)
        self._objects.extend(finalizers)
        if len(self._objects) + len(self._counted) >= self._prune_at:  # forget those already collected
            self._objects = [f for f in self._objects if f.alive]
            self._prune_counted()
            self._prune_at = 2 * (len(self._objects) + len(self._counted)) + 1024
        return obj


class SyncManager(BaseManager):
    """``multiprocessing.managers.SyncManager`` without a server process (see :class:`BaseManager`).

    As in the standard library, the ``dict``, ``list``, ``Namespace`` and ``Value`` objects (and those of
    registered types) are deleted once no proxy, in any process, and no manager ``dict`` or ``list`` item
    refers to them, or at ``shutdown()``: a proxy pickled to another process holds a reference once it is
    unpickled there, so keep the proxy until that process has started. The other objects (``Queue``,
    ``Lock``, ``Array``, ...) are deleted when the proxy the manager returned is garbage-collected in this
    process, even if a container still refers to it.
    """

    def _proxy(self, cls, kind: str):
        """A new counted ``cls`` (a state container)."""
        proxy = cls(_name(kind))
        self._counted.append((proxy.url, proxy.name))
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

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):  # noqa: N802
        """A :class:`cloudbutton.multiprocessing.Pool` that ``shutdown()`` terminates. Unlike the standard
        library's pool proxy it cannot be pickled: it is used from this process (its tasks run anywhere)."""
        from .pool import Pool

        if not self._started:
            raise AssertionError("server not yet started")
        pool = Pool(processes, initializer, initargs, maxtasksperchild, context)
        self._pools.add(pool)
        return pool

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
        proxy = self._make(ValueProxy, typecode, value)
        self._counted.append((proxy._ref.url, proxy._ref.name))
        return proxy

    def Array(self, typecode, sequence, lock=True) -> values._RawArray:  # noqa: N802
        """An array proxy (``len``, indexing, slicing); as in the standard library, ``lock`` is ignored."""
        return self._make(values.RawArray, typecode, sequence)


def Manager() -> SyncManager:  # noqa: N802 - the standard library's name
    """A started ``SyncManager`` (no process is started: the objects live in the state store)."""
    manager = SyncManager()
    manager.start()
    return manager
