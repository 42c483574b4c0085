"""``multiprocessing.Process`` as one call on a cloudbutton backend."""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.process import AuthenticationString

from ..errors import WorkerLostError
from . import context

__all__ = ["Process", "active_children", "current_process"]

_names = itertools.count(1)
_current: Process | None = None  # in a worker: the Process whose call is running
_started: set[Process] = set()  # started and not yet seen to end
_runner = None  # the executor of every Process, made at the first start()
_runner_lock = threading.Lock()


def _bootstrap(process: Process) -> tuple[int, str, int]:
    """Run a Process in a worker as the standard library runs it in a child: returns its exit code,
    what the child would have printed to stderr on failure, and the worker's pid."""
    global _current
    _current, message = process, ""
    context._start_method = process._start_method  # what the child's get_start_method() says
    try:
        process.run()
        exitcode = 0
    except SystemExit as e:
        if e.code is None:
            exitcode = 0
        elif isinstance(e.code, int):  # what the OS keeps of a process's exit status, as in the stdlib
            exitcode = int(e.code) & 0xFF
        else:
            exitcode, message = 1, f"{e.code}\n"
    except BaseException:  # noqa: BLE001 - as the standard library's child, report anything
        exitcode, message = 1, f"Process {process.name}:\n{traceback.format_exc()}"
    finally:
        _current = None
        _close_pipe_ends(process)
    return exitcode, message, os.getpid()


def _pipe_ends(process: Process) -> list:
    """The Pipe ends a Process was given (its arguments and attributes)."""
    from .connection import Connection

    ends = []
    for value in vars(process).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else (value,)
        ends += [item for item in items if isinstance(item, Connection)]
    return ends


def _close_pipe_ends(process: Process) -> None:
    """Close the Pipe ends a Process was given, as a child's exit closes its descriptors: a peer blocked
    in ``recv()`` then gets EOFError instead of waiting forever (if no other process holds the end)."""
    for end in _pipe_ends(process):
        end.close()


def _process_runner():
    """One executor runs every Process (made from the configuration at the first ``start()``); at
    exit, Processes not marked daemon are joined first, as the standard library does."""
    global _runner
    with _runner_lock:
        if _runner is None:
            from ..concurrent import _Runner

            _runner = _Runner()
            atexit.register(_join_at_exit)  # registered after the backend's: runs before it stops
        return _runner


def _join_at_exit() -> None:
    from ..futures import discard

    for process in list(_started):
        if not process.daemon:
            process.join()
    for process in list(_started):  # daemons are terminated, as the standard library does
        discard(process._future)
    _runner.shutdown(wait=False, cancel_futures=True)


def _exitcode_of_lost(error: WorkerLostError) -> int:
    """A worker that died: the exit code the standard library would report (-N for signal N)."""
    return 1 if error.exitcode is None else error.exitcode


