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
from typing import Any, NamedTuple

from . import serialize, spill
from .errors import SerializationError
from .job import JobSpec

_MB = 2**20
_MARK_SIZE = len(spill.MARK)
_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
loads = pickle.loads
getrusage, RUSAGE_SELF = resource.getrusage, resource.RUSAGE_SELF

_calls = threading.local()

STATS = ("worker_id", "cold_start", "started", "finished", "peak_rss", "args_bytes", "result_bytes", "extra")
"""The fields of a call's stats as ``run_call`` returns them: timestamps from ``time.time()``, sizes in
bytes (-1: not known, e.g. the arguments could not be read), and ``extra``, None or a dict of the
rare ones (``memory_exceeded``, ``retire``)."""


class Results(NamedTuple):
    """The results of a group of calls of one job, column by column: what a local worker sends in
    one message (columns pickle and load faster than a tuple per call, and are stored as they are)."""

    indices: tuple[int, ...]
    oks: tuple[bool, ...]
    payloads: tuple[bytes, ...]
    stats: tuple[tuple, ...]  # one column per field of STATS

    @classmethod
    def of(cls, results: list[tuple[int, bool, bytes, tuple]]) -> Results:
        """The columns of results as ``Runtime.run_call`` returns them."""
        indices, oks, payloads, stats = zip(*results, strict=True) if results else ((), (), (), ())
        return cls(indices, oks, payloads, tuple(zip(*stats, strict=True)) if stats else ((),) * len(STATS))


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
        self._peak_rss = 0  # the process's peak resident size, as last read
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
    ) -> Iterator[tuple[int, bool, bytes, tuple]]:
        """Run calls of one job in turn, yielding each result as soon as it is ready; ``starting``
        is told the position in ``calls`` of each call before it runs."""
        self.enter(job)
        for position, (index, args_bytes) in enumerate(calls):
            if starting is not None:
                starting(position)
            yield self.run_call(job, index, args_bytes)

    @staticmethod
    def enter(job: JobSpec) -> None:
        """Before a batch of ``job``'s calls: the caller's ``sys.path``."""
        if job.sys_path is not None and sys.path != list(job.sys_path):
            sys.path[:] = job.sys_path

    def run_call(self, job: JobSpec, index: int, args_bytes: bytes) -> tuple[int, bool, bytes, tuple]:
        """Run one call; returns ``(index, ok, payload, stats)`` where payload is the pickled result,
        or, when not ok, the pickled ``(exception or None, type name, message, traceback)``, and
        stats is a tuple of the :data:`STATS` fields (a dict per call would cost more than the call)."""
        started, cold = time.time(), self.calls_run == 0
        self.calls_run += 1
        saved_env = None
        memory_limited = self.enforce_memory and job.runtime_memory is not None
        memory_exceeded = False
        args_size = -1
        _calls.running, _calls.retire = True, False
        try:
            if job.cwd is not None:
                _enter(job.cwd)  # every call starts in the caller's directory, even if the last one left it
            if job.extra_env:
                saved_env = _apply_env(job.extra_env)
            if memory_limited:
                _limit_memory(job.runtime_memory)
            func = self._functions.get(job.function_key) or self.function(job)
            if args_bytes[:_MARK_SIZE] == spill.MARK:
                args_bytes = spill.unspill(args_bytes)
            args_size = len(args_bytes)
            args, kwargs = loads(args_bytes)
            result = func(*args, **kwargs)
            payload, ok = _dumps_result(job, index, result), True
        except BaseException as e:  # noqa: BLE001 - everything a call raises goes back to the caller
            payload, ok = _pack_exception(e), False
            memory_exceeded = memory_limited and isinstance(e, MemoryError)
        finally:
            _calls.running = False
            if memory_limited:
                _limit_memory(None)
        result_size = len(payload) if ok else 0
        try:  # still with the call's extra_env: it may hold the storage's credentials
            if job.storage_threshold and len(payload) > job.storage_threshold and job.data_url:
                payload = spill.spill(payload, f"{job.data_url}/results/{index:05d}")
        except Exception as e:  # noqa: BLE001 - the call's outcome is this error instead
            payload, ok, result_size = _pack_exception(e), False, 0
        finally:
            if saved_env is not None:
                _apply_env(saved_env)
        finished = time.time()
        if finished - started > 0.0005 or not self._peak_rss:  # a quicker call barely moves the peak
            self._peak_rss = getrusage(RUSAGE_SELF).ru_maxrss * 1024
        extra = None
        if memory_exceeded or _calls.retire:
            extra = {"memory_exceeded": True} if memory_exceeded else {}
            if _calls.retire:
                _calls.retire, extra["retire"] = False, True
        stats = (self.worker_id, cold, started, finished, self._peak_rss, args_size, result_size, extra)
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
        if type(result) in _SCALARS:
            return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
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
                self.conn.send_bytes(pickle.dumps(Results.of(self.pending), protocol=pickle.HIGHEST_PROTOCOL))
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
    pack_progress, monotonic, run_call, add = PROGRESS.pack_into, time.monotonic, runtime.run_call, sender.add
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        number, job, calls = pickle.loads(message)
        if job is None:
            return

        runtime.enter(job)
        for position, (index, args_bytes) in enumerate(calls):  # Runtime.run_batch, without its layers
            pack_progress(progress, 0, number, position, monotonic())
            add(run_call(job, index, args_bytes))
        pack_progress(progress, 0, number, len(calls), monotonic())
        try:
            sender.flush()
        except OSError:
            return


if __name__ == "__main__":
    from cloudbutton.worker import main as run  # the module itself, not this copy run as __main__

    run(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
