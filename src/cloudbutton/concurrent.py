"""A ``concurrent.futures.Executor`` whose calls run on a cloudbutton backend.

    from cloudbutton.concurrent import ServerlessExecutor   # instead of ProcessPoolExecutor

    with ServerlessExecutor(max_workers=4) as executor:
        print(list(executor.map(pow, [2, 3], [5, 2])))       # [32, 9]

This module is also imported by worker processes (they unpickle ``_Task`` from it), so it imports
the executor machinery only when an executor is created.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import itertools
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import CloudbuttonError

__all__ = ["InitializerError", "ServerlessExecutor"]


class InitializerError(CloudbuttonError, BrokenProcessPool):
    """The ``initializer`` of a ``ServerlessExecutor`` or ``Pool`` raised in a worker: the calls that
    needed it fail with this error, and so does every later submission. It is a ``BrokenProcessPool``
    (and so a ``concurrent.futures.BrokenExecutor``), as ProcessPoolExecutor raises in that case."""


# --- the worker side ------------------------------------------------------------------------

_initialized: dict[tuple[str, int], tuple[dict | None, tuple[str, BaseException] | None]] = {}
"""In a worker process: (initializer token, id of its globals) -> (those globals, kept so that the id
stays theirs; None once the initializer ran, or (message, exception) if it raised)."""

_initializing = threading.RLock()
"""Held while an initializer runs, so that two threads of one worker process cannot both run it
(reentrant: an initializer may itself run a call that needs an initializer)."""


class _Initializer:
    """An executor's ``initializer(*initargs)``, run once per worker process before its first call.

    Workers are shared by executors and reused, so each executor's initializer has a token of its
    own. A function shipped by value (from the user's own files) gets fresh globals each time it is
    unpickled, so such an initializer runs once per worker for each function it precedes: the
    globals it sets are then the ones that function sees, as in a process of ProcessPoolExecutor."""

    def __init__(self, initializer: Callable, initargs: tuple):
        self.initializer, self.initargs = initializer, tuple(initargs)
        self.token = secrets.token_hex(8)

    def ensure(self) -> None:
        namespace = getattr(self.initializer, "__globals__", None)
        key = (self.token, id(namespace))
        with _initializing:
            if key not in _initialized:
                failure = None
                try:
                    self.initializer(*self.initargs)
                except BaseException as e:  # noqa: BLE001 - SystemExit too: the worker must survive it
                    name = getattr(self.initializer, "__qualname__", repr(self.initializer))
                    failure = (
                        f"the initializer {name} raised {type(e).__name__}: {e} in worker process {os.getpid()}", e
                    )
                _initialized[key] = (namespace, failure)
            failure = _initialized[key][1]
        if failure is not None:
            message, cause = failure
            raise InitializerError(message) from cause


class _Task:
    """The user's function as shipped to workers: runs the initializer first, if there is one.

    With ``chunked``, one call runs the function over a list of items and returns the list of
    results (as ``multiprocessing.Pool`` and ``ProcessPoolExecutor.map`` send chunks); each item is
    the single argument, or with ``star`` a tuple of arguments. With ``pickled``, the result is
    returned pickled (``serialize.loads`` it): one that cannot be pickled fails the call with
    ``multiprocessing.pool.MaybeEncodingError``, as in the standard library's Pool. With ``recycle``
    ``(token, n)``, the worker process is replaced once it ran ``n`` calls of that token (successful
    or not), as a Pool's worker with ``maxtasksperchild``."""

    def __init__(self, fn: Callable, init: _Initializer | None, chunked: bool = False, star: bool = False,
                 pickled: bool = False, recycle: tuple[str, int] | None = None):
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        self.fn, self.init, self.chunked, self.star, self.pickled = fn, init, chunked, star, pickled
        self.recycle = recycle
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__name__)  # names the calls in errors

    def __call__(self, /, *args, **kwargs):  # keyword arguments named self (or anything) reach fn
        if self.init is not None:
            self.init.ensure()
        try:
            if self.chunked:
                fn = self.fn
                result = [fn(*item) for item in args[0]] if self.star else [fn(item) for item in args[0]]
            else:
                result = self.fn(*args, **kwargs)
            return _pickled(result) if self.pickled else result
        finally:
            if self.recycle is not None:
                _count_task(*self.recycle)


