"""Pickling of functions and arguments with cloudpickle, shipping the user's own modules by value.

Functions and classes from installed packages (and the standard library) travel by reference and
are imported by the worker. Those of the user's own modules (files outside the interpreter's prefix
and site-packages) travel by value, so a worker that cannot import them still runs them; on a
backend whose workers share the caller's host (its files, ``sys.path`` and working directory), only
the user's modules that such a worker could not import travel by value, the others by reference, as
with the standard library's ``multiprocessing``. ``__main__`` always travels by value (cloudpickle's
rule), and so do ``include_modules``. Code pickled by value keeps its file name, so remote
tracebacks name the user's file and line.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import marshal
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

import cloudpickle

from .errors import SerializationError

_INSTALLED_ROOTS = tuple(
    {
        Path(p).resolve()
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
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(root) for root in _INSTALLED_ROOTS)


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


@functools.lru_cache(maxsize=4096)
def _importable(name: str, file: str, sys_path: tuple[str, ...], cwd: str) -> bool:
    """Whether a fresh process with this ``sys.path`` and working directory (the cache's key) imports
    the top-level module ``name`` from ``file``."""
    for finder in sys.meta_path:
        try:
            spec = finder.find_spec(name, None)
        except Exception:  # noqa: BLE001 - a finder that fails here would fail the worker's import too
            return False
        if spec is not None:
            return spec.origin is not None and Path(spec.origin).resolve() == Path(file).resolve()
    return False


def _workers_import(name: str) -> bool:
    """Whether workers that share the caller's host, ``sys.path`` and working directory import the
    loaded module ``name`` (possibly an alias) as the caller did."""
    module = sys.modules.get(name)
    top = sys.modules.get(getattr(module, "__name__", "").partition(".")[0])
    file = getattr(top, "__file__", None)
    if not file:
        return False
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        return False
    return _importable(top.__name__, file, tuple(sys.path), cwd)


def by_value_modules(
    include: Iterable[str] | None = None, exclude: Iterable[str] | None = None, shares_host: bool = False
) -> list[str]:
    """Names of the loaded top-level modules to ship by value: the user's own (with ``shares_host``,
    only those the workers cannot import), plus ``include``, minus ``exclude``."""
    names = {n for n in _users_own_modules() if not (shares_host and _workers_import(n))} | set(include or ())
    excluded = set(exclude or ())
    return sorted(n for n in names if n not in excluded and n.split(".")[0] not in excluded)


@contextlib.contextmanager
def _shipping_by_value(module_names: list[str]) -> Iterator[None]:
    """Register the modules with cloudpickle while pickling; a module may be loaded under several
    names, and the registrations that were there before (the user's own) stay as they are."""
    with _lock:
        before, registered = cloudpickle.list_registry_pickle_by_value(), {}
        for name in module_names:
            module = sys.modules.get(name)
            if module is None:
                raise SerializationError(f"include_modules names {name!r}, which is not imported")
            if module.__name__ in before or module.__name__ in registered:
                continue
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # its __name__ is not in sys.modules: cloudpickle ships it by value anyway
                continue
            registered[module.__name__] = module
        try:
            yield
        finally:
            for module in registered.values():
                cloudpickle.unregister_pickle_by_value(module)


def _reduce_code(code: types.CodeType):
    """Code pickled by value, with its file name (cloudpickle's own reducer writes "<dynamic-code>"
    instead, and remote tracebacks would not say where the user's code failed)."""
    return marshal.loads, (marshal.dumps(code),)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = collections.ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def _cloudpickle(obj) -> bytes:
    with io.BytesIO() as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return f.getvalue()


def dumps_function(func, module_names: list[str]) -> bytes:
    with _shipping_by_value(module_names):
        try:
            return _cloudpickle(func)
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
    scalars, dumps, protocol = _SCALARS, pickle.dumps, pickle.HIGHEST_PROTOCOL
    if all(len(args) == 1 and not kwargs and type(args[0]) in scalars for args, kwargs in calls):
        return [dumps(call, protocol) for call in calls]  # the common case: one plain argument each
    out = []
    with _shipping_by_value(module_names):
        for i, (args, kwargs) in enumerate(calls):
            try:
                if _plain(args, kwargs):
                    out.append(pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
                else:
                    out.append(_cloudpickle((args, kwargs)))
            except Exception as e:
                raise SerializationError(f"cannot pickle the {what} {i:05d}: {e}") from e
    return out


def dumps(obj) -> bytes:
    if type(obj) in _SCALARS:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _cloudpickle(obj)


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
