"""``multiprocessing.Pool`` over a cloudbutton backend."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import queue
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError  # the standard library's, which callers catch
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback  # the standard library's, which callers catch
from typing import Any

from .. import serialize
from ..concurrent import _chunks, _noop, _Runner
from ..errors import SerializationError
from ..futures import discard

__all__ = ["AsyncResult", "IMapIterator", "MaybeEncodingError", "Pool", "RemoteTraceback"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

_READ_AHEAD = 1024
"""Items of a lazy ``imap`` input read and not yet sent, at most (the reader waits for room)."""
_POLL = 0.1
"""How often (s) the threads feeding an ``imap`` check whether the pool was stopped while they wait."""


def _outcome(future: cf.Future) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, exception)`` of a finished call (its result comes pickled)."""
    if future.cancelled():
        return False, cf.CancelledError("the pool was terminated before this task finished")
    error = future.exception()
    if error is not None:
        return False, _with_remote_traceback(error)
    try:
        return True, serialize.loads(future.result())
    except Exception as e:  # noqa: BLE001 - e.g. its class cannot be imported here: the task's outcome
        return False, e


_REMOTE = "Remote traceback of call "


def _with_remote_traceback(error: BaseException) -> BaseException:
    """As the standard library's Pool, a task's exception has the remote traceback as its ``__cause__``
    (a ``RemoteTraceback``), besides the note that holds it."""
    if error.__cause__ is None:
        for note in getattr(error, "__notes__", ()):
            if note.startswith(_REMOTE):  # its first line names the call and the worker
                remote = note.split("\n", 1)[1]
                error.__cause__ = RemoteTraceback(f'\n"""\n{remote}"""')
                break
    return error


def _failed(error: BaseException) -> cf.Future:
    """A task that could not be sent: its result raises ``error`` (what pickling it raised), as in the
    standard library, where ``get()`` raises it."""
    if isinstance(error, SerializationError) and error.__cause__ is not None:
        error = error.__cause__
    future: cf.Future = cf.Future()
    future.set_exception(error)
    return future


def _first(results: list) -> Any:
    return results[0]


def _flat(chunk_results: list[list]) -> list:
    return list(itertools.chain.from_iterable(chunk_results))


class AsyncResult:
    """The result of ``apply_async``, ``map_async`` and ``starmap_async``.

    As in the standard library, a callback has run by the time the result is ready."""

    def __init__(self, pool: Pool, futures: list[cf.Future], combine: Callable, callback, error_callback):
        self._pool, self._combine = pool, combine  # makes the value from the calls' results
        self._callback, self._error_callback = callback, error_callback
        self._futures = list(futures)
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._left = len(self._futures)
        self._lock = threading.Lock()
        pool._outstanding.add(self)
        if not self._futures:  # nothing to do: ready at once, without callbacks (as in the standard library)
            self._callback = self._error_callback = None
            self._all_done()
        for f in self._futures:
            f.add_done_callback(self._one_done)

    def _one_done(self, _future) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._all_done()

    def _all_done(self) -> None:
        values = []
        for future in self._futures:  # the first error in input order is the result's
            ok, value = _outcome(future)
            if not ok:
                self._error = value
                break
            values.append(value)
        if self._error is None:
            self._value = self._combine(values)
        self._futures = []
        if self._callback is None and self._error_callback is None:
            self._finish()
        else:  # callbacks run in the pool's own thread, not in the backend's
            self._pool._run_callbacks(self)

    def _finish(self) -> None:
        callback = self._callback if self._error is None else self._error_callback
        if callback is not None:
            try:
                callback(self._value if self._error is None else self._error)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the others
                traceback.print_exc()
        pool, self._pool = self._pool, None  # as the standard library's: a finished result does not keep its pool
        pool._outstanding.discard(self)
        del pool
        self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; a task's exception is raised with its own type, ``multiprocessing.TimeoutError``
        if it is not ready within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"the result was not ready within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


ApplyResult = MapResult = AsyncResult