_tasks_run: dict[str, int] = {}
"""In a worker process: how many calls of each recycling token (a Pool with maxtasksperchild) it ran."""


def _count_task(token: str, most: int) -> None:
    from .worker import retire

    _tasks_run[token] = _tasks_run.get(token, 0) + 1
    if _tasks_run[token] >= most:
        retire()  # the backend replaces this worker process once this call returns


def _pickled(value: Any) -> bytes:
    from multiprocessing.pool import MaybeEncodingError

    from .serialize import dumps

    try:
        return dumps(value)
    except Exception as e:  # noqa: BLE001 - whatever pickling raises, as the standard library's Pool
        raise MaybeEncodingError(e, value) from None


def _noop() -> None:
    """What Pool sends to run its initializer in each worker as it starts."""


# --- the caller side ------------------------------------------------------------------------


def _chunks(items: list, size: int) -> list[tuple[list]]:
    return [(items[i : i + size],) for i in range(0, len(items), size)]


class _Runner:
    """What ``ServerlessExecutor``, ``multiprocessing.Pool`` and ``Process`` share: a FunctionExecutor,
    the initializer, the broken state after it failed, and forgetting finished calls as they pile up."""

    def __init__(self, max_workers=None, initializer=None, initargs=(), backend=None, config=None,
                 maxtasks: int | None = None, **overrides):
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        from .executor import FunctionExecutor

        self.fexec = FunctionExecutor(backend=backend, max_workers=max_workers, config=config, **overrides)
        if maxtasks is not None and not self.fexec.backend.recycles_workers:
            self.fexec.shutdown()
            raise NotImplementedError(
                f"maxtasksperchild needs a backend that replaces a worker when a call asks for it, which"
                f" {self.fexec.config.backend!r} does not. To bound the memory of a leaking task, use"
                " Pool(runtime_memory=MB): a worker that exceeds it is replaced"
            )
        self.recycle = None if maxtasks is None else (secrets.token_hex(8), maxtasks)
        self.init = None if initializer is None else _Initializer(initializer, initargs)
        self.closed = False
        self.broken: str | None = None  # why, once an initializer failed
        self._lock = threading.Lock()
        self._finished = 0  # calls finished since the executor last forgot the finished ones
        self._count_lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self.fexec.backend.workers

    def task(self, fn: Callable, chunked: bool = False, star: bool = False, pickled: bool = False,
             counted: bool = True) -> _Task:
        return _Task(fn, self.init, chunked, star, pickled, self.recycle if counted else None)

    def submit(self, task: _Task, items: list[tuple], kwargs: dict | None = None,
               chunksize: int | None = None) -> list[cf.Future]:
        """One call per item (a tuple of positional arguments; ``kwargs`` go to each); returns futures."""
        with self._lock:
            if self.broken:
                raise InitializerError(f"{self.broken}; this executor can no longer be used")
            if self.closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            if task.recycle is not None:
                chunksize = 1  # a worker is replaced after the batch of its last call: batches of one
            futures = self.fexec.map(task, items, extra_args=kwargs or None, chunksize=chunksize)
            self._forget_finished()
        for f in futures:
            f.add_done_callback(self._finish)
        return futures

    def _finish(self, future: cf.Future) -> None:
        if self.init is not None:
            self._check_initializer(future)
        with self._count_lock:
            self._finished += 1
        if self._lock.acquire(blocking=False):  # else a thread is submitting: it does it then
            try:
                self._forget_finished()
            finally:
                self._lock.release()

    def _forget_finished(self) -> None:
        """As ProcessPoolExecutor, keep no call's arguments or result once its future is done: the
        executor forgets its finished calls once they are half of those it holds (so O(1) per call).
        With the lock held (never waited for in the backend's result thread, which runs this)."""
        if 2 * self._finished >= len(self.fexec.futures):
            with self._count_lock:
                self._finished = 0
            self.fexec.clean()

    def _check_initializer(self, future: cf.Future) -> None:
        """Once an initializer failed, fail every pending call, as a broken ProcessPoolExecutor does."""
        error = None if future.cancelled() else future.exception()
        if not isinstance(error, InitializerError) or self.broken:
            return
        self.broken = str(error)
        for f in list(self.fexec.futures):
            if not f.done():
                try:
                    f.set_exception(InitializerError(f"{self.broken}; the executor broke before this call ran"))
                except cf.InvalidStateError:
                    pass  # it finished meanwhile

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self.closed = True
        _open_runners.discard(self)
        if wait or cancel_futures:
            self.fexec.shutdown(wait=wait, cancel_futures=cancel_futures)
        else:  # the calls still run; the backend is released once they are done
            threading.Thread(target=self.fexec.shutdown, name="cloudbutton-shutdown", daemon=True).start()