class Process:
    """``multiprocessing.Process``: ``run()`` (by default ``target(*args, **kwargs)``) runs as one
    call on the configured backend. Subclasses may override ``run()``; the object is pickled to the
    worker, so its attributes must be picklable (an unpicklable one fails ``start()`` with
    ``SerializationError``).

    ``exitcode`` is 0, 1 after an uncaught exception (whose traceback is printed to this process's
    stderr), ``n`` after ``sys.exit(n)``, and ``-N`` if the worker was killed by signal N. ``pid`` is
    the worker process's, known once the call finished. On the local backend every running Process has a
    worker of its own (the pool grows), so Processes that wait for each other work as in the standard
    library; on a Dask cluster at most as many run at once as it has slots, the others wait for one.
    ``terminate()`` and ``kill()`` are not supported.
    """

    _context_method: str | None = None  # set by the Process classes of a context (ctx.Process)

    def __init__(
        self, group: None = None, target: Callable | None = None, name: str | None = None, args: Iterable = (),
        kwargs: Mapping | None = None, *, daemon: bool | None = None,
    ):
        if group is not None:
            raise AssertionError("group argument must be None for now")
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self._name = str(name) if name is not None else f"{type(self).__name__}-{next(_names)}"
        self._daemon = bool(daemon)
        self._authkey = bytes(current_process().authkey)  # inherited, as in the standard library
        self._future: cf.Future | None = None
        self._exitcode: int | None = None
        self._pid: int | None = None
        self._settle_lock = threading.Lock()
        self._sentinel: int | None = None  # the read end of a pipe whose write end closes when the Process ends
        self._close_sentinel: weakref.finalize | None = None
        self._holds: list[tuple] = []  # of the Pipe ends the worker got (see connection._copies_holds)
        self._closed = False

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    def run(self) -> None:
        """What the Process does; subclasses may override it."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self) -> None:
        self._check_closed()
        if self._future is not None:
            raise AssertionError("cannot start a process twice")
        self._start_method = self._context_method or context.get_start_method()
        runner = _process_runner()
        task = runner.task(_bootstrap)
        task.__qualname__ = self._name  # names the call in records and errors
        ends = _pipe_ends(self)
        with _runner_lock:  # Processes started by several threads at once count each other
            runner.fexec.backend.reserve(len(_started) + 1)  # a worker for each running Process: it may wait
            self._future = runner.submit(task, [(self,)])[0]
            _started.add(self)
        del self._target, self._args, self._kwargs  # as the standard library's: the worker has its own copies
        from .connection import _copies_holds

        self._holds = _copies_holds(ends)  # let go of if the worker dies, as a dead child's descriptors close
        this = weakref.ref(self)  # the executor keeps the future: it must not keep a finished Process alive
        self._future.add_done_callback(lambda _: (process := this()) is not None and process._settle())
        read_end, write_end = os.pipe()
        self._sentinel, self._close_sentinel = read_end, weakref.finalize(self, os.close, read_end)
        self._future.add_done_callback(lambda _: os.close(write_end))  # the sentinel turns readable: EOF

    def _settle(self) -> None:
        """Record the exit code once the call is over (and print what the child would have printed)."""
        with self._settle_lock:
            if self._exitcode is not None:
                return
            future, message = self._future, ""
            if future.cancelled():  # a daemon Process at exit
                self._exitcode = -signal.SIGTERM
            elif (error := future.exception()) is None:
                self._exitcode, message, self._pid = future.result()
            elif isinstance(error, WorkerLostError):  # the child died: the exit code says how, as in the stdlib
                self._exitcode = _exitcode_of_lost(error)
                from .connection import _release

                for hold in self._holds:
                    _release(*hold)
            else:
                self._exitcode = 1
                message = f"Process {self.name}:\n{''.join(traceback.format_exception(error))}"
            _started.discard(self)
            if message:
                sys.stderr.write(message)
                sys.stderr.flush()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the Process ends, or at most ``timeout`` seconds."""
        self._check_closed()
        if self._future is None:
            raise AssertionError("can only join a started process")
        cf.wait([self._future], timeout)
        if self._future.done():
            self._settle()

    def is_alive(self) -> bool:
        if self is _current:
            return True
        self._check_closed()
        return self._future is not None and not self._future.done()

    @property
    def exitcode(self) -> int | None:
        self._check_closed()
        if self._future is None or not self._future.done():
            return None
        self._settle()
        return self._exitcode

    @property
    def pid(self) -> int | None:
        if self is _current:
            return os.getpid()
        self._check_closed()
        return self._pid

    ident = pid

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes ready when the Process ends (for ``multiprocessing.connection.wait``)."""
        self._check_closed()
        if self._sentinel is None:
            raise ValueError("process not started")
        return self._sentinel

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name

    @property
    def authkey(self) -> bytes:
        """The key of the standard library's authentication (``multiprocessing.connection``), inherited
        from the process that made this one."""
        return AuthenticationString(self._authkey)

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._authkey = bytes(authkey)

    @property
    def daemon(self) -> bool:
        return self._daemon

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        if self._future is not None:
            raise AssertionError("process has already started")
        self._daemon = bool(daemonic)

    def terminate(self) -> None:
        raise NotImplementedError(
            "a Process runs as a call on a worker and cannot be stopped from outside; bound how long it may"
            " run with the timeout setting (CLOUDBUTTON_TIMEOUT=seconds, or FunctionExecutor(timeout=...))"
        )

    kill = terminate

    def close(self) -> None:
        """Release the Process's resources; most of its methods raise ValueError from now on."""
        if self._closed:
            return
        if self.is_alive():
            raise ValueError("Cannot close a process while it is still running. You should first call join()")
        if self._close_sentinel is not None:
            self._close_sentinel()
        _started.discard(self)
        self._closed = True

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_future", "_settle_lock", "_sentinel", "_close_sentinel", "_holds"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(
            state, _future=None, _settle_lock=threading.Lock(), _sentinel=None, _close_sentinel=None, _holds=[]
        )

    def __repr__(self) -> str:
        if self._closed:
            status = "closed"
        elif self._future is None:
            status = "initial"
        elif self.exitcode is None:
            status = "started"
        else:
            status = f"stopped exitcode={self.exitcode}"
        return f"<{type(self).__name__} name={self._name!r} {status}{' daemon' if self._daemon else ''}>"


def current_process():
    """Inside a Process's call, that Process; elsewhere the standard library's current process."""
    return _current if _current is not None else multiprocessing.current_process()


def active_children() -> list[Process]:
    """The Processes started here that have not ended."""
    return [p for p in list(_started) if p.is_alive()]


class SpawnProcess(Process):
    """``get_context("spawn").Process``: runs with the 'spawn' start method whatever the default."""

    _context_method = "spawn"


class ForkServerProcess(Process):
    """``get_context("forkserver").Process``."""

    _context_method = "forkserver"
