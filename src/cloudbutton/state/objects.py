"""Shared objects: small picklable handles (name + store URL) to data in a Redis-protocol server.

A handle can be passed to functions as an argument (or captured by them) and used identically in the
client and in a worker: pickling keeps only the name, the URL and the handle's settings (``ttl``,
``consistency``, ``replicas``), and the new process connects lazily (one connection pool per URL per
process). Every operation is a single server-side command or Lua script, so concurrent updates are never
lost.

Names live under the ``cloudbutton:`` namespace. The first use of a name records its type; using the
same name with another type raises :class:`~cloudbutton.errors.StateError`.

Lifetime
--------
``ttl=seconds`` (a constructor argument) makes the object expire that long after its last write through a
handle with that ttl; the type record expires with it, so a job leaves nothing behind. Handles without a
ttl never remove one. ``delete()`` removes the object and its type record at once and ends the handle:
any later operation on it raises StateError naming the object (``delete()`` itself may be repeated).
Other handles to the same name, in this process or others, are not told: they see the object as new
(empty, 0 or None), and a write through them creates it again (in this process, with its type record;
a handle in another process that already checked the name does not write the record again). To reuse
the name, possibly with another type, construct a new handle.

Reference counts
----------------
A handle class with ``_counted = True`` (the ``Manager()`` proxies of :mod:`cloudbutton.multiprocessing`) makes
objects that delete themselves: the server keeps a count of the references to each (``cloudbutton:refs:NAME``),
changed only by server-side scripts. Each such handle alive in some process holds one (taken when it is
constructed or unpickled, dropped when it is garbage-collected or at exit), and so does each item of a
``SharedDict`` or ``SharedList`` that refers to it (an item stored with the names of the counted objects it
pickles; storing, overwriting and removing items change the counts in the same script). An object whose
count reaches zero is deleted, and the references its own items held are dropped in turn. ``pop``-like
operations hand the item's references over to the handles they return. ``delete()`` on a counted handle
deletes the object whatever its count. A container that holds itself, directly or not, lives until it is
deleted so; references from ``ttl`` containers that expire, or from processes killed before they could drop
theirs, are never dropped. A handle read from an item takes its reference just after the read: if the object
lost its last reference elsewhere meanwhile, that handle raises StateError when used. The scripts reach the
keys of the objects an item names, so counted objects need one server (not a Redis Cluster).

Consistency
-----------
Set per handle with ``consistency=`` and ``replicas=``:

- ``"strong"`` (default): every read and write goes to the primary server, so a read always sees every
  write that returned before it, from any process.
- ``"eventual"``: reads are served from a cache in this process, kept fresh by the server itself
  (RESP3 client tracking in broadcast mode on one extra connection per process and URL): when any client
  changes, deletes or expires the object, the server pushes an invalidation and the cached reply is
  dropped. A read may therefore return a value older than a write made elsewhere by at most the
  delivery time of that invalidation; writes from this process are seen at once. If the invalidation
  connection is lost (or the server stays silent for ``2 x state_timeout``) the cache is dropped and reads
  go to the server again. Writes are not cached and behave as with ``"strong"``.
- ``replicas=N`` (either mode): a write returns only after N replicas of the primary acknowledged it
  (``WAIT``); if they do not within ``state_timeout``, StateError is raised. The write is then applied on
  the primary (and readable there) but not known to be on N replicas.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib
import math
import operator
import os
import pickle
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any

import cloudpickle
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import resolve_config
from ..errors import StateError
from .server import state_url

PREFIX = "cloudbutton:"
_OBJ_PREFIX = PREFIX + "obj:"
_TYPE_PREFIX = PREFIX + "type:"
_REFS_PREFIX = PREFIX + "refs:"
CONSISTENCY_LEVELS = ("strong", "eventual")

_clients: dict[tuple[str, bool], redis.Redis] = {}
_trackers: dict[str, _Tracker] = {}
_clients_pid = os.getpid()
_clients_lock = threading.Lock()


class _Checked:
    """The (url, name, type) of names this process claimed recently: a bounded LRU set (a name that fell
    out is simply claimed again, one more round trip)."""

    MAX = 4096

    def __init__(self):
        self._items: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, token) -> bool:
        with self._lock:
            if token not in self._items:
                return False
            self._items.move_to_end(token)
            return True

    def __len__(self) -> int:
        return len(self._items)

    def add(self, token) -> None:
        with self._lock:
            self._items[token] = None
            self._items.move_to_end(token)
            while len(self._items) > self.MAX:
                self._items.popitem(last=False)

    def discard(self, token) -> None:
        with self._lock:
            self._items.pop(token, None)

    def discard_names(self, url: str, names: Iterable[str]) -> None:
        names = set(names)
        with self._lock:
            for token in [t for t in self._items if t[0] == url and t[1] in names]:
                del self._items[token]

    def discard_url(self, url: str) -> None:
        with self._lock:
            for token in [t for t in self._items if t[0] == url]:
                del self._items[token]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_checked = _Checked()

_CLAIM_TYPE = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return false end
local found = redis.call('GET', KEYS[1])
if found then return found end
if ARGV[2] == '0' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return ARGV[1]
"""

_CAS = """
local v = redis.call('GET', KEYS[1]) or ARGV[3]
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""
"""Set KEYS[1] to ARGV[2] if it holds ARGV[1] (a missing value counts as ARGV[3]); return whether it was set."""


def _forked() -> None:
    """Forget the parent's connections and caches in a forked child (call with _clients_lock held)."""
    global _clients_pid, _checked
    if _clients_pid != os.getpid():
        _clients.clear()
        _trackers.clear()
        _checked = _Checked()  # a new lock: a parent's thread may have held the old one at the fork
        _clients_pid = os.getpid()


