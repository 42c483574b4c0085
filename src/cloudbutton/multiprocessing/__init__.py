"""A drop-in for ``multiprocessing``: ``Pool`` and ``Process`` whose work runs as calls on a
cloudbutton backend (local worker processes by default, a Dask cluster, serverless containers).

    from cloudbutton import multiprocessing as mp      # instead of: import multiprocessing as mp

    with mp.Pool() as pool:
        print(pool.map(abs, [-1, -2]))                 # [1, 2]

Functions and their arguments are pickled to the workers, as with the 'spawn' start method, but
the main module is never re-imported, so no ``if __name__ == "__main__":`` guard is needed. Queues,
locks, values and managers live in the state store (``cloudbutton.state``), so Processes anywhere
share them. What cannot work on workers that share no memory with the caller (``shared_memory``, the
'fork' start method) raises ``NotImplementedError`` naming the alternative.
"""

from multiprocessing import AuthenticationError, BufferTooShort, ProcessError, TimeoutError

from .connection import Pipe
from .context import (
    cpu_count,
    freeze_support,
    get_all_start_methods,
    get_context,
    get_logger,
    get_start_method,
    log_to_stderr,
    parent_process,
    set_executable,
    set_start_method,
)
from .managers import Manager
from .pool import Pool
from .process import Process, active_children, current_process
from .queues import JoinableQueue, Queue, SimpleQueue
from .synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore
from .values import Array, RawArray, RawValue, Value

__all__ = [
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore", "BufferTooShort", "Condition", "Event",
    "JoinableQueue", "Lock", "Manager", "Pipe", "Pool", "Process", "ProcessError", "Queue", "RLock", "RawArray",
    "RawValue", "Semaphore", "SimpleQueue", "TimeoutError", "Value", "active_children", "cpu_count",
    "current_process", "freeze_support", "get_all_start_methods", "get_context", "get_logger", "get_start_method",
    "log_to_stderr", "parent_process", "set_executable", "set_start_method",
]