class ServerlessExecutor(cf.Executor):
    """``concurrent.futures.ProcessPoolExecutor``'s interface over a cloudbutton backend.

    ``max_workers``: calls running at once (default: the backend's). ``initializer(*initargs)`` runs
    once in each worker process before its first call of this executor (an initializer from your own
    files, shipped by value, runs once per worker for each function submitted, so that the globals it
    sets are those the function sees); if it raises, the calls fail with ``InitializerError`` (a
    ``BrokenProcessPool``) and so does every later ``submit``. ``backend``, ``config`` and
    ``**overrides`` are those of ``FunctionExecutor``.

    Differences from ProcessPoolExecutor: a worker that dies fails only the call it ran
    (``WorkerLostError``), and the executor stays usable; calls queued when an initializer failed may
    still run on other workers, their results discarded.
    """

    def __init__(
        self, max_workers: int | None = None, initializer: Callable | None = None, initargs: tuple = (),
        backend: str | None = None, config=None, **overrides: Any,
    ):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._runner = _Runner(max_workers, initializer, initargs, backend, config, **overrides)
        _finish_at_exit(self._runner)
        weakref.finalize(self, _forget_when_done, self._runner)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` once; return its future."""
        return self._runner.submit(self._runner.task(fn), [args], kwargs)[0]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1) -> Iterator:
        """Like ``map(fn, *iterables)``; every call is submitted at once, results come in order.

        The iterator raises a call's exception when it reaches it, and ``TimeoutError`` if a result
        is not ready ``timeout`` seconds after ``map`` was called. ``chunksize`` > 1 sends that many
        items per call (fewer, bigger calls: faster for quick functions)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables, strict=False))  # as map(): up to the shortest
        if chunksize == 1:
            futures = self._runner.submit(self._runner.task(fn), items)
        else:
            futures = self._runner.submit(self._runner.task(fn, chunked=True, star=True), _chunks(items, chunksize))
        results = _results_in_order(futures, end)
        return results if chunksize == 1 else itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``cancel_futures`` cancel the calls not finished; with ``wait``
        return once the rest are done (else at once; the backend is released when they are)."""
        self._runner.shutdown(wait, cancel_futures)

    @property
    def executor(self):
        """The underlying ``FunctionExecutor`` (for its ``stats()``, ``job_summary()``, ...)."""
        return self._runner.fexec


_open_runners: set[_Runner] = set()  # strong: an executor dropped without shutdown still finishes its calls


def _finish_at_exit(runner: _Runner) -> None:
    """As ProcessPoolExecutor does, the interpreter waits at exit for the calls of executors not shut
    down. Registered again after each runner (and so after its backend's exit handler): it runs first."""
    atexit.unregister(_wait_for_open_runners)
    atexit.register(_wait_for_open_runners)
    _open_runners.add(runner)


def _forget_when_done(runner: _Runner) -> None:
    """An executor was dropped without shutdown: its calls still finish (and are waited for at exit),
    then its runner is forgotten, so that its memory is freed."""
    from .executor import _when_all_done

    def forget() -> None:
        _open_runners.discard(runner)
        runner.shutdown(wait=False)  # releases the backend and the executor's stored data, from a thread of its own

    _when_all_done([f for f in runner.fexec.futures if not f.done()], forget)


def _wait_for_open_runners() -> None:
    for runner in list(_open_runners):
        runner.shutdown(wait=True)


def _results_in_order(futures: list[cf.Future], end: float | None) -> Iterator:
    """Yields results as ``Executor.map`` does; leaving it early cancels the calls not yet yielded."""
    futures = futures[::-1]  # a copy: the executor keeps the list it returned
    try:
        while futures:
            future = futures.pop()
            try:
                result = future.result(None if end is None else end - time.monotonic())
            finally:
                future.cancel()  # when it timed out (a no-op if it is done)
            yield result
    finally:
        for future in futures:
            future.cancel()