def _client_for(url: str, waiting: bool = False) -> redis.Redis:
    """The process-wide client (with its connection pool) for ``url``.

    ``waiting=True``: a second client whose replies may take twice ``state_timeout``, for writes followed by
    a ``WAIT`` of up to ``state_timeout`` (so the socket timeout never fires first).
    """
    client = _clients.get((url, waiting))
    if client is not None and _clients_pid == os.getpid():
        return client
    with _clients_lock:
        _forked()
        client = _clients.get((url, waiting))
        if client is None:
            timeout = resolve_config().state_timeout
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=timeout,
                    socket_timeout=2 * timeout if waiting else timeout,
                    # One retry, on a connection found closed only: redis-py sends the whole command
                    # again, so after a timeout a write (INCRBY, RPUSH, a script) that had arrived would
                    # be applied twice; a connection the server had closed (idle timeout, CLIENT KILL)
                    # never delivered the command, so sending it again on a new one is safe.
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                )
            except ValueError as e:
                raise StateError(f"invalid state_url {url!r}: {e}") from None
            _clients[(url, waiting)] = client
        return client


def drop_clients(url: str) -> None:
    """Close and forget this process's clients, cache and claimed names for ``url`` (its server stopped)."""
    with _clients_lock:
        _forked()
        clients = [_clients.pop((url, waiting), None) for waiting in (False, True)]
        tracker = _trackers.pop(url, None)
        _checked.discard_url(url)
    for client in clients:
        if client is not None:  # connections in use by other threads fail on their own, with a StateError
            client.connection_pool.disconnect(inuse_connections=False)
    if tracker is not None:
        tracker.invalidate(None)


def _check_int(value: Any, what: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, not {value!r}")
    return value


def _redacted(url: str) -> str:
    """``url`` without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _state_op(method):
    """Turn redis-py connection/protocol errors into StateError naming the URL and the object."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StateError(
                f"state server {_redacted(self.url)} unreachable while using {self!r}: {e}"
            ) from None
        except redis.ResponseError as e:
            raise StateError(f"state server {_redacted(self.url)} refused an operation on {self!r}: {e}") from None
        except redis.RedisError as e:  # e.g. something that is not a Redis server answers at the URL
            raise StateError(f"state server {_redacted(self.url)} failed while using {self!r}: {e}") from None

    return wrapper


# --- the client-side cache of "eventual" handles ------------------------------------------------------

