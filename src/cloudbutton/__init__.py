"""cloudbutton: run unmodified Python functions in parallel, next to your data, on any compute."""

from .config import Config
from .errors import (
    BackendError,
    CallTimeoutError,
    CloudbuttonError,
    ConfigError,
    MemoryLimitError,
    RemoteError,
    SerializationError,
    WaitTimeoutError,
    WorkerLostError,
)
from .executor import FunctionExecutor
from .futures import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, ResponseFuture, get_result, wait

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "BackendError", "CallTimeoutError", "CloudbuttonError",
    "Config", "ConfigError", "FunctionExecutor", "MemoryLimitError", "RemoteError", "ResponseFuture",
    "SerializationError", "WaitTimeoutError", "WorkerLostError", "__version__", "get_result", "wait",
]
