"""Synchronization primitives and a queue shared by name through the state server.

``Lock``, ``Semaphore``, ``Barrier``, ``CountDownLatch``, ``Future`` and ``Queue`` are handles like the
other shared objects: picklable (name, URL and their settings travel, nothing else), usable from the
client, its threads and any worker. Every state change is one Lua script or one list command on the
server, so processes never race on a client-side read-modify-write.

Waiting never spins: a waiter blocks on a list (``BLPOP``, or ``BLMOVE`` of a list onto itself, which
wakes every waiter without consuming the element) that the releasing side pushes to in the same
script that changes the state, so a wake-up cannot fall between a check and a wait. The blocking
commands go through a second client whose socket timeout is twice ``state_timeout``, in slices of at
most ``state_timeout`` up to the caller's deadline, so ``timeout=None`` waits forever without the
client timing out, and a stopped server surfaces as :class:`~cloudbutton.errors.StateError`.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
import uuid
from typing import Any

import redis

from ..errors import BrokenBarrierError, InvalidStateError, LockNotHeldError, StateError, WaitTimeoutError
from .objects import PREFIX, SharedObject, _check_int, _client_for, _dumps, _state_op, run_script

_WAKE_TTL_MS = 86_400_000
"""Wake-up elements nobody popped (their waiter died) are dropped by the server after a day."""


class _Deadline:
    """The end of a wait; a ``None`` timeout never ends."""

    def __init__(self, timeout: float | None):
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be a non-negative number or None, not {timeout!r}")
        self._end = None if timeout is None else time.monotonic() + timeout

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def block_for(self, r: redis.Redis, cap: float | None = None) -> float:
        """Seconds the next blocking command on the client ``r`` may wait: up to the deadline (and ``cap``),
        at most half the client's socket timeout (the server may answer a blocked command late; a reply
        later than the socket timeout would be an error), and never 0 (the server's "forever")."""
        limit = (r.connection_pool.connection_kwargs.get("socket_timeout") or 5.0) / 2
        if cap is not None:
            limit = min(limit, cap)
        if self._end is not None:
            limit = min(limit, self._end - time.monotonic())
        return round(max(limit, 0.001), 3)


def _deadline(blocking: bool, timeout: float | None) -> _Deadline:
    if not blocking:
        if timeout is not None:
            raise ValueError("a timeout cannot be given with blocking=False")
        return _Deadline(0)
    return _Deadline(timeout)


class _SyncObject(SharedObject):
    """A shared object with settings that travel with its handle and auxiliary keys deleted with it."""

    _settings: tuple[str, ...] = ()
    _aux_kinds: tuple[str, ...] = ()

    def __reduce__(self):
        rebuild, args, state = super().__reduce__()
        return rebuild, args, {**state, **{attr: getattr(self, attr) for attr in self._settings}}

    def _aux(self, kind: str) -> str:
        """The key of an auxiliary structure (wake-up list, settings); cannot clash with another name's."""
        return f"{PREFIX}sync:{kind}:{self.name}"

    def _keys(self) -> list[str]:
        return [self._key, *(self._aux(kind) for kind in self._aux_kinds)]

    @property
    def _waiter(self) -> redis.Redis:
        """The client for blocking commands (its socket timeout is twice ``state_timeout``)."""
        self._r  # noqa: B018  (connects and claims the name first)
        return _client_for(self.url, waiting=True)

    def _check_setting(self, what: str, stored: Any, given: Any) -> None:
        stored = int(stored)
        if stored != given:
            raise StateError(
                f"{self!r} already exists with {what}={stored}, not {given}; use the same {what} or delete it first"
            )


# --- Lock ---------------------------------------------------------------------------------------------

_owner_lock = threading.Lock()
"""Guards the owner tokens of Lock handles, which threads sharing a handle set and clear."""

_LOCK_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
return {0, redis.call('PTTL', KEYS[1])}
"""

_LOCK_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder then return -1 end
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

_LOCK_RELEASE_ANY = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

_LOCK_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder then return -1 end
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class Lock(_SyncObject):
    """A mutual-exclusion lock shared by name, held for at most ``lease`` seconds.

    ``acquire`` gives the handle a fresh owner token stored under the lock's key with an expiry of
    ``lease`` seconds. ``release`` (and ``renew``, which restarts the lease) succeed only while that
    token is still the one stored: releasing a lock this handle does not hold, or whose lease expired
    (whether or not another holder took it since), raises :class:`~cloudbutton.errors.LockNotHeldError`,
    so an overrun critical section is reported instead of silently overlapping. A holder that dies stops
    blocking others ``lease`` seconds after it acquired (or last renewed) the lock.

    Ownership belongs to the handle object (as with :class:`threading.Lock`, any thread using the handle
    may release it): a pickled copy (e.g. sent to a worker) does not hold the lock. The lock is not
    reentrant and not fair. Waiters block on a wake-up list pushed by ``release``, and never longer than
    the remaining lease, so they notice an expired holder without polling.
    """

    _type_name = "Lock"
    _settings = ("lease",)
    _aux_kinds = ("wake",)
    _owner: str | None = None

    def __init__(self, name: str, lease: float = 30.0, url: str | None = None):
        if not lease > 0:
            raise ValueError(f"a Lock's lease must be a positive number of seconds, not {lease!r}")
        super().__init__(name, url)
        self.lease = lease
        self._claim()

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    @_state_op
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (``None`` or -1: forever, as with
        :class:`threading.Lock`); return whether it was taken."""
        if timeout == -1:
            timeout = None
        deadline = _deadline(blocking, timeout)
        r, w = self._r, self._waiter
        token = uuid.uuid4().hex
        while True:
            taken, ttl_ms = run_script(r, _LOCK_ACQUIRE, [self._key], [token, self._lease_ms])
            if taken:
                with _owner_lock:
                    self._owner = token
                return True
            if deadline.expired():
                return False
            w.blpop([self._aux("wake")], deadline.block_for(w, ttl_ms / 1000 if ttl_ms >= 0 else None))

    @_state_op
    def release(self) -> None:
        """Release the lock held by this handle; wake one waiter."""
        token = self._owner
        done = run_script(self._r, _LOCK_RELEASE, [self._key, self._aux("wake")], [token or "", _WAKE_TTL_MS])
        self._forget(token)  # released or lost either way
        self._check_held(done, token, "release")

    @_state_op
    def release_any(self) -> bool:
        """Release the lock whoever holds it (``multiprocessing.Lock`` lets any process release it); wake
        one waiter. False if it was not held. The holder finds out when it renews or releases."""
        return run_script(self._r, _LOCK_RELEASE_ANY, [self._key, self._aux("wake")], [_WAKE_TTL_MS]) == 1

    @_state_op
    def renew(self) -> None:
        """Restart the lease of the lock held by this handle (for critical sections longer than ``lease``)."""
        token = self._owner
        done = run_script(self._r, _LOCK_RENEW, [self._key], [token or "", self._lease_ms])
        if done != 1:
            self._forget(token)
        self._check_held(done, token, "renew")

    def _forget(self, token: str | None) -> None:
        """Drop the owner token ``token``, unless another thread using this handle acquired the lock since."""
        with _owner_lock:
            if self._owner == token:
                self._owner = None

    def _check_held(self, done: int, token: str | None, action: str) -> None:
        if done == 1:
            return
        if token is None:
            why = "this handle has not acquired it"
        elif done == -1:
            why = f"its lease of {self.lease} s expired and another holder took it"
        else:
            why = f"its lease of {self.lease} s expired"
        raise LockNotHeldError(f"cannot {action} {self!r}: {why}")

    @_state_op
    def locked(self) -> bool:
        """Whether any holder has the lock now."""
        return bool(self._r.exists(self._key))

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


# --- Semaphore ----------------------------------------------------------------------------------------

_SEM_OPEN = """
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  for i = 1, tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], '1') end
end
return 1
"""


class Semaphore(_SyncObject):
    """A counting semaphore shared by name: a list of ``value`` permits on the server.

    ``value`` is stored only if the semaphore does not exist yet. ``acquire`` pops a permit (waiters are
    served first come, first served); ``release`` pushes permits back, without an upper bound (like
    :class:`threading.Semaphore`). A holder that dies without releasing loses its permit.
    """

    _type_name = "Semaphore"
    _aux_kinds = ("init",)

    def __init__(self, name: str, value: int = 1, url: str | None = None):
        _check_int(value, "a Semaphore's value", 0)
        super().__init__(name, url)
        self._open(value)

    @_state_op
    def _open(self, value: int) -> None:
        run_script(self._r, _SEM_OPEN, [self._key, self._aux("init")], [value])

    @_state_op
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a permit, waiting up to ``timeout`` seconds (``None``: forever); return whether one was taken."""
        deadline = _deadline(blocking, timeout)
        if self._r.lpop(self._key) is not None:
            return True
        w = self._waiter
        while not deadline.expired():
            if w.blpop([self._key], deadline.block_for(w)) is not None:
                return True
        return False

    @_state_op
    def release(self, n: int = 1) -> None:
        """Return ``n`` permits."""
        _check_int(n, "n", 1)
        self._r.rpush(self._key, *["1"] * n)

    @_state_op
    def get_value(self) -> int:
        """Permits available now."""
        return self._r.llen(self._key)

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


# --- Barrier ------------------------------------------------------------------------------------------

# Hash fields: parties, gen (the round), count (parties waiting in it), broken ('1' until reset).
# Waiters of round g block on the list 'round key(g)'; exactly one event pushes one token per waiter to
# it: 'go' when the last party arrives, 'broken' on timeout/abort/reset. ARGV[1..2] build round keys.

_BARRIER_ARRIVE = """
redis.call('HSETNX', KEYS[1], 'parties', ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'parties', 'gen', 'count', 'broken')
local parties, gen, count = tonumber(h[1]), h[2] or '0', tonumber(h[3] or '0')
if h[4] == '1' then return {-1, gen} end
if count + 1 < parties then
  redis.call('HSET', KEYS[1], 'count', count + 1)
  return {count, gen}
end
local round = ARGV[1] .. gen .. ARGV[2]
for i = 1, parties - 1 do redis.call('RPUSH', round, 'go') end
redis.call('PEXPIRE', round, ARGV[4])
redis.call('HSET', KEYS[1], 'count', 0)
redis.call('HINCRBY', KEYS[1], 'gen', 1)
return {count, gen}
"""

_BARRIER_BREAK = """
local h = redis.call('HMGET', KEYS[1], 'gen', 'count', 'broken')
local gen, count = h[1] or '0', tonumber(h[2] or '0')
local round = ARGV[1] .. gen .. ARGV[2]
local mode = ARGV[3]
if mode == 'timeout' and gen ~= ARGV[4] then
  -- the waiter's round ended (completed or reset) before it gave up: its token is there
  return redis.call('LPOP', ARGV[1] .. ARGV[4] .. ARGV[2]) or 'broken'
end
if h[3] == '1' then
  if mode == 'timeout' then return redis.call('LPOP', round) or 'broken' end
else
  local wake = count
  if mode == 'timeout' then wake = count - 1 end
  for i = 1, wake do redis.call('RPUSH', round, 'broken') end
  if wake > 0 then redis.call('PEXPIRE', round, ARGV[5]) end
  redis.call('HSET', KEYS[1], 'broken', '1')
end
if mode == 'reset' then
  redis.call('HSET', KEYS[1], 'broken', '0', 'count', 0)
  redis.call('HINCRBY', KEYS[1], 'gen', 1)
end
return 'broken'
"""


_BARRIER_DELETE = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
for g = math.max(gen - 1, 0), gen do redis.call('DEL', ARGV[1] .. g .. ARGV[2]) end
return redis.call('DEL', KEYS[1], KEYS[2])
"""
"""Delete the barrier, its type record and the wake-up lists of its current and previous rounds (the only
ones a broken or completed round can leave tokens in; older ones expire with _WAKE_TTL_MS)."""


class Barrier(_SyncObject):
    """A reusable barrier for ``parties`` processes or threads, shared by name.

    ``wait`` blocks until ``parties`` callers have called it in the current round, then releases them
    all and returns each one a distinct index in ``range(parties)`` (its arrival order). A ``wait`` that
    times out breaks the round: every caller waiting in it, and every later ``wait`` until ``reset()``,
    raises :class:`~cloudbutton.errors.BrokenBarrierError` (also a :class:`threading.BrokenBarrierError`);
    so does ``abort()``. ``parties`` is fixed when the barrier is first created; a handle with another
    number is a :class:`~cloudbutton.errors.StateError`.
    """

    _type_name = "Barrier"
    _settings = ("parties", "timeout")

    def __init__(self, name: str, parties: int, timeout: float | None = None, url: str | None = None):
        _check_int(parties, "a Barrier's number of parties", 1)
        _Deadline(timeout)  # validates it
        super().__init__(name, url)
        self.parties = parties
        self.timeout = timeout
        self._open()

    @_state_op
    def _open(self) -> None:
        r = self._r
        r.hsetnx(self._key, "parties", self.parties)
        self._check_setting("parties", r.hget(self._key, "parties"), self.parties)

    def _round_args(self) -> list[str]:
        """The prefix and suffix around a round number that make its key."""
        return [f"{PREFIX}sync:round:", f":{self.name}"]

    def _broken_error(self) -> BrokenBarrierError:
        return BrokenBarrierError(f"{self!r} is broken (a waiter timed out, or it was aborted or reset)")

    @_state_op
    def wait(self, timeout: float | None = None) -> int:
        """Wait for the other parties (at most ``timeout`` seconds, default the barrier's); return this
        caller's index in the round."""
        deadline = _Deadline(self.timeout if timeout is None else timeout)
        r, w = self._r, self._waiter
        prefix, suffix = self._round_args()
        index, gen = run_script(r, _BARRIER_ARRIVE, [self._key], [prefix, suffix, self.parties, _WAKE_TTL_MS])
        if index < 0:
            raise self._broken_error()
        if index == self.parties - 1:
            return index
        gen = gen.decode() if isinstance(gen, bytes) else str(gen)
        round_key = prefix + gen + suffix
        while True:
            if deadline.expired():
                outcome = run_script(
                    r, _BARRIER_BREAK, [self._key], [prefix, suffix, "timeout", gen, _WAKE_TTL_MS]
                )
                break
            popped = w.blpop([round_key], deadline.block_for(w))
            if popped is not None:
                outcome = popped[1]
                break
        if outcome == b"go":
            return index
        raise self._broken_error()

    @_state_op
    def abort(self) -> None:
        """Break the barrier: current and later waiters raise BrokenBarrierError until ``reset()``."""
        prefix, suffix = self._round_args()
        run_script(self._r, _BARRIER_BREAK, [self._key], [prefix, suffix, "abort", "", _WAKE_TTL_MS])

    @_state_op
    def reset(self) -> None:
        """Return the barrier to its empty, unbroken state; callers waiting now raise BrokenBarrierError."""
        prefix, suffix = self._round_args()
        run_script(self._r, _BARRIER_BREAK, [self._key], [prefix, suffix, "reset", "", _WAKE_TTL_MS])

    @_state_op
    def _delete(self) -> None:
        run_script(self._r, _BARRIER_DELETE, [self._key, self._type_key], self._round_args())

    @property
    @_state_op
    def n_waiting(self) -> int:
        """Callers waiting in the current round."""
        count, broken = self._r.hmget(self._key, "count", "broken")
        return 0 if broken == b"1" else int(count or 0)

    @property
    @_state_op
    def broken(self) -> bool:
        return self._r.hget(self._key, "broken") == b"1"


# --- CountDownLatch -----------------------------------------------------------------------------------

_LATCH_OPEN = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') and tonumber(ARGV[1]) == 0 then
  redis.call('RPUSH', KEYS[2], '1')
end
return 1
"""

_LATCH_COUNT_DOWN = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count <= 0 then return 0 end
count = redis.call('DECR', KEYS[1])
if count == 0 then redis.call('RPUSH', KEYS[2], '1') end
return count
"""


def _wait_broadcast(r: redis.Redis, key: str, deadline: _Deadline) -> bytes | None:
    """The element of the list ``key`` once it has one (None at the deadline), without consuming it:
    ``BLMOVE key key`` wakes every waiter."""
    while True:
        if deadline.expired():  # a last look, without blocking (the server's shortest block is ~10 ms)
            return r.lindex(key, 0)
        value = r.blmove(key, key, deadline.block_for(r), "LEFT", "RIGHT")
        if value is not None:
            return value


class CountDownLatch(_SyncObject):
    """A latch that opens, for good, once ``count_down()`` has been called ``count`` times.

    ``count`` is stored only if the latch does not exist yet; ``delete()`` it to use the name again.
    """

    _type_name = "CountDownLatch"
    _aux_kinds = ("open",)

    def __init__(self, name: str, count: int, url: str | None = None):
        _check_int(count, "a CountDownLatch's count", 0)
        super().__init__(name, url)
        self._open(count)

    @_state_op
    def _open(self, count: int) -> None:
        run_script(self._r, _LATCH_OPEN, [self._key, self._aux("open")], [count])

    @_state_op
    def count_down(self) -> int:
        """Decrease the count (not below 0); return the new count. Reaching 0 releases every waiter."""
        return run_script(self._r, _LATCH_COUNT_DOWN, [self._key, self._aux("open")], [])

    @_state_op
    def get_count(self) -> int:
        value = self._r.get(self._key)
        return 0 if value is None else int(value)

    @_state_op
    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the count is 0 (at most ``timeout`` seconds; ``None``: forever); return whether it is."""
        return _wait_broadcast(self._waiter, self._aux("open"), _Deadline(timeout)) is not None


# --- Future -------------------------------------------------------------------------------------------

_FUTURE_SET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


class Future(_SyncObject):
    """A one-shot promise shared by name: one process sets a result or an exception, any process waits for it.

    The outcome is a one-element list on the server; setting it a second time raises
    :class:`~cloudbutton.errors.InvalidStateError` (as :class:`concurrent.futures.Future` does).
    """

    _type_name = "Future"

    def __init__(self, name: str, url: str | None = None):
        super().__init__(name, url)
        self._claim()

    def set_result(self, value: Any) -> None:
        self._set(b"r" + _dumps(value, "the result"))

    def set_exception(self, exception: BaseException) -> None:
        if not isinstance(exception, BaseException):
            raise TypeError(f"set_exception needs an exception, not {type(exception).__name__}")
        self._set(b"e" + _dumps(exception, "the exception"))

    @_state_op
    def _set(self, data: bytes) -> None:
        if not run_script(self._r, _FUTURE_SET, [self._key], [data]):
            raise InvalidStateError(f"{self!r} already has a result or an exception")

    @_state_op
    def done(self) -> bool:
        return bool(self._r.exists(self._key))

    @_state_op
    def _outcome(self, timeout: float | None) -> tuple[bool, Any]:
        data = _wait_broadcast(self._waiter, self._key, _Deadline(timeout))
        if data is None:
            raise WaitTimeoutError(f"{self!r} has no result after {timeout} s")
        return data[:1] == b"r", pickle.loads(data[1:])

    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting up to ``timeout`` seconds (``None``: forever); re-raises a set exception.
        Raises :class:`~cloudbutton.errors.WaitTimeoutError` if nothing was set in time."""
        ok, value = self._outcome(timeout)
        if ok:
            return value
        raise value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception set (None if a result was set), waiting like ``result``."""
        ok, value = self._outcome(timeout)
        return None if ok else value


# --- Queue --------------------------------------------------------------------------------------------

_QUEUE_PUT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


class Queue(_SyncObject):
    """A FIFO queue of picklable items shared by name, with the interface of :class:`queue.Queue`.

    ``maxsize`` (0: unbounded) is fixed when the queue is first created; a handle with another value is
    a :class:`~cloudbutton.errors.StateError`. ``get`` and ``put`` raise :class:`queue.Empty` /
    :class:`queue.Full` when they cannot complete in time. Each item is delivered to exactly one
    ``get``; an item popped by a process that then dies is lost.
    """

    _type_name = "Queue"
    _settings = ("maxsize",)
    _aux_kinds = ("maxsize", "space")

    def __init__(self, name: str, maxsize: int = 0, url: str | None = None):
        _check_int(maxsize, "a Queue's maxsize", 0)
        super().__init__(name, url)
        self.maxsize = maxsize
        self._open()

    @_state_op
    def _open(self) -> None:
        r = self._r
        r.set(self._aux("maxsize"), self.maxsize, nx=True)
        self._check_setting("maxsize", r.get(self._aux("maxsize")), self.maxsize)

    @_state_op
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Append ``item``; on a full bounded queue wait up to ``timeout`` (``None``: forever), then raise Full."""
        data = _dumps(item, "a queue item")
        r = self._r
        if not self.maxsize:
            r.rpush(self._key, data)
            return
        deadline = _Deadline(timeout if block else 0)  # like queue.Queue: no wait, timeout ignored
        while not run_script(r, _QUEUE_PUT, [self._key], [data, self.maxsize]):
            if deadline.expired():
                raise queue.Full(f"{self!r} is full ({self.maxsize} items)")
            self._waiter.blpop([self._aux("space")], deadline.block_for(self._waiter))

    @_state_op
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, waiting up to ``timeout`` (``None``: forever), then raise Empty."""
        deadline = _Deadline(timeout if block else 0)  # like queue.Queue: no wait, timeout ignored
        r = self._r
        data = r.lpop(self._key)
        while data is None:
            if deadline.expired():
                raise queue.Empty(f"{self!r} is empty")
            popped = self._waiter.blpop([self._key], deadline.block_for(self._waiter))
            data = popped[1] if popped is not None else None
        if self.maxsize:
            with r.pipeline(transaction=False) as p:  # wake a waiting put; at most maxsize pending wake-ups
                p.rpush(self._aux("space"), "1")
                p.ltrim(self._aux("space"), 0, self.maxsize - 1)
                p.pexpire(self._aux("space"), _WAKE_TTL_MS)
                p.execute()
        return pickle.loads(data)

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    @_state_op
    def qsize(self) -> int:
        return self._r.llen(self._key)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self.maxsize) and self.qsize() >= self.maxsize
