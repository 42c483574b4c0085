"""The one worker runtime: unpack a call, run the user's function, capture its result or
exception and its stats. Every backend runs calls through ``Runtime.run_call``; the ``local``
backend's worker processes run ``main()`` (``python -m cloudbutton.worker SOCKET_FD PROGRESS_FD PARENT_PID``)."""

from __future__ import annotations

import collections
import os
import pickle
import resource
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from . import serialize, spill
from .errors import SerializationError
from .job import JobSpec

_MB = 2**20

_calls = threading.local()


def retire() -> None:
    """Ask for the worker process running this call to be replaced once the call returns (a Pool's
    ``maxtasksperchild``)."""
    _calls.retire = True


def in_call() -> bool:
    """Whether this thread is running a call: calls use their caller's state server, never one of their own."""
    return getattr(_calls, "running", False)


class Runtime:
    """Runs calls in this process; caches each job's function so it is unpickled once."""

    def __init__(self, worker_id: str, enforce_memory: bool = False):
        self.worker_id = worker_id
        self.enforce_memory = enforce_memory
        self.calls_run = 0
        self._functions: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def function(self, job: JobSpec):
        func = self._functions.get(job.function_key)
        if func is None:
            if job.function_bytes is None:
                raise RuntimeError(f"worker {self.worker_id} was sent job {job.key} without its function")
            func = serialize.loads(job.function_bytes)
            self._functions[job.function_key] = func
            if len(self._functions) > 64:
                self._functions.popitem(last=False)
        return func

    def run_batch(
        self, job: JobSpec, calls: list[tuple[int, bytes]], starting: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, bool, bytes, dict]]:
        """Run calls of one job in turn, yielding each result as soon as it is ready; ``starting``
        is told the position in ``calls`` of each call before it runs."""
        if job.sys_path is not None and sys.path != list(job.sys_path):
            sys.path[:] = job.sys_path
        for position, (index, args_bytes) in enumerate(calls):
            if starting is not None:
                starting(position)
            yield self.run_call(job, index, args_bytes)

    def run_call(self, job: JobSpec, index: int, args_bytes: bytes) -> tuple[int, bool, bytes, dict]:
        """Run one call; returns ``(index, ok, payload, stats)`` where payload is the pickled result,
        or, when not ok, the pickled ``(exception or None, type name, message, traceback)``."""
        stats: dict[str, Any] = {
            "worker_id": self.worker_id,
            "cold_start": self.calls_run == 0,
            "started": time.time(),
        }
        self.calls_run += 1
        saved_env = None
        memory_limited = self.enforce_memory and job.runtime_memory is not None
        _calls.running = True
        try:
            if job.cwd is not None:
                _enter(job.cwd)  # every call starts in the caller's directory, even if the last one left it
            saved_env = _apply_env(job.extra_env)
            if memory_limited:
                _limit_memory(job.runtime_memory)
            func = self.function(job)
            args_bytes = spill.unspill(args_bytes)
            stats["args_bytes"] = len(args_bytes)
            args, kwargs = serialize.loads(args_bytes)
            result = func(*args, **kwargs)
            payload, ok = _dumps_result(job, index, result), True
        except BaseException as e:  # noqa: BLE001 - everything a call raises goes back to the caller
            payload, ok = _pack_exception(e), False
            if memory_limited and isinstance(e, MemoryError):
                stats["memory_exceeded"] = True
        finally:
            _calls.running = False
            if getattr(_calls, "retire", False):
                _calls.retire, stats["retire"] = False, True
            if memory_limited:
                _limit_memory(None)
        stats["result_bytes"] = len(payload) if ok else 0
        try:  # still with the call's extra_env: it may hold the storage's credentials
            if job.data_url and job.storage_threshold and len(payload) > job.storage_threshold:
                payload = spill.spill(payload, f"{job.data_url}/results/{index:05d}")
        except Exception as e:  # noqa: BLE001 - the call's outcome is this error instead
            payload, ok, stats["result_bytes"] = _pack_exception(e), False, 0
        finally:
            _apply_env(saved_env)
        stats["finished"] = time.time()
        stats["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return index, ok, payload, stats


def _enter(cwd: str) -> None:
    try:
        if os.getcwd() == cwd:
            return
    except FileNotFoundError:  # the directory of an earlier job was deleted
        pass
    os.chdir(cwd)  # an OSError here (the caller's directory is gone) is this call's exception


def _dumps_result(job: JobSpec, index: int, result: Any) -> bytes:
    try:
        return serialize.dumps(result)
    except Exception as e:
        name = job.call_name(index)
        raise SerializationError(f"the result of call {name} ({type(result).__name__}) cannot be pickled: {e}") from e


def _pack_exception(exc: BaseException) -> bytes:
    try:
        message = str(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__ and exc.__traceback__.tb_next))
    except Exception as e:  # an exception whose __str__ fails still goes back
        message = tb = f"<the exception could not be printed: {e!r}>"
    try:
        exc_bytes = serialize.dumps(exc)
        pickle.loads(exc_bytes)  # some exceptions pickle but cannot be rebuilt; send those as text
    except Exception:
        exc_bytes = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return pickle.dumps((exc_bytes, name, message, tb))


