"""Shared objects: small picklable handles (name + store URL) to data in a Redis-protocol server.

A handle can be passed to functions as an argument (or captured by them) and used identically in the
client and in a worker: pickling keeps only the name and the URL, and the new process connects lazily
(one connection pool per URL per process). Every operation is a single server-side command or Lua
script, so concurrent updates are never lost.

Names live under the ``cloudbutton:`` namespace. The first use of a name records its type; using the
same name with another type raises :class:`~cloudbutton.errors.StateError`.
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import cloudpickle
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import resolve_config
from ..errors import StateError
from .server import state_url

PREFIX = "cloudbutton:"
_TYPES_KEY = PREFIX + "meta:types"

_clients: dict[str, redis.Redis] = {}
_clients_pid = os.getpid()
_checked: set[tuple[str, str, str]] = set()
_clients_lock = threading.Lock()

_CLAIM_TYPE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

_INT_CAS = """
local v = redis.call('GET', KEYS[1])
if v == false then v = '0' end
if v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _client_for(url: str) -> redis.Redis:
    """The process-wide client (with its connection pool) for ``url``."""
    global _clients_pid
    client = _clients.get(url)
    if client is not None and _clients_pid == os.getpid():
        return client
    with _clients_lock:
        if _clients_pid != os.getpid():  # forked: never share sockets with the parent
            _clients.clear()
            _checked.clear()
            _clients_pid = os.getpid()
        client = _clients.get(url)
        if client is None:
            timeout = resolve_config().state_timeout
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                    retry=Retry(NoBackoff(), 1),  # bounded: at most two connection attempts
                )
            except ValueError as e:
                raise StateError(f"invalid state_url {url!r}: {e}") from None
            _clients[url] = client
        return client


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


class SharedObject:
    """Base of the shared-object handles: a name, a store URL and a lazily made connection."""

    _type_name = "object"

    def __init__(self, name: str, url: str | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a shared object's name must be a non-empty string, not {name!r}")
        self.name = name
        self.url = url or state_url()
        self._redis: redis.Redis | None = None
        self._pid = 0
        self._key = PREFIX + "obj:" + name

    @classmethod
    def _from_handle(cls, name: str, url: str):
        self = cls.__new__(cls)
        SharedObject.__init__(self, name, url)
        return self

    def __reduce__(self):
        return type(self)._from_handle, (self.name, self.url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (other.name, other.url) == (self.name, self.url)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name, self.url))

    @property
    def _r(self) -> redis.Redis:
        r = self._redis
        if r is None or self._pid != os.getpid():
            r = self._redis = self._connect()
            self._pid = os.getpid()
        return r

    def _connect(self) -> redis.Redis:
        r = _client_for(self.url)
        token = (self.url, self.name, self._type_name)
        if token not in _checked:
            found = r.eval(_CLAIM_TYPE, 1, _TYPES_KEY, self.name, self._type_name)
            found = found.decode() if isinstance(found, bytes) else found
            if found != self._type_name:
                raise StateError(
                    f"the shared name {self.name!r} is already used by a {found}, not a {self._type_name}; "
                    "delete it or pick another name"
                )
            _checked.add(token)
        return r

    @_state_op
    def delete(self) -> None:
        """Remove the object and its type record from the store (the name can then be reused)."""
        r = self._r
        with r.pipeline(transaction=True) as p:
            p.delete(self._key)
            p.hdel(_TYPES_KEY, self.name)
            p.execute()
        _checked.discard((self.url, self.name, self._type_name))
        self._redis = None


class AtomicInt(SharedObject):
    """An integer shared by name; every operation is atomic on the server.

    ``initial`` is stored only if the integer does not exist yet, so every process may construct the
    handle with the same arguments; a missing integer reads as 0.
    """

    _type_name = "AtomicInt"

    def __init__(self, name: str, initial: int | None = None, url: str | None = None):
        super().__init__(name, url)
        self._open(initial)

    @_state_op
    def _open(self, initial: int | None) -> None:
        r = self._r
        if initial is not None:
            r.set(self._key, _int(initial), nx=True)

    @_state_op
    def get(self) -> int:
        value = self._r.get(self._key)
        return 0 if value is None else int(value)

    @_state_op
    def set(self, value: int) -> None:
        self._r.set(self._key, _int(value))

    @_state_op
    def add_and_get(self, delta: int) -> int:
        return self._r.incrby(self._key, _int(delta))

    def increment(self, delta: int = 1) -> int:
        """Add ``delta`` (default 1); return the new value."""
        return self.add_and_get(delta)

    def decrement(self, delta: int = 1) -> int:
        """Subtract ``delta`` (default 1); return the new value."""
        return self.add_and_get(-_int(delta))

    @_state_op
    def compare_and_set(self, expected: int, new: int) -> bool:
        """Set to ``new`` only if the value is ``expected``; return whether it was set."""
        return bool(run_script(self._r, _INT_CAS, [self._key], [str(_int(expected)), str(_int(new))]))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"AtomicInt values must be int, not {type(value).__name__}")
    return value


def run_script(r: redis.Redis, source: str, keys: list, args: list) -> Any:
    """Run the Lua ``source`` atomically on the server (sent once per client, then called by its SHA)."""
    scripts = r.__dict__.setdefault("_cloudbutton_scripts", {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = r.register_script(source)
    return script(keys=keys, args=args, client=r)


def _encode_key(key: Any) -> bytes:
    if isinstance(key, str):
        return b"s" + key.encode()
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"SharedDict keys must be hashable, not {type(key).__name__}") from None
    return b"p" + _dumps(key, "key")


def _decode_key(field: bytes) -> Any:
    if field[:1] == b"s":
        return field[1:].decode()
    return pickle.loads(field[1:])


def _dumps(value: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise TypeError(f"cannot store {what} of type {type(value).__name__} in shared state: {e}") from None


class SharedDict(SharedObject, MutableMapping):
    """A dict shared by name (a Redis hash); keys are hashable, values any picklable object."""

    _type_name = "SharedDict"

    def __init__(self, name: str, url: str | None = None):
        super().__init__(name, url)
        self._open()

    @_state_op
    def _open(self) -> None:
        self._r  # noqa: B018  (connect and claim the name now, so a clash is raised here)

    @_state_op
    def __getitem__(self, key: Any) -> Any:
        data = self._r.hget(self._key, _encode_key(key))
        if data is None:
            raise KeyError(key)
        return pickle.loads(data)

    @_state_op
    def __setitem__(self, key: Any, value: Any) -> None:
        field = _encode_key(key)
        data = _dumps(value, f"the value for key {key!r}")
        self._r.hset(self._key, field, data)

    @_state_op
    def __delitem__(self, key: Any) -> None:
        if not self._r.hdel(self._key, _encode_key(key)):
            raise KeyError(key)

    @_state_op
    def __contains__(self, key: object) -> bool:
        try:
            field = _encode_key(key)
        except TypeError:
            return False
        return bool(self._r.hexists(self._key, field))

    @_state_op
    def __len__(self) -> int:
        return self._r.hlen(self._key)

    @_state_op
    def _fields(self) -> list[bytes]:
        return self._r.hkeys(self._key)

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the keys taken when iteration starts."""
        return iter([_decode_key(f) for f in self._fields()])

    @_state_op
    def to_dict(self) -> dict[Any, Any]:
        """A local copy of the whole dict, read in one round trip."""
        return {_decode_key(k): pickle.loads(v) for k, v in self._r.hgetall(self._key).items()}

    @_state_op
    def clear(self) -> None:
        self._r.delete(self._key)

    __hash__ = SharedObject.__hash__
    __eq__ = SharedObject.__eq__