class IMapIterator:
    """The iterator of ``imap`` (results in input order) and ``imap_unordered`` (as they finish);
    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` if no result comes in time. A task's
    exception is raised at its place, and the iteration can go on after it."""

    def __init__(self, pool: Pool, ordered: bool, chunked: bool):
        self._ordered, self._chunked = ordered, chunked
        self._cond = threading.Condition()
        self._done: dict[int, Any] | collections.deque = {} if ordered else collections.deque()
        self._added = 0  # calls so far
        self._length: int | None = None  # calls in all, once the input is exhausted
        self._taken = 0  # calls whose outcome was taken
        self._arrived = 0  # calls whose outcome arrived
        self._input_error: BaseException | None = None  # comes after every outcome (unordered)
        self._buffer: collections.deque = collections.deque()  # the rest of a chunk's results
        self._outstanding = pool._outstanding  # not the pool: a feeder must not keep it alive
        self._outstanding.add(self)

    def _add(self, futures: list[cf.Future]) -> None:
        with self._cond:
            first, self._added = self._added, self._added + len(futures)
        for i, f in enumerate(futures, first):
            f.add_done_callback(lambda f, i=i: self._put(i, f))

    def _put(self, i: int, item: Any) -> None:
        with self._cond:
            if self._ordered:
                self._done[i] = item
            else:
                self._done.append(item)
                self._arrived += 1
                if self._input_error is not None and self._arrived == self._added - 1:
                    self._done.append(self._input_error)  # after the results of the tasks before it
            self._cond.notify_all()

    def _end(self, error: BaseException | None = None) -> None:
        """The input is exhausted (or raised ``error``, which then comes after the results)."""
        with self._cond:
            if self._length is not None:
                return
            if error is not None:
                if self._ordered:
                    self._done[self._added] = error
                elif self._arrived == self._added:
                    self._done.append(error)
                else:
                    self._input_error = error
                self._added += 1
            self._length = self._added
            self._cond.notify_all()
        self._outstanding.discard(self)

    def _ready(self) -> bool:
        if self._taken == self._length:
            return True
        return self._taken in self._done if self._ordered else bool(self._done)

    def __iter__(self) -> Iterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        if self._buffer:
            return self._buffer.popleft()
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout):
                raise TimeoutError(f"no result within {timeout} s")
            if self._taken == self._length:
                raise StopIteration
            item = self._done.pop(self._taken) if self._ordered else self._done.popleft()
            self._taken += 1
        ok, value = _outcome(item) if isinstance(item, cf.Future) else (False, item)
        if not ok:
            raise value
        if not self._chunked:
            return value
        self._buffer.extend(value)
        return self.next(timeout)

    __next__ = next


