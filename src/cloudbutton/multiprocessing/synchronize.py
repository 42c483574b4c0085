"""``multiprocessing.synchronize`` over the state store: Lock, RLock, Semaphore, BoundedSemaphore,
Condition, Event and Barrier.

Each object is a picklable handle to uniquely named objects of :mod:`cloudbutton.state`, created in the
calling process and passed to ``Process``/``Pool`` targets as arguments, as in standard-library code.
Blocking waits block on the server (no polling), wherever the worker runs.

Lifetime: the object made in the creating process owns its data in the store, which is deleted when that
object is garbage-collected, at interpreter exit, or by ``Manager.shutdown()`` for objects a manager
made (as the standard library unlinks a semaphore when its creator's object is finalized). Pickled
copies never delete anything. Unlike the standard library's, these objects may be pickled at any time,
e.g. put in a Queue or passed in ``Pool.map`` arguments.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import weakref
from typing import Any

from .. import state
from ..errors import LockNotHeldError, StateError
from ..state.objects import _state_op, run_script
from ..state.sync import _Deadline, _SyncObject, _wait_broadcast

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "Semaphore"]

LEASE = 10.0
"""Default lease of a Lock (s): how long after its holder dies it becomes free. A live holder keeps it."""

_TOO_MANY = "semaphore or lock released too many times"


class ReleasedTooManyTimes(ValueError, RuntimeError):
    """A lock or bounded semaphore released when not held: the ``ValueError`` of ``multiprocessing``'s
    locks, and the ``RuntimeError`` of ``threading``'s (what a ``Manager().Lock()`` raises)."""


def _name(kind: str) -> str:
    return f"mp:{kind}:{uuid.uuid4().hex}"


def _delete(handles: tuple, pid: int | None = None) -> None:
    """Delete ``handles`` (in the process ``pid`` that made them only: not in a forked child)."""
    if pid is not None and pid != os.getpid():
        return
    for handle in handles:
        try:
            handle.delete()
        except StateError:  # the server is gone (e.g. stopped at exit): so is the data
            pass


def _timeout(block: bool, timeout: float | None) -> dict:
    """The standard library's (block, timeout) as ``state``'s: no timeout without blocking, negative as 0."""
    if not block:
        return {"blocking": False}
    return {"timeout": None if timeout is None else max(timeout, 0.0)}


_collecting = threading.local()  # .finalizers: a list that records those made meanwhile (see _collect)


def _finalize(obj, handles: tuple) -> weakref.finalize:
    """Delete ``handles`` when ``obj`` is finalized (garbage-collected or at exit)."""
    finalizer = weakref.finalize(obj, _delete, handles, os.getpid())
    made = getattr(_collecting, "finalizers", None)
    if made is not None:
        made.append(finalizer)
    return finalizer


def _collect(factory, *args, **kwargs) -> tuple[Any, list[weakref.finalize]]:
    """``factory(*args, **kwargs)`` and the finalizers of every object it made, nested ones included."""
    outer = getattr(_collecting, "finalizers", None)
    _collecting.finalizers = made = []
    try:
        return factory(*args, **kwargs), made
    finally:
        _collecting.finalizers = outer
        if outer is not None:
            outer.extend(made)


class _Shared:
    """Base of the objects whose store data the creating object owns (deleted when it is finalized)."""

    _finalizer: weakref.finalize | None = None

    def _own(self, *handles) -> None:
        if self._finalizer is not None:  # a subclass adds its own handles
            handles = (*self._finalizer.detach()[2][0], *handles)
        self._finalizer = _finalize(self, handles)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_finalizer", None)
        return state


# --- renewing the leases of held locks ---------------------------------------------------------------