class _Tracker:
    """This process's cache of replies read through ``eventual`` handles of one URL.

    One RESP3 connection runs ``CLIENT TRACKING ON BCAST PREFIX cloudbutton:obj:``; a daemon thread reads
    the server's invalidation pushes and drops the cached replies of the keys named. A reply is cached
    only if no invalidation arrived while it was being read (``epoch`` unchanged), so a push that
    overtakes the reply it invalidates cannot leave a stale entry behind. (redis-py's own client-side
    cache, ``cache_config=``, refuses every server but Redis >= 7.4, Valkey included, hence this one.)
    """

    MAX_KEYS = 10_000

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.Lock()
        self.start_lock = threading.Lock()
        self.entries: dict[str, dict[Hashable, Any]] = {}
        self.epoch = 0
        self.listening = False

    def read(self, key: str, op: Hashable, fetch: Callable[[], Any]) -> Any:
        with self.lock:
            ops = self.entries.get(key)
            if ops is not None and op in ops:
                return ops[op]
        self._ensure_listening()
        with self.lock:
            epoch = self.epoch
        reply = fetch()
        with self.lock:
            if self.listening and self.epoch == epoch:
                if key not in self.entries and len(self.entries) >= self.MAX_KEYS:
                    del self.entries[next(iter(self.entries))]
                self.entries.setdefault(key, {})[op] = reply
        return reply

    def invalidate(self, keys: Iterable[str] | None) -> None:
        """Drop the replies cached for ``keys`` (all of them for None)."""
        with self.lock:
            self.epoch += 1
            if keys is None:
                self.entries.clear()
            else:
                for key in keys:
                    self.entries.pop(key, None)

    def _ensure_listening(self) -> None:
        if self.listening:
            return
        with self.start_lock:
            if self.listening:
                return
            timeout = resolve_config().state_timeout
            client = redis.Redis.from_url(
                self.url, protocol=3, socket_connect_timeout=timeout, socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            conn = client.connection_pool.get_connection()
            try:
                conn._parser.set_invalidation_push_handler(lambda push: push)  # return pushes to the reader
                conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", _OBJ_PREFIX)
                conn.read_response()
            except BaseException:
                conn.disconnect()
                raise
            with self.lock:
                self.listening = True
            threading.Thread(
                target=self._listen, args=(client, conn, timeout), name="cloudbutton-state-invalidations",
                daemon=True,
            ).start()

    def _listen(self, client: redis.Redis, conn, timeout: float) -> None:
        """Apply invalidations until the connection fails or the server is silent for two timeouts.

        ``client`` is held only so that its pool (which would close ``conn`` when collected) lives as long.
        """
        pinged = False
        try:
            while True:
                try:
                    push = conn.read_response(push_request=True, timeout=timeout, disconnect_on_error=False)
                except redis.TimeoutError:
                    if pinged:
                        return
                    conn.send_command("PING")
                    pinged = True
                    continue
                if isinstance(push, list) and len(push) == 2 and push[0] in (b"invalidate", "invalidate"):
                    keys = push[1]
                    self.invalidate(None if keys is None else [k.decode() if isinstance(k, bytes) else k
                                                               for k in keys])
                else:  # the reply to our PING
                    pinged = False
        except Exception:
            return
        finally:
            with self.lock:
                self.listening = False
                self.epoch += 1
                self.entries.clear()
            conn.disconnect()


def _tracker_for(url: str) -> _Tracker:
    tracker = _trackers.get(url)
    if tracker is not None and _clients_pid == os.getpid():
        return tracker
    with _clients_lock:
        _forked()
        return _trackers.setdefault(url, _Tracker(url))


def _invalidate_local(url: str, keys: list[str]) -> None:
    """Drop this process's cached replies for ``keys`` after a write, so it reads its own writes at once."""
    tracker = _trackers.get(url)
    if tracker is not None and _clients_pid == os.getpid():
        tracker.invalidate(keys)


# --- the base handle ----------------------------------------------------------------------------------

class SharedObject:
    """Base of the shared-object handles: a name, a store URL and a lazily made connection.

    Subclasses read with :meth:`_read` and write with :meth:`_write`, which apply the handle's ``ttl``,
    ``consistency`` and ``replicas``; objects stored under several keys list them in :meth:`_keys`.
    """

    _type_name = "object"
    _counted = False  # reference-counted: see "Reference counts"

    def __init__(self, name: str, url: str | None = None, *, ttl: float | None = None,
                 consistency: str = "strong", replicas: int = 0):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a shared object's name must be a non-empty string, not {name!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ValueError(f"ttl of {type(self).__name__}({name!r}) must be a positive number of seconds, "
                             f"not {ttl!r}")
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency of {type(self).__name__}({name!r}) must be one of "
                             f"{', '.join(CONSISTENCY_LEVELS)}, not {consistency!r}")
        _check_int(replicas, f"replicas of {type(self).__name__}({name!r})", 0)
        self.name = name
        self.url = url or state_url()
        self.ttl = ttl
        self.consistency = consistency
        self.replicas = replicas
        self._redis: redis.Redis | None = None
        self._pid = 0
        self._deleted: bool | str = False  # True: deleted through this handle; a str: why it is unusable
        self._key = _OBJ_PREFIX + name
        self._type_key = _TYPE_PREFIX + name
        self._token = (self.url, name, self._type_name)  # in _checked once this process claimed the name

    @classmethod
    def _from_handle(cls, name: str, url: str):
        self = cls.__new__(cls)
        SharedObject.__init__(self, name, url)
        return self

    def __reduce__(self):
        settings = {"ttl": self.ttl, "consistency": self.consistency, "replicas": self.replicas}
        if not self._counted:
            return type(self)._from_handle, (self.name, self.url), settings
        refs = getattr(_pickling, "refs", None)
        if refs is not None:  # pickled into a container's item: the item will hold a reference
            refs.append((self.url, self.name))
        return _rebuild_counted, (type(self), self.name, self.url), settings

    def _keep(self, reference: _Reference) -> None:
        """Hold ``reference`` (to this counted object) as long as this handle lives; subclasses may register
        the finalizer elsewhere."""
        weakref.finalize(self, reference.delete)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (other.name, other.url) == (self.name, self.url)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name, self.url))

    def _keys(self) -> list[str]:
        """The keys holding this object's data (expired and deleted together with its type record)."""
        return [self._key]

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000)) if self.ttl else 0

    @property
    def _r(self) -> redis.Redis:
        if self._deleted:
            raise StateError(self._deleted if isinstance(self._deleted, str) else
                             f"{self!r} was deleted through this handle; construct a new handle to use the name again")
        r = self._redis
        if r is None or self._pid != os.getpid() or self._token not in _checked:  # the latter: deleted elsewhere
            r = self._redis = self._connect()
            self._pid = os.getpid()
        return r

    @_state_op
    def _claim(self) -> None:
        """Connect and claim the name now (at construction), so a clash with another type is raised here. A
        counted handle takes its reference first (creating the count of a new object)."""
        if self._counted:
            _client_for(self.url).incr(_REFS_PREFIX + self.name)
            self._keep(_Reference(self.url, self.name))
        self._r  # noqa: B018

    @_state_op
    def _store_initial(self, stored: str | bytes | None) -> None:
        """Store an initial value (as stored) only if the object does not exist yet, so every process may
        construct the handle with the same arguments; with None, only claim the name."""
        if stored is None:
            self._claim()
        else:
            self._write(lambda c: c.set(self._key, stored, nx=True))

    def _connect(self) -> redis.Redis:
        r = _client_for(self.url)
        token = self._token
        if token not in _checked:
            found = run_script(r, _CLAIM_TYPE, [self._type_key, _REFS_PREFIX + self.name],
                               [self._type_name, self._ttl_ms, int(self._counted)])
            if found is None:
                raise StateError(_gone(self))
            found = found.decode() if isinstance(found, bytes) else found
            if found != self._type_name:
                raise StateError(
                    f"the shared name {self.name!r} is already used by a {found}, not a {self._type_name}; "
                    "delete it or pick another name"
                )
            _checked.add(token)
        return r

    def _read(self, op: Hashable, fetch: Callable[[redis.Redis], Any]) -> Any:
        """The reply of ``fetch(client)``, a read of this object; ``op`` names the read (its cache key)."""
        r = self._r
        if self.consistency == "strong":
            return fetch(r)
        return _tracker_for(self.url).read(self._key, op, lambda: fetch(r))

    def _write(self, command: Callable[[Any], Any], touch: bool = True) -> Any:
        """Run ``command(client)``, one write command on this object, and return its reply.

        With a ttl (and ``touch``) the expiry of the object's keys and type record is refreshed in the same
        round trip; with replicas, WAIT for them on the same connection.
        """
        r = self._r
        ttl_ms = self._ttl_ms if touch else 0
        if not ttl_ms and not self.replicas:
            reply = command(r)
            _invalidate_local(self.url, self._keys())
            return reply
        client = _client_for(self.url, waiting=True) if self.replicas else r
        wait_s = client.get_connection_kwargs()["socket_timeout"] / 2 if self.replicas else 0.0  # state_timeout
        for attempt in (1, 2):
            with client.pipeline(transaction=False) as p:
                command(p)
                if ttl_ms:
                    p.set(self._type_key, self._type_name, nx=True, px=ttl_ms)  # recreated if it expired alone
                    for key in (*self._keys(), self._type_key):
                        p.pexpire(key, ttl_ms)
                if self.replicas:
                    p.execute_command("WAIT", self.replicas, max(1, round(wait_s * 1000)))
                try:
                    replies = p.execute()
                    break
                except redis.exceptions.NoScriptError:  # the server lost its scripts: nothing was written
                    client.connection_pool.__dict__.pop("_cloudbutton_scripts", None)
                    if attempt == 2:
                        raise
        _invalidate_local(self.url, self._keys())
        if self.replicas and replies[-1] < self.replicas:
            raise StateError(
                f"a write to {self!r} at {_redacted(self.url)} was acknowledged by {replies[-1]} of "
                f"{self.replicas} replicas within {wait_s} s (state_timeout); it is applied on the primary only"
            )
        return replies[0]

    def delete(self) -> None:
        """Remove the object and its type record from the store and end this handle (see "Lifetime")."""
        if self._deleted:
            return
        self._delete()
        _checked.discard(self._token)
        self._deleted = True
        self._redis = None

    @_state_op
    def _delete(self) -> None:
        if self._counted:  # whatever its count: what its items refer to loses their references
            self._write(lambda c: run_script(c, _REFS_LUA + _DELETE_COUNTED, [], [self.name]), touch=False)
        else:
            self._write(lambda c: c.delete(*self._keys(), self._type_key), touch=False)