class Pool:
    """``multiprocessing.Pool``'s interface; its tasks run as calls on a cloudbutton backend.

    ``processes``: calls running at once (default: the backend's, the CPU count on ``local``).
    ``initializer(*initargs)`` runs in each worker process as the pool starts (and in any other worker
    before its first task); if it raises, the tasks fail with ``cloudbutton.concurrent.InitializerError``
    (the standard Pool would restart workers forever). With ``maxtasksperchild``, a worker that ran that
    many tasks of the pool is replaced, on backends that can (``recycles_workers``; elsewhere it raises
    ``NotImplementedError``). ``context`` is accepted and ignored. ``backend``, ``config`` and
    ``**overrides`` are those of ``FunctionExecutor`` (e.g. ``timeout=``, ``runtime_memory=``).

    As in the standard library, a task's exception has the remote traceback as its ``__cause__`` (a
    ``RemoteTraceback``); an argument that cannot be pickled raises what pickling it raised, and a
    result that cannot be pickled back ``MaybeEncodingError``, when the result is got. A task whose
    worker dies fails with ``WorkerLostError``; the other tasks complete (the standard Pool would
    hang). ``terminate()`` cancels the tasks not finished: their results raise
    ``concurrent.futures.CancelledError`` (the standard Pool leaves them waiting forever).
    """

    def __init__(
        self, processes: int | None = None, initializer: Callable | None = None, initargs: Iterable = (),
        maxtasksperchild: int | None = None, context=None, *, backend: str | None = None, config=None,
        **overrides: Any,
    ):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._runner = _Runner(processes, initializer, tuple(initargs), backend, config, maxtasksperchild, **overrides)
        if initializer is not None:  # as the standard library's, each worker runs it as the pool starts
            self._runner.submit(self._runner.task(_noop, counted=False), [()] * self._runner.workers, chunksize=1)
        self._state = _RUN
        self._outstanding: set = set()  # AsyncResults and IMapIterators not finished
        self._feeders: list[threading.Thread] = []
        self._stopped = threading.Event()  # set by terminate(): the imap feeders and readers stop
        self._callbacks: queue.SimpleQueue = queue.SimpleQueue()  # AsyncResults, then None
        self._callback_thread: threading.Thread | None = None
        self._callbacks_stopped = False
        self._lock = threading.Lock()
        # A pool dropped without close()/terminate() is terminated when it is collected (the standard Pool
        # does it in __del__): no thread of it refers to the pool, so it can be collected.
        self._finalizer = weakref.finalize(self, _stop_pool, self._runner, self._stopped, self._callbacks)

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit(self, func: Callable, items: list, star: bool, chunksize: int | None) -> tuple[list[cf.Future], bool]:
        """Calls of ``func`` over ``items`` (single arguments, or with ``star`` tuples of arguments);
        ``chunksize`` > 1 (or None: sized like the standard Pool's) sends that many items per call.
        Returns the futures and whether they are of chunks."""
        return _submit(self._runner, func, items, star, chunksize)

    def _run_callbacks(self, result: AsyncResult) -> None:
        with self._lock:
            if self._callbacks_stopped:  # a call that finished as the pool was terminated
                result._finish()
                return
            if self._callback_thread is None:
                self._callback_thread = threading.Thread(
                    target=_callback_loop, args=(self._callbacks,), name="cloudbutton-pool-callbacks", daemon=True
                )
                self._callback_thread.start()
        self._callbacks.put(result)

    # --- one task ---------------------------------------------------------------------------

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` run as one task; waits for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self, func: Callable, args: Iterable = (), kwds: dict | None = None, callback=None, error_callback=None
    ) -> AsyncResult:
        self._check_running()
        try:
            futures = self._runner.submit(self._runner.task(func, pickled=True), [tuple(args)], kwds)
        except SerializationError as e:
            futures = [_failed(e)]
        return AsyncResult(self, futures, _first, callback, error_callback)

    # --- many tasks -------------------------------------------------------------------------

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, run in parallel, in order."""
        return self.map_async(func, iterable, chunksize).get()

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, run in parallel, in order."""
        return self.starmap_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> AsyncResult:
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> AsyncResult:
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _map_async(self, func, iterable, star: bool, chunksize, callback, error_callback) -> AsyncResult:
        self._check_running()
        try:
            futures, chunked = self._submit(func, list(iterable), star, chunksize)
        except SerializationError as e:
            futures, chunked = [_failed(e)], False
        return AsyncResult(self, futures, _flat if chunked else list, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """Like ``map`` but lazy: results come in order as they are ready. Items are read from
        ``iterable`` as it produces them, ``chunksize`` at a time (larger: faster for quick tasks)."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """Like ``imap``, but each result comes as soon as its task finishes."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func, iterable, chunksize: int, ordered: bool) -> IMapIterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result = IMapIterator(self, ordered, chunked=chunksize > 1)
        if hasattr(iterable, "__len__"):  # all known now: one job
            result._add(_submit_imap(self._runner, func, list(iterable), chunksize))
            result._end()
        else:
            self._feeders = [feeder for feeder in self._feeders if feeder.is_alive()]
            feeder = threading.Thread(
                target=_feed, args=(self._runner, self._stopped, func, iterable, chunksize, result),
                name="cloudbutton-pool-feeder", daemon=True,
            )
            self._feeders.append(feeder)
            feeder.start()
        return result

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """No more tasks; those submitted still run. ``join()`` then waits for them."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self) -> None:
        """Stop now: tasks not finished are cancelled (their results raise ``CancelledError``)."""
        self._state = _TERMINATE
        self._stopped.set()
        self._runner.shutdown(wait=False, cancel_futures=True)
        for future in list(self._runner.fexec.futures):  # the standard Pool kills the tasks running too
            discard(future)
        self._runner.fexec.backend.abort()
        for item in list(self._outstanding):
            if isinstance(item, IMapIterator):
                item._end()
        self._stop_callbacks()

    def join(self) -> None:
        """Wait for every task and callback; only after ``close()`` or ``terminate()``."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        for feeder in list(self._feeders):
            feeder.join()
        for item in list(self._outstanding):
            if isinstance(item, AsyncResult):
                item.wait()
        self._runner.shutdown(wait=True)
        self._stop_callbacks()

    def _stop_callbacks(self) -> None:
        with self._lock:
            thread, self._callback_thread, self._callbacks_stopped = self._callback_thread, None, True
        if thread is not None:
            self._callbacks.put(None)
            if thread is not threading.current_thread():
                thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<cloudbutton.multiprocessing.Pool state={self._state} processes={self._runner.workers}>"

    def __del__(self, _warn=warnings.warn) -> None:
        if getattr(self, "_state", None) == _RUN:  # as the standard library's (the finalizer terminates it)
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)


def _submit(runner: _Runner, func: Callable, items: list, star: bool, chunksize: int | None
            ) -> tuple[list[cf.Future], bool]:
    """Calls of ``func`` over ``items`` (single arguments, or with ``star`` tuples of arguments);
    ``chunksize`` > 1 (or None: sized like the standard Pool's) sends that many items per call.
    Returns the futures and whether they are of chunks."""
    if chunksize is None:
        chunksize, extra = divmod(len(items), runner.workers * 4)
        chunksize += bool(extra)
    if chunksize <= 1:
        calls = [tuple(args) for args in items] if star else [(x,) for x in items]
        return runner.submit(runner.task(func, pickled=True), calls), False
    task = runner.task(func, chunked=True, star=star, pickled=True)
    return runner.submit(task, _chunks(items, chunksize)), True


def _submit_imap(runner: _Runner, func: Callable, items: list, chunksize: int) -> list[cf.Future]:
    """``imap``'s calls of ``func`` over ``items``. As in the standard library, an item (or chunk) that
    cannot be pickled fails only its own result, with what pickling it raised."""
    try:
        return _submit(runner, func, items, False, chunksize)[0]
    except SerializationError as e:
        if len(items) <= chunksize:
            return [_failed(e)]
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        return [f for chunk in chunks for f in _submit_imap(runner, func, chunk, chunksize)]


def _callback_loop(callbacks: queue.SimpleQueue) -> None:
    """The pool's callback thread: runs the callbacks of finished AsyncResults until it gets None. It
    holds only the queue, and no result once its callback ran, so a dropped pool can be collected."""
    while True:
        result = callbacks.get()
        if result is None:
            return
        result._finish()
        del result


def _stop_pool(runner: _Runner, stopped: threading.Event, callbacks: queue.SimpleQueue) -> None:
    """Terminate a pool that was collected (or still running at exit) without close() or terminate()."""
    stopped.set()
    callbacks.put(None)
    runner.shutdown(wait=False, cancel_futures=True)


def _feed(runner: _Runner, stopped: threading.Event, func, iterable: Iterable, chunksize: int,
          result: IMapIterator) -> None:
    """Send the items of a lazy iterable as it produces them: a thread reads them, and each job takes all
    that were read meanwhile (one item from a slow generator, many from a quick one). The iterable's
    exception comes after the results. Both threads end soon after the pool is terminated (the reader
    once the item it is waiting for comes), and the reader reads at most ``_READ_AHEAD`` items ahead."""
    produced: queue.Queue = queue.Queue(_READ_AHEAD)  # (True, item), then (False, None or its exception)

    def put(entry: tuple) -> bool:
        while not stopped.is_set():
            try:
                produced.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                pass
        return False

    def read() -> None:
        try:
            for item in iterable:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:  # noqa: BLE001 - it goes to the one iterating (SystemExit too)
            put((False, e))

    threading.Thread(target=read, name="cloudbutton-pool-reader", daemon=True).start()
    more, error = True, None
    while more and not stopped.is_set():
        try:
            more, item = produced.get(timeout=_POLL)
        except queue.Empty:
            continue
        items = []
        while more:
            items.append(item)
            try:
                more, item = produced.get_nowait()
            except queue.Empty:
                break
        if not more:
            error = item
        try:
            if items:
                result._add(_submit_imap(runner, func, items, chunksize))
        except Exception as e:  # noqa: BLE001 - e.g. the pool was terminated
            more, error = False, e
    result._end(error)