class _Renewer:
    """One daemon thread per process renews the lease of every Lock held here, a third of a lease after it
    was taken or last renewed, as long as the Lock object that took it is alive. So a live holder keeps a
    lock as long as it likes, and a lock whose holder died, or dropped the object without releasing it (e.g.
    a Process that returned holding it), is free a lease later."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._held: dict[int, tuple[weakref.ref, state.Lock, float]] = {}  # id(handle) -> (owner, handle, due)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake = math.inf

    def add(self, owner: Lock, handle: state.Lock) -> None:
        due = time.monotonic() + handle.lease / 3
        with self._cond:
            self._held[id(handle)] = (weakref.ref(owner), handle, due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cloudbutton-lock-leases", daemon=True)
                self._thread.start()
            elif due < self._wake:
                self._cond.notify()

    def discard(self, handle: state.Lock) -> None:
        with self._cond:
            self._held.pop(id(handle), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                for key, (owner, handle, due) in list(self._held.items()):
                    now = time.monotonic()
                    if owner() is None:
                        del self._held[key]
                        continue
                    if due > now:
                        continue
                    try:
                        handle.renew()
                        self._held[key] = (owner, handle, now + handle.lease / 3)
                    except LockNotHeldError:  # lost (e.g. this process was stopped longer than the lease)
                        del self._held[key]
                    except StateError:  # unreachable for now: try again soon
                        self._held[key] = (owner, handle, now + min(handle.lease / 3, 1.0))
                self._wake = min((due for _, _, due in self._held.values()), default=math.inf)
                self._cond.wait(None if self._wake == math.inf else max(self._wake - time.monotonic(), 0))


_renewer = _Renewer()
os.register_at_fork(after_in_child=_renewer._reset)  # a forked child holds none of its parent's locks


# --- locks -------------------------------------------------------------------------------------------

class Lock(_Shared):
    """``multiprocessing.Lock``: a non-recursive lock shared between processes.

    Any thread or process may release it, as in the standard library; releasing it when it is not held
    raises ``ValueError``. A holder whose process dies (even by ``kill -9``), or that drops the object
    without releasing it (e.g. a Process that returns holding it), stops blocking others ``lease`` seconds
    later; a live holder keeps the lock as long as it likes (its lease is renewed in the background).
    ``lease`` is not a standard-library argument.
    """

    def __init__(self, *, lease: float = LEASE):
        self._lock = state.Lock(_name(type(self).__name__), lease=lease)
        self._holder: state.Lock | None = None
        self._own(self._lock)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        handle = state.Lock._from_handle(self._lock.name, self._lock.url)  # its own owner token
        handle.lease = self._lock.lease
        if not handle.acquire(**_timeout(block, timeout)):
            return False
        self._holder = handle  # only the holder writes it, until it releases
        _renewer.add(self, handle)
        return True

    def release(self) -> None:
        handle, self._holder = self._holder, None  # cleared first: a new holder may set it right after
        if handle is None:  # held by another process, maybe: the standard library lets any process release it
            if not self._lock.release_any():
                raise ReleasedTooManyTimes(f"{_TOO_MANY}: {self!r} is not held")
            return
        _renewer.discard(handle)
        try:
            handle.release()
        except LockNotHeldError:  # another process released it meanwhile
            raise ReleasedTooManyTimes(f"{_TOO_MANY}: {self!r} is not held") from None

    def _is_mine(self) -> bool:
        return self._holder is not None

    def _release_all(self) -> int:
        """Release completely (for Condition.wait); return what ``_restore`` needs to take it back."""
        self.release()
        return 1

    def _restore(self, count: int) -> None:
        self.acquire()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is not None and not self._is_mine():
            return  # the failure lost the lock (e.g. Condition.wait could not take it back): let it through
        self.release()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_holder"] = None  # a copy does not hold the lock
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._lock.name!r})>"


class RLock(Lock):
    """``multiprocessing.RLock``: the thread that holds it may acquire it again; it is free once released
    as many times. Releasing it from another thread or process raises ``AssertionError``, as in the
    standard library."""

    def __init__(self, *, lease: float = LEASE):
        super().__init__(lease=lease)
        self._owner: int | None = None
        self._count = 0

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            self._count += 1
            return True
        if not super().acquire(block, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise AssertionError("attempt to release recursive lock not owned by thread")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            super().release()

    def _is_mine(self) -> bool:
        return self._owner == threading.get_ident()

    def _release_all(self) -> int:
        count, self._count, self._owner = self._count, 0, None
        Lock.release(self)
        return count

    def _restore(self, count: int) -> None:
        Lock.acquire(self)
        self._owner, self._count = threading.get_ident(), count

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_owner": None, "_count": 0}


# --- semaphores --------------------------------------------------------------------------------------

class Semaphore(_Shared):
    """``multiprocessing.Semaphore``: ``value`` permits shared between processes; ``release`` is unbounded.
    A holder that dies without releasing loses its permit."""

    def __init__(self, value: int = 1):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._sem = state.Semaphore(_name(type(self).__name__), value)
        self._own(self._sem)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return self._sem.acquire(**_timeout(block, timeout))

    def release(self) -> None:
        self._sem.release()

    def get_value(self) -> int:
        return self._sem.get_value()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()})>"


class BoundedSemaphore(Semaphore):
    """``multiprocessing.BoundedSemaphore``: releasing more permits than were acquired raises ``ValueError``.

    A second semaphore counts the permits taken: ``acquire`` adds one after taking a permit, ``release``
    must take one back before returning the permit, so an extra release cannot pass unnoticed.
    """

    def __init__(self, value: int = 1):
        super().__init__(value)
        self._taken = state.Semaphore(_name("BoundedSemaphoreTaken"), 0)
        self._own(self._taken)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if not super().acquire(block, timeout):
            return False
        self._taken.release()
        return True

    def release(self) -> None:
        if not self._taken.acquire(blocking=False):
            raise ReleasedTooManyTimes(_TOO_MANY)
        super().release()


# --- condition and event -----------------------------------------------------------------------------

class Condition(_Shared):
    """``multiprocessing.Condition``: ``wait`` releases the lock (an RLock by default) and blocks until a
    ``notify``; waiters are woken in the order they started waiting.

    Each waiter enqueues the name of its own wake-up semaphore in a shared list; ``notify(n)`` pops the
    first ``n`` names and releases their semaphores. A waiter that times out removes its name, unless a
    notifier already took it (then it takes the wake-up and returns True), so no notification is lost
    between live processes; one sent to a waiter whose process died is lost with it.
    """

    def __init__(self, lock: Lock | None = None):
        self._lock = RLock() if lock is None else lock
        self._waiters = state.SharedList(_name(type(self).__name__))
        self._own(self._waiters)
        self.acquire, self.release = self._lock.acquire, self._lock.release

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.acquire, self.release = self._lock.acquire, self._lock.release

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["acquire"], state["release"]
        return state

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc_info) -> None:
        self._lock.__exit__(*exc_info)

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock._is_mine():
            raise AssertionError("must acquire() condition before using wait()")
        wake = state.Semaphore(_name("ConditionWaiter"), 0)
        try:
            self._waiters.append(wake.name)
            count = self._lock._release_all()
            try:
                woken = wake.acquire(**_timeout(True, timeout))
                if not woken:
                    try:
                        self._waiters.remove(wake.name)
                    except ValueError:  # a notifier took this waiter meanwhile: its wake-up is on its way
                        woken = wake.acquire(timeout=LEASE)  # (bounded, in case the notifier just died)
                return woken
            finally:
                self._lock._restore(count)
        finally:
            wake.delete()

    def wait_for(self, predicate, timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (at most ``timeout`` seconds); return its last value."""
        result = predicate()
        end = None if timeout is None else time.monotonic() + timeout
        while not result:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        for _ in range(n):
            try:
                name = self._waiters.pop(0)
            except IndexError:
                return
            state.Semaphore(name, 0).release()

    def notify_all(self) -> None:
        self.notify(n=len(self._waiters) or 1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._lock!r}, waiters={len(self._waiters)})>"