# --- numbers and references ---------------------------------------------------------------------------

class _AtomicNumber(SharedObject):
    """What AtomicInt and AtomicFloat share: a number stored as text; a missing one reads as zero.

    ``initial`` is stored only if the number does not exist yet, so every process may construct the
    handle with the same arguments."""

    @staticmethod
    def _text(value: Any) -> str:
        """``value``, checked, as the text the server stores."""
        raise NotImplementedError

    _parse: Any = int  # the stored text (bytes) -> the value

    def __init__(self, name: str, initial: float | None = None, url: str | None = None, *,
                 ttl: float | None = None, consistency: str = "strong", replicas: int = 0):
        super().__init__(name, url, ttl=ttl, consistency=consistency, replicas=replicas)
        self._store_initial(None if initial is None else self._text(initial))

    @_state_op
    def get(self):
        value = self._read("get", lambda r: r.get(self._key))
        return self._parse(b"0" if value is None else value)

    @_state_op
    def set(self, value) -> None:
        text = self._text(value)
        self._write(lambda c: c.set(self._key, text, keepttl=True))


class AtomicInt(_AtomicNumber):
    """A 64-bit signed integer shared by name; every operation is atomic on the server. A missing integer
    reads as 0. Values outside -2**63 .. 2**63-1, given or reached by adding, raise OverflowError."""

    _type_name = "AtomicInt"

    @staticmethod
    def _text(value: Any) -> str:
        return str(_int(value))

    @_state_op
    def add_and_get(self, delta: int) -> int:
        """Add ``delta``; return the new value (OverflowError if it would leave the 64-bit range; nothing is
        changed)."""
        delta = _int(delta)
        try:
            return int(self._write(lambda c: c.incrby(self._key, delta)))
        except redis.ResponseError as e:
            if "overflow" not in str(e):
                raise
            raise OverflowError(f"adding {delta} to {self!r} would overflow a 64-bit integer; it was left "
                                "unchanged") from None

    def increment(self, delta: int = 1) -> int:
        """Add ``delta`` (default 1); return the new value."""
        return self.add_and_get(delta)

    def decrement(self, delta: int = 1) -> int:
        """Subtract ``delta`` (default 1); return the new value."""
        return self.add_and_get(-_int(delta))

    @_state_op
    def compare_and_set(self, expected: int, new: int) -> bool:
        """Set to ``new`` only if the value is ``expected``; return whether it was set."""
        args = [str(_int(expected)), str(_int(new)), "0"]
        return bool(self._write(lambda c: run_script(c, _CAS, [self._key], args)))


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # what the server's integers hold


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"AtomicInt values must be int, not {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise OverflowError(f"AtomicInt values must fit in 64 bits ({_INT_MIN} to {_INT_MAX}), not {value}")
    return value


