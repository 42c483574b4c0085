"""Pickling of functions and arguments with cloudpickle, shipping the user's own modules by value.

Functions and classes from installed packages (and the standard library) travel by reference and
are imported by the worker; those from the user's own modules (files outside the interpreter's
prefix and site-packages) travel by value, so a worker that cannot import them still runs them.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import cloudpickle

from .errors import SerializationError

_INSTALLED_ROOTS = tuple(
    {
        str(Path(p).resolve())
        for p in [
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            *site.getsitepackages(),
            site.getusersitepackages(),
            *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        ]
    }
)
_lock = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _is_users_own_file(path: str) -> bool:
    return not str(Path(path).resolve()).startswith(_INSTALLED_ROOTS)


def _is_users_own(module) -> bool:
    path = getattr(module, "__file__", None)
    if not path or module.__name__.split(".")[0] in ("cloudbutton", "cloudpickle"):
        return False
    return _is_users_own_file(path)


_own_modules: tuple[tuple[int, str], frozenset[str]] = ((0, ""), frozenset())


def _users_own_modules() -> frozenset[str]:
    """The user's own loaded top-level modules; looked for again only when ``sys.modules`` changed
    (its size or its last entry), since scanning hundreds of modules costs more than a small map."""
    global _own_modules
    modules = sys.modules
    key = (len(modules), next(reversed(modules), ""))
    if _own_modules[0] != key:
        names = frozenset(
            name
            for name, module in list(modules.items())
            if module is not None and "." not in name and name != "__main__" and _is_users_own(module)
        )
        _own_modules = (key, names)
    return _own_modules[1]


def by_value_modules(include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> list[str]:
    """Names of the loaded top-level modules to ship by value: the user's own, plus ``include``, minus ``exclude``."""
    names = set(_users_own_modules()) | set(include or ())
    excluded = set(exclude or ())
    return sorted(n for n in names if n not in excluded and n.split(".")[0] not in excluded)


@contextlib.contextmanager
def _shipping_by_value(module_names: list[str]) -> Iterator[None]:
    with _lock:
        registered = []
        for name in module_names:
            module = sys.modules.get(name)
            if module is None:
                raise SerializationError(f"include_modules names {name!r}, which is not imported")
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                continue  # already registered by the user
            registered.append(module)
        try:
            yield
        finally:
            for module in registered:
                cloudpickle.unregister_pickle_by_value(module)


def dumps_function(func, module_names: list[str]) -> bytes:
    with _shipping_by_value(module_names):
        try:
            return cloudpickle.dumps(func)
        except Exception as e:
            name = getattr(func, "__qualname__", repr(func))
            raise SerializationError(f"cannot pickle function {name}: {e}") from e


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(args: tuple, kwargs: dict) -> bool:
    """Whether plain pickle is enough (and 10x faster than cloudpickle) for these arguments."""
    if len(args) == 1 and not kwargs:
        return type(args[0]) in _SCALARS
    return all(type(a) in _SCALARS for a in args) and all(type(v) in _SCALARS for v in kwargs.values())


def dumps_arguments(calls: list[tuple[tuple, dict]], module_names: list[str], what: str) -> list[bytes]:
    """Pickle each call's ``(args, kwargs)`` separately; ``what`` names them in an error."""
    out = []
    with _shipping_by_value(module_names):
        for i, (args, kwargs) in enumerate(calls):
            try:
                if _plain(args, kwargs):
                    out.append(pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
                else:
                    out.append(cloudpickle.dumps((args, kwargs)))
            except Exception as e:
                raise SerializationError(f"cannot pickle the {what} {i:05d}: {e}") from e
    return out


def dumps(obj) -> bytes:
    if type(obj) in _SCALARS:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(obj)


loads = pickle.loads


def loads_all(payloads: list[bytes]) -> list:
    return [loads(p) for p in payloads]


class Pickled:
    """Values pickled already (results on their way to a reducer): pickling this sends the bytes as
    they are and unpickling it loads the values, so they are not pickled a second time on the way."""

    def __init__(self, payloads: list[bytes]):
        self.payloads = payloads

    def __reduce__(self):
        return loads_all, (self.payloads,)