def _apply_env(env):
    """Set ``env`` (None values unset a variable); return what restores the previous values."""
    if not env:
        return None
    saved = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(value)
    return saved


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_memory(mb: int | None) -> None:
    """Bound the address space to what the idle worker uses plus ``mb`` (None lifts the bound)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = hard if mb is None else _address_space() + mb * _MB
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_process_runtime: Runtime | None = None


def run_batch(job: JobSpec, calls: list[tuple[int, bytes]], worker_id: str = "") -> list:
    """Run a batch in this process and return the results: the entry point for engines such as
    Dask that call a function and take its return value."""
    global _process_runtime
    if _process_runtime is None:
        _process_runtime = Runtime(worker_id or f"{os.uname().nodename}:{os.getpid()}")
    return list(_process_runtime.run_batch(job, calls))


def _exit_with_parent(parent_pid: int) -> None:
    """Workers must not outlive the interpreter that started them, even if it was killed."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            if os.getpgid(0) == os.getpid():  # a group of its own: end what its calls started too
                os.killpg(0, signal.SIGKILL)
            os._exit(0)


PROGRESS = struct.Struct("qqd")
"""What a local worker is doing, in memory it shares with the caller: (batch number, position in
that batch of the call running or the batch's length once it is done, monotonic start time). It
tells the caller which call to blame if the worker dies and when a call's timeout expires, while
results travel in groups."""


def read_progress(memory) -> tuple[int, int, float]:
    while True:  # the writer may be midway: read until two reads agree
        first, second = PROGRESS.unpack_from(memory), PROGRESS.unpack_from(memory)
        if first == second:
            return first


class _ResultSender:
    """Sends results in groups: a result waits at most FLUSH_DELAY for others to share its message
    (one message per quick call would cost more than the call), a batch's last goes at once."""

    FLUSH_DELAY = 0.002

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()
        self.pending: list = []
        self.has_pending = threading.Event()
        threading.Thread(target=self._flush_soon_forever, daemon=True).start()

    def add(self, result) -> None:
        with self.lock:
            self.pending.append(result)
            if len(self.pending) == 1:
                self.has_pending.set()

    def flush(self) -> None:
        with self.lock:
            self.has_pending.clear()
            if self.pending:
                self.conn.send_bytes(pickle.dumps(self.pending, protocol=pickle.HIGHEST_PROTOCOL))
                self.pending = []

    def _flush_soon_forever(self) -> None:
        while True:
            self.has_pending.wait()
            time.sleep(self.FLUSH_DELAY)
            try:
                self.flush()
            except OSError:
                os._exit(0)  # the caller is gone
            except Exception:  # e.g. MemoryError under a call's memory limit: the batch's end flushes
                pass


def main(fd: int, progress_fd: int, parent_pid: int) -> None:
    import mmap
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    conn = Connection(fd)
    progress = mmap.mmap(progress_fd, PROGRESS.size)
    sender = _ResultSender(conn)
    runtime = Runtime(f"local:{os.getpid()}", enforce_memory=True)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        number, job, calls = pickle.loads(message)
        if job is None:
            return

        def starting(position: int, number: int = number) -> None:
            PROGRESS.pack_into(progress, 0, number, position, time.monotonic())

        for result in runtime.run_batch(job, calls, starting):
            sender.add(result)
        starting(len(calls))
        try:
            sender.flush()
        except OSError:
            return


if __name__ == "__main__":
    from cloudbutton.worker import main as run  # the module itself, not this copy run as __main__

    run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