_EVENT_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('RPUSH', KEYS[1], '1') end
return 1
"""


class _Flag(_SyncObject):
    """An Event's store data: one list, holding one element while the event is set. ``wait`` blocks on it
    as :class:`cloudbutton.state.CountDownLatch` does (``BLMOVE`` of the list onto itself), so ``set`` wakes
    every waiter and each operation is one round trip."""

    _type_name = "Event"

    def __init__(self, name: str, url: str | None = None):
        super().__init__(name, url)
        self._open()

    @_state_op
    def _open(self) -> None:
        self._r  # noqa: B018  (connect and claim the name now)

    @_state_op
    def set(self) -> None:
        run_script(self._r, _EVENT_SET, [self._key], [])

    @_state_op
    def clear(self) -> None:
        self._r.delete(self._key)

    @_state_op
    def is_set(self) -> bool:
        return bool(self._r.exists(self._key))

    @_state_op
    def wait(self, timeout: float | None) -> bool:
        return _wait_broadcast(self._waiter, self._key, _Deadline(timeout)) is not None


class Event(_Shared):
    """``multiprocessing.Event``: a flag that processes set, clear and wait for. ``wait(timeout)`` blocks on
    the server for at most ``timeout`` seconds; ``set`` wakes every waiter."""

    def __init__(self):
        self._flag = _Flag(_name(type(self).__name__))
        self._own(self._flag)

    def is_set(self) -> bool:
        return self._flag.is_set()

    def set(self) -> None:
        self._flag.set()

    def clear(self) -> None:
        self._flag.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self._flag.wait(None if timeout is None else max(timeout, 0.0))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


# --- barrier -----------------------------------------------------------------------------------------

class Barrier(_Shared):
    """``multiprocessing.Barrier``: ``parties`` processes wait for each other; ``wait`` returns each one a
    distinct index (arrival order). A timeout, ``abort()`` or a failing ``action`` breaks it:
    waiters raise ``threading.BrokenBarrierError`` (as :class:`cloudbutton.errors.BrokenBarrierError`).

    With an ``action``, the last party to arrive runs it while the others wait in a second round of the
    same barrier, so nobody passes before the action is done (as in the standard library).
    """

    def __init__(self, parties: int, action=None, timeout: float | None = None):
        self._barrier = state.Barrier(_name(type(self).__name__), parties, timeout)
        self._action = action
        self._own(self._barrier)

    def wait(self, timeout: float | None = None) -> int:
        index = self._barrier.wait(timeout)
        if self._action is None:
            return index
        if index == self.parties - 1:
            try:
                self._action()
            except BaseException:
                self._barrier.abort()
                raise
        self._barrier.wait(timeout)
        return index

    def reset(self) -> None:
        self._barrier.reset()

    def abort(self) -> None:
        self._barrier.abort()

    @property
    def parties(self) -> int:
        return self._barrier.parties

    @property
    def n_waiting(self) -> int:
        return self._barrier.n_waiting

    @property
    def broken(self) -> bool:
        return self._barrier.broken

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(parties={self.parties}, waiting={self.n_waiting})>"
