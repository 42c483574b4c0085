"""cloudbutton: run unmodified Python functions in parallel, next to your data, on any compute."""

import importlib

from .errors import (
    BackendError,
    CallTimeoutError,
    CloudbuttonError,
    ConfigError,
    MemoryLimitError,
    RemoteError,
    SerializationError,
    StateError,
    StorageError,
    WaitTimeoutError,
    WorkerLostError,
)

__version__ = "0.1.0"

# Imported on first use, so that worker processes (which import cloudbutton.worker) start fast.
_LAZY = {
    "Config": ".config",
    "FunctionExecutor": ".executor",
    "RetryingFunctionExecutor": ".executor",
    "FuturesList": ".futures",
    "ResponseFuture": ".futures",
    "ALL_COMPLETED": ".futures",
    "ANY_COMPLETED": ".futures",
    "ALWAYS": ".futures",
    "get_result": ".futures",
    "wait": ".futures",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'cloudbutton' has no attribute {name!r}")


__all__ = [
    "ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "BackendError", "CallTimeoutError", "CloudbuttonError",
    "Config", "ConfigError", "FunctionExecutor", "FuturesList", "MemoryLimitError", "RemoteError", "ResponseFuture",
    "RetryingFunctionExecutor",
    "SerializationError", "StateError", "StorageError", "WaitTimeoutError", "WorkerLostError", "__version__",
    "get_result", "wait",
]