_FLOAT_ADD = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if v ~= v or v == math.huge or v == -math.huge then return false end
local s = string.format('%.17g', v)
redis.call('SET', KEYS[1], s, 'KEEPTTL')
return s
"""

_FLOAT_CAS = """
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def _float(value: Any) -> str:
    """``value`` as the text the server stores (Python's shortest repr, which Lua parses to the same double)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"AtomicFloat values must be float or int, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"AtomicFloat values must be finite, not {value!r}")
    return repr(value)


class AtomicFloat(_AtomicNumber):
    """A float shared by name; every operation is atomic on the server. A missing float reads as 0.0.

    Arithmetic is done server-side in IEEE doubles (a Lua script, not ``INCRBYFLOAT``, whose long double
    rounding differs from Python's), so ``add(0.1); add(0.2)`` gives exactly ``0.1 + 0.2``.
    """

    _type_name = "AtomicFloat"
    _text = staticmethod(_float)
    _parse = float

    @_state_op
    def add_and_get(self, delta: float) -> float:
        """Add ``delta``; return the new value (ValueError if it would not be finite; nothing is changed)."""
        text = _float(delta)
        result = self._write(lambda c: run_script(c, _FLOAT_ADD, [self._key], [text]))
        if result is None:
            raise ValueError(f"adding {delta!r} to {self!r} would make it infinite; it was left unchanged")
        return float(result)

    def add(self, delta: float) -> float:
        """Same as :meth:`add_and_get`."""
        return self.add_and_get(delta)

    @_state_op
    def compare_and_set(self, expected: float, new: float) -> bool:
        """Set to ``new`` only if the value equals ``expected`` (numerically); return whether it was set."""
        args = [_float(expected), _float(new)]
        return bool(self._write(lambda c: run_script(c, _FLOAT_CAS, [self._key], args)))


class AtomicReference(SharedObject):
    """Any picklable value shared by name; a missing value reads as None.

    ``compare_and_set`` compares with ``==`` in the caller, then swaps only if the stored bytes are still
    the ones it compared (server-side), retrying if another process changed the value meanwhile.
    """

    _type_name = "AtomicReference"

    def __init__(self, name: str, initial: Any = None, url: str | None = None, *,
                 ttl: float | None = None, consistency: str = "strong", replicas: int = 0):
        super().__init__(name, url, ttl=ttl, consistency=consistency, replicas=replicas)
        self._store_initial(None if initial is None else _dumps(initial, "the initial value"))

    @_state_op
    def get(self) -> Any:
        data = self._read("get", lambda r: r.get(self._key))
        return None if data is None else pickle.loads(data)

    @_state_op
    def set(self, value: Any) -> None:
        data = _dumps(value, "a value")
        self._write(lambda c: c.set(self._key, data, keepttl=True))

    @_state_op
    def get_and_set(self, value: Any) -> Any:
        """Store ``value``; return the previous one (None if there was none)."""
        data = _dumps(value, "a value")
        old = self._write(lambda c: c.set(self._key, data, keepttl=True, get=True))
        return None if old is None else pickle.loads(old)

    @_state_op
    def compare_and_set(self, expected: Any, new: Any) -> bool:
        """Set to ``new`` only if the value ``== expected``; return whether it was set."""
        data = _dumps(new, "a value")
        while True:
            current = self._r.get(self._key)
            if (None if current is None else pickle.loads(current)) != expected:
                return False
            args = [current or b"", data, b""]  # a stored pickle is never empty
            if self._write(lambda c, args=args: run_script(c, _CAS, [self._key], args)):
                return True


@functools.cache
def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def run_script(r: redis.Redis | redis.client.Pipeline, source: str, keys: list, args: list) -> Any:
    """Run the Lua ``source`` atomically on the server (sent once per client, then called by its SHA).

    On a pipeline (``r`` from :meth:`SharedObject._write`) the script is loaded once per connection pool
    beforehand and only ``EVALSHA`` is queued (redis-py would queue a ``SCRIPT EXISTS`` for every script on
    every execution); a server that lost its scripts makes the pipeline raise NoScriptError, which
    ``_write`` answers by loading the script again.
    """
    if isinstance(r, redis.client.Pipeline):
        loaded = r.connection_pool.__dict__.setdefault("_cloudbutton_scripts", set())
        sha = _sha(source)
        if sha not in loaded:
            redis.Redis(connection_pool=r.connection_pool).script_load(source)
            loaded.add(sha)
        return r.evalsha(sha, len(keys), *keys, *args)
    scripts = r.__dict__.setdefault("_cloudbutton_scripts", {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = r.register_script(source)
    return script(keys=keys, args=args, client=r)


# --- reference counts (see "Reference counts") ---------------------------------------------------------

_pickling = threading.local()  # .refs: (url, name) of the counted handles pickled meanwhile (see _dump_item)
_unpickling = threading.local()  # .handles: the counted handles unpickled meanwhile (see _load_items)

_HAS_REFS = b"\x01"  # an item that refers to counted objects: b"\x01" + b"%d:" % len(names) + names + pickle

_REFS_LUA = f"""
local OBJ, TYPE, REFS = '{_OBJ_PREFIX}', '{_TYPE_PREFIX}', '{_REFS_PREFIX}'
local function refs_of(v, out)  -- append the names an item refers to to out; return out
  if v and string.byte(v, 1) == 1 then
    local colon = string.find(v, ':', 2, true)
    local stop, at = colon + tonumber(string.sub(v, 2, colon - 1)), colon + 1
    while at <= stop do
      local c = string.find(v, ':', at, true)
      local n = tonumber(string.sub(v, at, c - 1))
      out[#out + 1] = string.sub(v, c + 1, c + n)
      at = c + n + 1
    end
  end
  return out
end
local function items_of(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'hash' then return redis.call('HVALS', key) end
  if t == 'list' then return redis.call('LRANGE', key, 0, -1) end
  return {{}}
end
local function release(names)  -- drop a reference to each; delete those left with none, and release what they held
  while #names > 0 do
    local name = table.remove(names)
    if redis.call('EXISTS', REFS .. name) == 1 and redis.call('DECR', REFS .. name) <= 0 then
      for _, item in ipairs(items_of(OBJ .. name)) do refs_of(item, names) end
      redis.call('DEL', OBJ .. name, TYPE .. name, REFS .. name)
    end
  end
end
local function take(v)  -- a reference to each object item v refers to (those still there)
  for _, name in ipairs(refs_of(v, {{}})) do
    if redis.call('EXISTS', REFS .. name) == 1 then redis.call('INCR', REFS .. name) end
  end
end
local function drop(v) release(refs_of(v, {{}})) end
"""

_TAKE = """
local alive = {}
for i, name in ipairs(ARGV) do
  alive[i] = redis.call('EXISTS', REFS .. name)
  if alive[i] == 1 then redis.call('INCR', REFS .. name) end
end
return alive
"""

_RELEASE = "release(ARGV)"

_DELETE_COUNTED = """
for _, name in ipairs(ARGV) do redis.call('SET', REFS .. name, 1) end
release(ARGV)
"""

_CLEAR = """
local items = items_of(KEYS[1])
redis.call('DEL', unpack(KEYS))
for _, item in ipairs(items) do drop(item) end
"""
"""Delete KEYS (KEYS[1] a container), dropping the references its items held."""


def _gone(handle: SharedObject) -> str:
    return (f"{handle!r} was deleted: nothing referred to it any more, or it was deleted explicitly (e.g. by its "
            "Manager's shutdown())")


class _Reference:
    """A reference to the counted object ``name`` held by a handle of this process; ``delete()`` drops it (once,
    and only in this process: not in a forked child)."""

    def __init__(self, url: str, name: str):
        self.url, self.name, self._pid = url, name, os.getpid()

    def delete(self) -> None:
        if self._pid != os.getpid():
            return
        self._pid = None
        try:
            run_script(_client_for(self.url), _REFS_LUA + _RELEASE, [], [self.name])
        except (redis.RedisError, StateError):  # the server is gone (e.g. stopped at exit): so is the object
            pass


def _hold(handles: list[SharedObject], taken_at: str | None = None) -> None:
    """Give each counted handle just unpickled a reference of its own. Those of store ``taken_at`` were counted
    for them by the script that returned them; the others are taken now, one round trip per store. A handle
    whose object is gone is made unusable (StateError)."""
    pending: dict[str, list[SharedObject]] = {}
    for handle in handles:
        if handle.url == taken_at:
            handle._keep(_Reference(handle.url, handle.name))
        else:
            pending.setdefault(handle.url, []).append(handle)
    for url, group in pending.items():
        try:
            alive = run_script(_client_for(url), _REFS_LUA + _TAKE, [], [h.name for h in group])
        except redis.RedisError as e:
            raise StateError(f"state server {_redacted(url)} failed while taking a reference to {group[0]!r}: "
                             f"{e}") from None
        for handle, found in zip(group, alive, strict=True):
            if found:
                handle._keep(_Reference(url, handle.name))
            else:
                handle._deleted = _gone(handle)


def _rebuild_counted(cls: type[SharedObject], name: str, url: str) -> SharedObject:
    """Unpickle a counted handle: it holds a reference of its own (see _hold)."""
    handle = cls._from_handle(name, url)
    pending = getattr(_unpickling, "handles", None)
    if pending is not None:
        pending.append(handle)
    else:
        _hold([handle])
    return handle


def _delete_counted(url: str, names: list[str]) -> None:
    """Delete the counted objects ``names`` of store ``url`` whatever their counts, in one round trip; this
    process's handles to them become unusable (StateError)."""
    run_script(_client_for(url), _REFS_LUA + _DELETE_COUNTED, [], names)
    _checked.discard_names(url, names)


def _item_body(data: bytes) -> bytes | memoryview:
    """A stored item's pickle (without the names it refers to)."""
    if data[:1] != _HAS_REFS:
        return data
    colon = data.index(b":")
    return memoryview(data)[colon + 1 + int(data[1:colon]) :]


_KEY_TYPES = "str, bytes, int, float, bool, None, an Enum member, or a tuple or frozenset of these"


def _joined(parts: Iterable[bytes]) -> bytes:
    return b"".join(b"%d:" % len(part) + part for part in parts)


def _split(body: bytes) -> list[bytes]:
    parts, at = [], 0
    while at < len(body):
        colon = body.index(b":", at)
        end = colon + 1 + int(body[at:colon])
        parts.append(body[colon + 1 : end])
        at = end
    return parts


def _encode_key(key: Any) -> bytes:
    """The hash field of a SharedDict key: one canonical encoding per set of equal keys, the same in every
    process (so 1, 1.0 and True are one field, as in a dict; no pickles, whose bytes vary)."""
    if isinstance(key, enum.Enum) and not isinstance(key, (str, bytes, int, float, tuple, frozenset)):
        # (members with such a mixin, e.g. IntEnum, equal their values: encoded as those below)
        cls = type(key)  # by value: Flag combinations and Flag(0) have no name of their own
        return b"e" + _joined([cls.__module__.encode(), cls.__qualname__.encode(), _encode_key(key.value)])
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if key is None:
        return b"n"
    if isinstance(key, (int, float)):  # bool is an int
        if isinstance(key, float) and not key.is_integer():
            return b"f" + float.__repr__(key).encode()  # nan and the infinities too; subclasses (numpy) alike
        return b"i" + str(int(key)).encode()
    if isinstance(key, tuple):
        return b"t" + _joined(_encode_key(item) for item in key)
    if isinstance(key, frozenset):  # in a canonical order: equal sets iterate in different orders
        return b"F" + _joined(sorted(_encode_key(item) for item in key))
    raise TypeError(f"SharedDict keys must be {_KEY_TYPES}, not {type(key).__name__}")


def _decode_key(field: bytes) -> Any:
    kind, body = field[:1], field[1:]
    if kind == b"s":
        return body.decode("utf-8", "surrogatepass")
    if kind == b"b":
        return body
    if kind == b"n":
        return None
    if kind == b"i":
        return int(body)
    if kind == b"f":
        return float(body)
    if kind == b"t":
        return tuple(_decode_key(part) for part in _split(body))
    if kind == b"F":
        return frozenset(_decode_key(part) for part in _split(body))
    if kind == b"e":
        module, qualname, value = _split(body)
        module, qualname = module.decode(), qualname.decode()
        try:
            owner = importlib.import_module(module)
            for attribute in qualname.split("."):
                owner = getattr(owner, attribute)
            return owner(_decode_key(value))
        except (ImportError, AttributeError, ValueError) as e:
            raise StateError(
                f"a SharedDict key is a member of the Enum {qualname} of module {module}, which this process"
                f" cannot import ({e!r}); define Enums used as keys in a module, not in the script run"
            ) from None
    raise StateError(f"a SharedDict field {field[:40]!r} was not written by this version of cloudbutton")


def _dumps(value: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise TypeError(f"cannot store {what} of type {type(value).__name__} in shared state: {e}") from None


# --- containers ---------------------------------------------------------------------------------------

class _Container(SharedObject):
    """What SharedDict and SharedList share: items that refer to counted objects hold references to them."""

    def _dump_item(self, value: Any, what: str) -> bytes:
        """``value`` pickled as an item, prefixed by the names of the counted objects of this store it refers to."""
        outer = getattr(_pickling, "refs", None)
        _pickling.refs = refs = []
        try:
            data = _dumps(value, what)
        finally:
            _pickling.refs = outer
        names = _joined(name.encode() for url, name in refs if url == self.url)
        return _HAS_REFS + b"%d:" % len(names) + names + data if names else data

    def _load_items(self, items: Iterable[bytes], taken: bool = False) -> list[Any]:
        """Unpickle stored items; the counted handles in them get references of their own (``taken``: the
        script that returned the items took them already)."""
        items = list(items)
        if not any(data[:1] == _HAS_REFS for data in items):
            return [pickle.loads(data) for data in items]
        outer = getattr(_unpickling, "handles", None)
        _unpickling.handles = handles = []
        try:
            values = [pickle.loads(_item_body(data)) for data in items]
        finally:
            _unpickling.handles = outer
        _hold(handles, self.url if taken else None)
        return values

    def _load_item(self, data: bytes, taken: bool = False) -> Any:
        return self._load_items([data], taken)[0]

    def _script(self, source: str, args: list) -> Any:
        """Run a script of the reference-counting library on this container (KEYS[1]) as a write."""
        return self._write(lambda c: run_script(c, _REFS_LUA + source, [self._key], args))

    @_state_op
    def _delete(self) -> None:
        if self._counted:
            return super()._delete()
        self._write(lambda c: run_script(c, _REFS_LUA + _CLEAR, [*self._keys(), self._type_key], []), touch=False)

    @_state_op
    def clear(self) -> None:
        self._script(_CLEAR, [])


_DICT_SET = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
take(ARGV[2])
drop(old)
"""

_DICT_DEL = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
drop(old)
return 1
"""

_DICT_UPDATE = """
local fields = {}
for i = 1, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
local old = {}
for i = 1, #fields, 4000 do
  local got = redis.call('HMGET', KEYS[1], unpack(fields, i, math.min(i + 3999, #fields)))
  for _, v in ipairs(got) do old[#old + 1] = v end
end
for i = 1, #ARGV, 4000 do redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV))) end
for i = 2, #ARGV, 2 do take(ARGV[i]) end
for _, v in ipairs(old) do drop(v) end
"""

_DICT_POP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then redis.call('HDEL', KEYS[1], ARGV[1]) end
return v
"""

_DICT_POPITEM = """
local pair = redis.call('HRANDFIELD', KEYS[1], 1, 'WITHVALUES')
if pair[1] then redis.call('HDEL', KEYS[1], pair[1]) end
return pair
"""

_DICT_SETDEFAULT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then take(ARGV[2]) end
local v = redis.call('HGET', KEYS[1], ARGV[1])
take(v)
return v
"""

_MISSING = object()


class SharedDict(_Container, MutableMapping):
    """A dict shared by name (a Redis hash); values are any picklable object.

    Keys are ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``, ``Enum`` members, or tuples or
    frozensets of these (TypeError names any other type); each is stored in one canonical form, so equal
    keys are one entry in every process, as in a dict: ``1``, ``1.0`` and ``True`` are the same key (read
    back as the int ``1``). Listing keys that are Enum members imports their module.

    ``pop``, ``popitem``, ``setdefault`` and ``update`` are each one atomic round trip.
    """

    _type_name = "SharedDict"

    def __init__(self, name: str, url: str | None = None, *, ttl: float | None = None,
                 consistency: str = "strong", replicas: int = 0):
        super().__init__(name, url, ttl=ttl, consistency=consistency, replicas=replicas)
        self._claim()

    @_state_op
    def __getitem__(self, key: Any) -> Any:
        field = _encode_key(key)
        data = self._read(("hget", field), lambda r: r.hget(self._key, field))
        if data is None:
            raise KeyError(key)
        return self._load_item(data)

    @_state_op
    def __setitem__(self, key: Any, value: Any) -> None:
        self._script(_DICT_SET, [_encode_key(key), self._dump_item(value, f"the value for key {key!r}")])

    @_state_op
    def __delitem__(self, key: Any) -> None:
        if not self._script(_DICT_DEL, [_encode_key(key)]):
            raise KeyError(key)

    @_state_op
    def __contains__(self, key: object) -> bool:
        try:
            field = _encode_key(key)
        except TypeError:
            return False
        return bool(self._read(("hexists", field), lambda r: r.hexists(self._key, field)))

    @_state_op
    def __len__(self) -> int:
        return self._read("hlen", lambda r: r.hlen(self._key))

    @_state_op
    def _fields(self) -> list[bytes]:
        return self._read("hkeys", lambda r: r.hkeys(self._key))

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the keys taken when iteration starts."""
        return iter([_decode_key(f) for f in self._fields()])

    @_state_op
    def to_dict(self) -> dict[Any, Any]:
        """A local copy of the whole dict, read in one round trip."""
        items = self._read("hgetall", lambda r: r.hgetall(self._key))
        return dict(zip(map(_decode_key, items), self._load_items(items.values()), strict=True))

    @_state_op
    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        field = _encode_key(key)
        data = self._write(lambda c: run_script(c, _DICT_POP, [self._key], [field]))
        if data is not None:
            return self._load_item(data, taken=True)
        if default is _MISSING:
            raise KeyError(key)
        return default

    @_state_op
    def popitem(self) -> tuple[Any, Any]:
        """Remove and return some (key, value) pair; KeyError if the dict is empty."""
        pair = self._write(lambda c: run_script(c, _DICT_POPITEM, [self._key], []))
        if not pair:
            raise KeyError(f"popitem(): {self!r} is empty")
        field, data = pair
        try:
            return _decode_key(field), self._load_item(data, taken=True)
        except Exception:
            self._write(lambda c: c.hsetnx(self._key, field, data))  # put it back: nothing is lost
            raise

    @_state_op
    def setdefault(self, key: Any, default: Any = None) -> Any:
        field = _encode_key(key)
        data = self._dump_item(default, f"the value for key {key!r}")
        return self._load_item(self._script(_DICT_SETDEFAULT, [field, data]), taken=True)

    @_state_op
    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set all the items given (like ``dict.update``) in one round trip."""
        items = {**dict(other), **kwargs}
        args = [part for k, v in items.items()
                for part in (_encode_key(k), self._dump_item(v, f"the value for key {k!r}"))]
        if args:
            self._script(_DICT_UPDATE, args)

    __hash__ = SharedObject.__hash__
    __eq__ = SharedObject.__eq__


_REMOVED = b"\x00cloudbutton:removed"  # never a pickle (those start with \x80), so never a stored item

_LIST_SLICE = """
local n = redis.call('LLEN', KEYS[1])
local step = tonumber(ARGV[3])
local function bound(a, default, lower, upper)
  if a == '' then return default end
  local i = tonumber(a)
  if i < 0 then
    i = i + n
    if i < lower then i = lower end
  elseif i > upper then i = upper end
  return i
end
local out = {}
if step > 0 then
  local start, stop = bound(ARGV[1], 0, 0, n), bound(ARGV[2], n, 0, n)
  if start >= stop then return out end
  local items = redis.call('LRANGE', KEYS[1], start, stop - 1)
  for j = 1, #items, step do out[#out + 1] = items[j] end
else
  local start, stop = bound(ARGV[1], n - 1, -1, n - 1), bound(ARGV[2], -1, -1, n - 1)
  if start <= stop then return out end
  local items = redis.call('LRANGE', KEYS[1], stop + 1, start)
  for j = #items, 1, step do out[#out + 1] = items[j] end
end
return out
"""

_LIST_SET = """
local n = redis.call('LLEN', KEYS[1])
local i = tonumber(ARGV[1])
if i < 0 then i = i + n end
if i < 0 or i >= n then return 0 end
local old = redis.call('LINDEX', KEYS[1], i)
redis.call('LSET', KEYS[1], i, ARGV[2])
take(ARGV[2])
drop(old)
return 1
"""

_LIST_POP = """
local n = redis.call('LLEN', KEYS[1])
local i = tonumber(ARGV[1])
if i < 0 then i = i + n end
if i < 0 or i >= n then return -1 end
local v = redis.call('LINDEX', KEYS[1], i)
if ARGV[2] ~= '' and v ~= ARGV[2] then return 0 end
if i == 0 then redis.call('LPOP', KEYS[1])
elseif i == n - 1 then redis.call('RPOP', KEYS[1])
else
  redis.call('LSET', KEYS[1], i, ARGV[3])
  redis.call('LREM', KEYS[1], 1, ARGV[3])
end
if ARGV[4] == '1' then drop(v) end
return v
"""

_LIST_INSERT = """
take(ARGV[2])
local n = redis.call('LLEN', KEYS[1])
local i = tonumber(ARGV[1])
if i < 0 then i = math.max(i + n, 0) end
if i >= n then return redis.call('RPUSH', KEYS[1], ARGV[2]) end
if i == 0 then return redis.call('LPUSH', KEYS[1], ARGV[2]) end
local old = redis.call('LINDEX', KEYS[1], i)
redis.call('LSET', KEYS[1], i, ARGV[3])
redis.call('LINSERT', KEYS[1], 'BEFORE', ARGV[3], ARGV[2])
redis.call('LSET', KEYS[1], i + 1, old)
return n + 1
"""

_LIST_EXTEND = """
for _, v in ipairs(ARGV) do
  redis.call('RPUSH', KEYS[1], v)
  take(v)
end
"""

_LIST_REPLACE = """
local old = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for _, v in ipairs(ARGV) do
  redis.call('RPUSH', KEYS[1], v)
  take(v)
end
for _, v in ipairs(old) do drop(v) end
"""

_LIST_REVERSE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for j = 1, #items do redis.call('LSET', KEYS[1], j - 1, items[#items - j + 1]) end
return #items
"""


def _slice_arg(value: Any) -> str:
    return "" if value is None else str(operator.index(value))


class SharedList(_Container, MutableSequence):
    """A list shared by name (a Redis list) of any picklable values.

    Every method is one round trip and atomic on the server: ``append``/``extend`` (one ``RPUSH``),
    indexing (negative too) and slice reads, ``lst[i] = v``, ``del lst[i]``, ``pop``, ``insert``,
    ``reverse``. ``remove(value)`` finds the first item ``== value`` in a snapshot and deletes it only if
    that position still holds it (retrying otherwise). Slice assignment and slice deletion are not
    supported (TypeError). Iteration, ``in``, ``index`` and ``count`` work on one snapshot.
    """

    _type_name = "SharedList"

    def __init__(self, name: str, url: str | None = None, *, ttl: float | None = None,
                 consistency: str = "strong", replicas: int = 0):
        super().__init__(name, url, ttl=ttl, consistency=consistency, replicas=replicas)
        self._claim()

    @_state_op
    def __len__(self) -> int:
        return self._read("llen", lambda r: r.llen(self._key))

    @_state_op
    def __getitem__(self, index):
        if isinstance(index, slice):
            if index.step == 0:
                raise ValueError("slice step cannot be zero")
            args = [_slice_arg(index.start), _slice_arg(index.stop), _slice_arg(index.step or 1)]
            items = self._read(("slice", *args), lambda r: run_script(r, _LIST_SLICE, [self._key], args))
            return self._load_items(items)
        i = operator.index(index)
        data = self._read(("lindex", i), lambda r: r.lindex(self._key, i))
        if data is None:
            raise IndexError(f"{self!r} index {i} out of range")
        return self._load_item(data)

    @_state_op
    def __setitem__(self, index, value: Any) -> None:
        if isinstance(index, slice):
            raise TypeError(f"{self!r} does not support slice assignment")
        args = [str(operator.index(index)), self._dump_item(value, "a list item")]
        if not self._script(_LIST_SET, args):
            raise IndexError(f"{self!r} assignment index {index} out of range")

    def __delitem__(self, index) -> None:
        if isinstance(index, slice):
            raise TypeError(f"{self!r} does not support slice deletion")
        if self._pop(index, None, drop=True) == -1:
            raise IndexError(f"{self!r} assignment index {index} out of range")

    @_state_op
    def _pop(self, index: int, expected: bytes | None, drop: bool = False) -> Any:
        """Remove the item at ``index`` (only if its bytes are ``expected``, when given); return its bytes, whose
        references are handed over to the caller (or dropped, with ``drop``).

        Returns -1 if the index is out of range, 0 if the item is not ``expected``.
        """
        args = [str(operator.index(index)), expected or b"", _REMOVED, int(drop)]
        return self._script(_LIST_POP, args)

    def pop(self, index: int = -1) -> Any:
        """Remove and return the item at ``index`` (default last), atomically."""
        data = self._pop(index, None)
        if data == -1:
            raise IndexError(f"pop index {index} out of range for {self!r}")
        return self._load_item(data, taken=True)

    def remove(self, value: Any) -> None:
        """Remove the first item ``== value`` (ValueError if there is none)."""
        while True:
            items = self._items()
            found = next(((i, data) for i, (data, item) in enumerate(zip(items, self._load_items(items), strict=True))
                          if item == value), None)
            if found is None:
                raise ValueError(f"{value!r} is not in {self!r}")
            if self._pop(*found, drop=True) not in (0, -1):
                return

    @_state_op
    def insert(self, index: int, value: Any) -> None:
        """Insert ``value`` before ``index`` (clamped like ``list.insert``), atomically."""
        self._script(_LIST_INSERT, [str(operator.index(index)), self._dump_item(value, "a list item"), _REMOVED])

    def append(self, value: Any) -> None:
        self.extend([value])

    @_state_op
    def extend(self, values: Iterable[Any]) -> None:
        """Append all ``values`` in one round trip."""
        data = [self._dump_item(v, "a list item") for v in list(values)]
        if any(item[:1] == _HAS_REFS for item in data):
            self._script(_LIST_EXTEND, data)
        elif data:
            self._write(lambda c: c.rpush(self._key, *data))

    @_state_op
    def _replace(self, items: list[Any], client: Any = None) -> None:
        """Replace all the items by ``items`` (queued on ``client``, a pipeline, when given)."""
        data = [self._dump_item(item, "a list item") for item in items]
        if client is None:
            self._script(_LIST_REPLACE, data)
        else:
            run_script(client, _REFS_LUA + _LIST_REPLACE, [self._key], data)

    @_state_op
    def reverse(self) -> None:
        self._write(lambda c: run_script(c, _LIST_REVERSE, [self._key], []))

    @_state_op
    def _items(self) -> list[bytes]:
        return self._read("lrange", lambda r: r.lrange(self._key, 0, -1))

    def to_list(self) -> list[Any]:
        """A local copy of the whole list, read in one round trip."""
        return self._load_items(self._items())

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the items taken when iteration starts."""
        return iter(self.to_list())

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self.to_list())

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self.to_list().index(value, start, stop)

    def count(self, value: Any) -> int:
        return self.to_list().count(value)

    __hash__ = SharedObject.__hash__
    __eq__ = SharedObject.__eq__
