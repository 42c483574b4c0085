"""User-defined shared objects: ``@shared`` turns a plain class into one whose state lives in the store.

::

    @shared
    class Accumulator:
        def __init__(self, k, d):
            self.sums = np.zeros((k, d))
            self.counts = np.zeros(k)

        def add(self, sums, counts):
            self.sums += sums
            self.counts += counts

    acc = Accumulator("centroids", 3, 2)    # the first construction with a name initialises it
    acc.add(s, c)                           # in any process, e.g. in workers: applied atomically

``Accumulator(name, *args, url=None, **kwargs)`` returns a small picklable handle (name + store URL).
If no object of that name exists yet, the class's own ``__init__(*args, **kwargs)`` builds the initial
state; otherwise the handle attaches to the existing object and the arguments are ignored, so every
process may construct it the same way (or with the name alone).

The state is the instance ``__dict__``, pickled. Public methods and properties of the class become
atomic operations; their return values are returned. A call is applied lock-free and optimistically:
the state and a random version tag are read in one round trip, the method runs locally on a copy, and a
Lua script stores the new state only if the tag is still the same (compare-and-set); otherwise it hands
back the current state and the method runs again on that. So no update is lost, a reader sees all of a
call's changes or none, and a method that raises changes nothing. A method may run more than once per
call: keep side effects other than on ``self`` out of it. A call that leaves the state unchanged (the
same pickle, or a state ``==`` to the one read) writes nothing. A call that keeps losing to other writers
for ``state_timeout`` seconds raises :class:`~cloudbutton.errors.StateError`. Every call moves the whole
state, so keep it small (centroids, counters, small tables). Class methods are not supported (a
TypeError at decoration); static methods are kept as they are.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import random
import time
from typing import Any

from ..errors import StateError
from .objects import SharedObject, _dumps, _redacted, _state_op, run_script

_INIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
return 1
"""

_CAS = """
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
  return 1
end
return redis.call('HMGET', KEYS[1], 'v', 's')
"""


class SharedClassObject(SharedObject):
    """Base of the handles made by :func:`shared`; ``__wrapped__`` is the plain class."""

    __wrapped__: type

    def __init__(self, name: str, *args: Any, url: str | None = None, **kwargs: Any):
        super().__init__(name, url)
        self._create(args, kwargs)

    @_state_op
    def _create(self, args: tuple, kwargs: dict) -> None:
        r = self._r
        if r.exists(self._key):
            return
        run_script(r, _INIT, [self._key], [os.urandom(8).hex(), self._dump(self._initial(args, kwargs))])

    def _initial(self, args: tuple, kwargs: dict) -> Any:
        """The object whose state is stored first."""
        return self.__wrapped__(*args, **kwargs)

    def _state_of(self, obj: Any) -> Any:
        """What is stored of ``obj``: its ``__dict__``."""
        return obj.__dict__

    def _dump(self, obj: Any) -> bytes:
        return _dumps(self._state_of(obj), f"the state of {self!r}")

    def _load(self, data: bytes) -> Any:
        obj = object.__new__(self.__wrapped__)
        obj.__dict__.update(pickle.loads(data))
        return obj

    @_state_op
    def _apply(self, func, args: tuple, kwargs: dict) -> Any:
        """Run ``func(state, *args, **kwargs)`` atomically (see the module docstring); return its result."""
        r = self._r
        timeout = r.get_connection_kwargs().get("socket_timeout") or 5.0  # state_timeout
        end = time.monotonic() + timeout
        tag, data = r.hmget(self._key, ["v", "s"])
        attempt = 0
        while True:
            if tag is None:
                raise StateError(f"the shared object {self!r} does not exist in {_redacted(self.url)} "
                                 "(it was deleted); construct it again to re-create it")
            obj = self._load(data)
            result = func(obj, *args, **kwargs)
            new = self._dump(obj)
            if new == data or _same_state(self._state_of(obj), data):
                return result
            answer = run_script(r, _CAS, [self._key], [tag, os.urandom(8).hex(), new])
            if answer == 1:
                return result
            tag, data = answer  # another call got in first: run again on its state
            attempt += 1
            if time.monotonic() >= end:
                raise StateError(f"a call on {self!r} lost to other writers {attempt} times in {timeout} s "
                                 "(state_timeout) and was not applied")
            time.sleep(random.random() * min(0.02, 0.0002 * 2**attempt))  # spread out colliding retries


def _same_state(state: Any, data: bytes) -> bool:
    """Whether ``state`` equals the state pickled in ``data`` (equal states may pickle differently, e.g. sets of
    strings, whose order depends on the process); False when ``==`` cannot tell (arrays)."""
    try:
        return bool(pickle.loads(data) == state)
    except Exception:
        return False


def _method(func):
    @functools.wraps(func)
    def call(self, *args, **kwargs):
        return self._apply(func, args, kwargs)

    return call


def _property(prop: property) -> property:
    fget = _method(prop.fget) if prop.fget else None
    fset = _method(prop.fset) if prop.fset else None
    fdel = _method(prop.fdel) if prop.fdel else None
    return property(fget, fset, fdel, prop.__doc__)


@functools.cache
def _handle_attributes() -> frozenset[str]:
    """Public attributes every handle has (``name``, ``url``, ``delete``, ...): a shared class may not define them."""
    handle = SharedClassObject._from_handle("x", "redis://127.0.0.1")  # connects to nothing
    return frozenset(a for a in (*dir(SharedClassObject), *vars(handle)) if not a.startswith("_"))


def shared(cls: type) -> type[SharedClassObject]:
    """Class decorator: a class whose instances are shared by name through the state store.

    Public methods and properties become atomic operations on the stored state (the instance
    ``__dict__``); other public class attributes are kept as they are. See the module docstring.
    """
    if not isinstance(cls, type):
        raise TypeError(f"@shared decorates a class, not {type(cls).__name__}")
    if not cls.__dictoffset__:
        raise TypeError(f"{cls.__qualname__} has no instance __dict__ (it uses __slots__); @shared stores the "
                        "instance __dict__")
    namespace: dict[str, Any] = {
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
        "__wrapped__": cls, "_type_name": f"{cls.__module__}.{cls.__qualname__}",
    }
    for attr in dir(cls):
        if attr.startswith("_"):
            continue
        if attr in _handle_attributes():
            raise TypeError(f"{cls.__qualname__}.{attr} clashes with the shared-object handle's own "
                            f"attribute {attr!r}; rename it")
        value = inspect.getattr_static(cls, attr)
        if isinstance(value, classmethod):
            raise TypeError(f"{cls.__qualname__}.{attr} is a classmethod, which @shared does not support (it "
                            "would receive the handle class); make it a staticmethod or a module function")
        if inspect.isfunction(value):
            namespace[attr] = _method(value)
        elif isinstance(value, property):
            namespace[attr] = _property(value)
        else:
            namespace[attr] = value
    return type(cls.__name__, (SharedClassObject,), namespace)
