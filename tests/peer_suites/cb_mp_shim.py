"""``multiprocessing`` as the CPython test module loaded by ``cpython_multiprocessing.py`` sees it.

The harness rewrites that module's ``import multiprocessing...`` statements to import this module instead,
so the tests exercise ``cloudbutton.multiprocessing`` while cloudbutton itself keeps the real
``multiprocessing``. It is an ordinary module on ``sys.path``, so workers import it by reference.

A name resolves to cloudbutton's object when cloudbutton has it (``cb_mp_shim.Queue`` is
``cloudbutton.multiprocessing.Queue``, ``cb_mp_shim.connection.wait`` is
``cloudbutton.multiprocessing.connection.wait``). The standard library's is used only for private names
(the test harness's own bookkeeping, such as ``process._dangling``) and for submodules that
cloudbutton does not mirror (``dummy``, ``heap``, ``util``, ``resource_tracker``, ...). A public name
that cloudbutton's module lacks raises ``AttributeError``, so the tests that need it fail and show it.
"""

import importlib
import multiprocessing as _std
import sys
import types

import cloudbutton.multiprocessing as _cb

__path__ = []  # a package, so that ``from cb_mp_shim.connection import wait`` finds the entries below

_SUBMODULES = (
    "connection", "context", "dummy", "forkserver", "heap", "managers", "pool", "process", "queues",
    "reduction", "resource_sharer", "resource_tracker", "shared_memory", "sharedctypes", "spawn",
    "synchronize", "util",
)


def set_forkserver_preload(module_names):
    """Called by CPython's ``setUpModule``; cloudbutton has no forkserver to preload."""


def _lookup(cb_module, std_module, where: str, name: str):
    if cb_module is not None and hasattr(cb_module, name):
        return getattr(cb_module, name)
    if cb_module is None or name.startswith("_"):
        return getattr(std_module, name)
    raise AttributeError(f"cloudbutton.{where} has no attribute {name!r} (the standard library's has)")


class _Merged(types.ModuleType):
    """One submodule: cloudbutton's where it has one, with the standard library's private names."""

    def __init__(self, sub: str, cb_module, std_module):
        super().__init__(f"{__name__}.{sub}")
        self.__dict__["_where"] = (cb_module, std_module, f"multiprocessing.{sub}")

    def __getattr__(self, name: str):
        cb_module, std_module, where = self.__dict__["_where"]
        return _lookup(cb_module, std_module, where, name)

    def __reduce__(self):  # by reference, as a module is (a test class pickled by value refers to some)
        return importlib.import_module, (self.__name__,)


def _submodule(sub: str):
    try:
        std_module = importlib.import_module(f"multiprocessing.{sub}")
    except ImportError:
        return None
    try:
        cb_module = importlib.import_module(f"cloudbutton.multiprocessing.{sub}")
    except ModuleNotFoundError:
        cb_module = None
    return _Merged(sub, cb_module, std_module)


for _sub in _SUBMODULES:
    _module = _submodule(_sub)
    if _module is not None:
        sys.modules[_module.__name__] = _module
        globals()[_sub] = _module
del _sub, _module


def __getattr__(name: str):
    return _lookup(_cb, _std, "multiprocessing", name)
