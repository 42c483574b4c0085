"""Start methods and contexts: every method runs Processes and Pools as calls on the backend."""

from __future__ import annotations

import multiprocessing
import os
import sys

__all__ = [
    "cpu_count", "freeze_support", "get_all_start_methods", "get_context", "get_logger", "get_start_method",
    "log_to_stderr", "parent_process", "set_executable", "set_start_method",
]

_METHODS = ("spawn", "forkserver")
_start_method: str | None = None


class StartMethodUnavailable(NotImplementedError, ValueError):
    """A start method that cannot be honoured: a ``NotImplementedError`` that says why, and a
    ``ValueError`` as the standard library raises for a method the platform lacks."""


def _checked(method: str) -> str:
    if method == "fork":
        raise StartMethodUnavailable(
            "the 'fork' start method cannot be honoured: calls run in separate worker processes (possibly on other"
            " machines), which cannot inherit this process's memory. Use 'spawn': functions, their arguments and"
            " the globals they use are pickled to the workers"
        )
    if method not in _METHODS:
        raise ValueError(f"cannot find context for {method!r}")
    return method


class Context:
    """What ``get_context()`` returns: the names of ``cloudbutton.multiprocessing`` (``ctx.Pool``,
    ``ctx.Process``, ...), as a ``multiprocessing`` context has those of ``multiprocessing``."""

    def __init__(self, method: str):
        self._method = method

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._method

    def get_context(self, method: str | None = None) -> Context:
        return self if method is None else get_context(method)

    def set_start_method(self, method, force: bool = False) -> None:
        raise ValueError("cannot set start method of concrete context")

    def __getattr__(self, name: str):
        from .. import multiprocessing as package

        if name.startswith("_") or name not in package.__all__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(package, name)

    def __repr__(self) -> str:
        return f"<cloudbutton.multiprocessing context {self._method!r}>"


class SpawnContext(Context):
    @property
    def Process(self):  # noqa: N802 - the standard library's name
        from .process import SpawnProcess

        return SpawnProcess


class ForkServerContext(Context):
    @property
    def Process(self):  # noqa: N802 - the standard library's name
        from .process import ForkServerProcess

        return ForkServerProcess


_contexts = {"spawn": SpawnContext("spawn"), "forkserver": ForkServerContext("forkserver")}


def get_context(method: str | None = None) -> Context:
    """The context of ``method`` ('spawn' or 'forkserver'; None: the current one), one per method;
    'fork' raises ``StartMethodUnavailable``."""
    return _contexts[get_start_method() if method is None else _checked(method)]


def get_start_method(allow_none: bool = False) -> str | None:
    global _start_method
    if _start_method is None and not allow_none:
        _start_method = "spawn"
    return _start_method


def set_start_method(method: str | None, force: bool = False) -> None:
    global _start_method
    if _start_method is not None and not force:
        raise RuntimeError("context has already been set")
    _start_method = None if method is None else _checked(method)


def get_all_start_methods() -> list[str]:
    return list(_METHODS)


def cpu_count() -> int:
    """Calls that run at once on the configured backend: its ``max_workers`` setting if set, else the
    CPU count of this machine (the default of the ``local`` backend)."""
    from ..config import resolve_config

    return resolve_config().max_workers or os.cpu_count() or 1


def freeze_support() -> None:
    """Nothing to do: workers never re-run the main module."""


def get_logger():
    """The standard library's ``multiprocessing`` logger (``multiprocessing.get_logger()``)."""
    return multiprocessing.get_logger()


def log_to_stderr(level=None):
    """The standard library's ``multiprocessing.log_to_stderr(level)``: its logger, printing to stderr. It
    logs the standard library's own events in this process; cloudbutton's are under the ``cloudbutton``
    logger."""
    return multiprocessing.log_to_stderr(level)


def parent_process():
    """None outside a Process (as in the standard library's main process). Inside a Process's call it raises
    ``NotImplementedError``: the process that started it may run on another machine and cannot be reached."""
    from . import process

    if process._current is None:
        return None
    raise NotImplementedError(
        "the parent of a cloudbutton Process cannot be reached from its call (it may run on another machine):"
        " pass what the child needs as arguments, or exchange it through a Queue or a Pipe"
    )


def set_executable(executable) -> None:
    """Workers run the interpreter their backend provides: the ``local`` backend's run this one
    (``sys.executable``), which is accepted; another raises ``NotImplementedError``."""
    if os.path.realpath(os.fsdecode(executable)) == os.path.realpath(sys.executable):
        return
    raise NotImplementedError(
        f"workers cannot be told to run {executable!r}: the local backend's run this interpreter ({sys.executable});"
        " to run another Python, run your script with it, or use a backend whose workers have it (e.g. a container"
        " image for the http backend, or a Dask cluster started with it)"
    )
