"""Futures of calls, and waiting for them.

``ResponseFuture`` is a ``concurrent.futures.Future``, so ``result(timeout)``, ``exception()``,
``done()``, ``add_done_callback`` and ``concurrent.futures.wait``/``as_completed`` all work.
"""

from __future__ import annotations

import array
import concurrent.futures as cf
import concurrent.futures._base as cf_base
import math
import pickle
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .config import MAX_SECONDS
from .errors import WaitTimeoutError

ALL_COMPLETED = cf.ALL_COMPLETED
ANY_COMPLETED = FIRST_COMPLETED = cf.FIRST_COMPLETED
ALWAYS = "ALWAYS"  # check once and return at once
_LITHOPS_RETURN_WHEN = {0: ALWAYS, -1: ANY_COMPLETED, 100: ALL_COMPLETED}
"""Lithops' values of ``return_when`` (``lithops.wait.ALWAYS`` is 0, ``ANY_COMPLETED`` -1,
``ALL_COMPLETED`` 100); any other number between 0 and 100 is the percentage of futures to wait for."""


_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), dict, tuple})
"""Types of results that are surely not futures (a list may hold some)."""

DONE_STATES = (cf_base.CANCELLED, cf_base.CANCELLED_AND_NOTIFIED, cf_base.FINISHED)


_NAN = float("nan")
_TIMES = ("started", "finished", "received")
_SIZES = ("peak_rss", "args_bytes", "result_bytes")


class JobInfo:
    """What the futures of one job share: its key, function name, condition and submission time,
    and its calls' stats, column by column (a dict per call would take several times the memory of
    the rest of a call's record); the rare ones (``memory_exceeded``) are kept per call in ``extra``."""

    __slots__ = ("key", "function_name", "condition", "submitted", "times", "sizes", "workers", "cold", "extra")

    def __init__(self, key: str, function_name: str, condition, submitted: float, calls: int = 1):
        self.key, self.function_name, self.condition, self.submitted = key, function_name, condition, submitted
        self.times = [array.array("d", [_NAN]) * calls for _ in _TIMES]  # NaN: not known (yet)
        self.sizes = [array.array("q", [-1]) * calls for _ in _SIZES]  # -1: not known
        self.workers: list[str | None] = [None] * calls
        self.cold = bytearray(calls)  # 0 not known, 1 warm, 2 cold
        self.extra: dict[int, dict] = {}

    def record(self, indices: tuple[int, ...], stats: tuple[tuple, ...], received: float) -> None:
        """Keep the stats of (the last attempt of) calls ``indices``: ``stats`` has a column per
        field of ``worker.STATS``, a row per call."""
        workers, cold, started, finished, rss, args_size, result_size, extra = stats
        cold = bytes(2 if c else 1 for c in cold)
        received = array.array("d", [received]) * len(indices)
        columns = ((self.workers, workers), (self.cold, cold), (self.times[0], started), (self.times[1], finished),
                   (self.times[2], received), (self.sizes[0], rss), (self.sizes[1], args_size),
                   (self.sizes[2], result_size))
        first = indices[0] if indices else 0
        if indices == tuple(range(first, first + len(indices))):  # the usual case: a run of calls
            end = first + len(indices)
            for column, values in columns:
                column[first:end] = array.array(column.typecode, values) if type(column) is array.array else values
        else:
            for column, values in columns:
                for index, value in zip(indices, values, strict=True):
                    column[index] = value
        if any(extra) or self.extra:
            for index, value in zip(indices, extra, strict=True):
                if value:
                    self.extra[index] = value
                else:
                    self.extra.pop(index, None)

    def stats(self, index: int) -> dict[str, Any]:
        """The stats of call ``index``, as a new dict."""
        stats: dict[str, Any] = {"submitted": self.submitted}
        if self.workers[index] is not None:
            stats["worker_id"] = self.workers[index]
        if self.cold[index]:
            stats["cold_start"] = self.cold[index] == 2
        for column, name in zip(self.times, _TIMES, strict=True):
            if column[index] == column[index]:  # not NaN
                stats[name] = column[index]
        for column, name in zip(self.sizes, _SIZES, strict=True):
            if column[index] >= 0:
                stats[name] = column[index]
        stats.update(self.extra.get(index, ()))
        return stats


class ResponseFuture(cf.Future):
    """The future result of one call; ``stats`` holds its timestamps and measurements.

    The futures of one job share one ``threading.Condition`` (creating one per future costs more
    than the rest of a call's overhead), so ``result``/``exception`` wait for their own state. A
    future holds little: its job's shared record (with its stats), its index and its outcome, in
    slots; its lists of waiters and callbacks are made when first needed."""

    __slots__ = ("_job", "call_index", "_state", "_result", "_exception", "_waiting", "_callbacks")

    produces_output = True
    """False for the maps of a ``map_reduce``: ``get_result`` of a list gives only the others' results."""
    attempts = 1
    _stats: dict | None = None  # those of a future made from a pickled one; else in its job's columns

    def __init__(self, job_key: str, call_index: int, function_name: str, condition=None, submitted=None):
        self._job = JobInfo(job_key, function_name, condition or threading.Condition(), submitted or time.time())
        self.call_index, self._state, self._result, self._exception = call_index, cf_base.PENDING, None, None
        self._waiting = self._callbacks = None

    @classmethod
    def _of_job(cls, job: JobInfo, n: int) -> list[ResponseFuture]:
        """The ``n`` futures of a job (faster than calling the constructor ``n`` times)."""
        new, futures, pending = cls.__new__, [], cf_base.PENDING
        for index in range(n):
            future = new(cls)
            future._job, future.call_index, future._state = job, index, pending
            future._result = future._exception = future._waiting = future._callbacks = None
            futures.append(future)
        return futures

    @property
    def _waiters(self) -> list:  # concurrent.futures' name; the list is made on first use
        if self._waiting is None:
            self._waiting = []
        return self._waiting

    @property
    def _done_callbacks(self) -> list:
        if self._callbacks is None:
            self._callbacks = []
        return self._callbacks

    @property
    def _condition(self):
        return self._job.condition

    @property
    def job_key(self) -> str:
        return self._job.key

    @property
    def function_name(self) -> str:
        return self._job.function_name

    @property
    def stats(self) -> dict[str, Any]:
        """The call's timestamps and measurements (a dict made from its job's columns)."""
        if self._stats is not None:
            return self._stats
        return self._job.stats(self.call_index)

    @stats.setter
    def stats(self, value: dict) -> None:
        self._stats = value

    def _wait_done(self, timeout: float | None) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._state in DONE_STATES, timeout)

    def cancel(self) -> bool:
        """Cancel the call if it has not started: it never runs. As with ``concurrent.futures``, a call
        running (handed to a worker) cannot be cancelled; on backends that do not tell when a call
        starts (dask), cancelling one that runs discards its result."""
        if not super().cancel():
            return False
        self._notify_cancelled()
        return True

    def _notify_cancelled(self) -> None:
        """What an executor does when it drops a cancelled call: tell the waiters."""
        with self._condition:
            if self._state == cf_base.CANCELLED:
                self._state = cf_base.CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)

    def result(self, timeout: float | None = None, throw_except: bool = True, **_lithops) -> Any:
        """The call's value; with Lithops' ``throw_except=False``, None instead of raising its exception."""
        self._wait_done(timeout)
        if not throw_except and self._state == cf_base.FINISHED and self._exception is not None:
            return None
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_done(timeout)
        return super().exception(0)

    @property
    def call_id(self) -> str:
        return f"{self.call_index:05d}"

    @property
    def executor_id(self) -> str:
        return self.job_key.rsplit("/", 1)[0]

    @property
    def job_id(self) -> str:
        return self.job_key.rsplit("/", 1)[-1]

    @property
    def ready(self) -> bool:
        """Lithops' name: the call ended with a result or an exception (not cancelled)."""
        return self._state == cf_base.FINISHED

    @property
    def success(self) -> bool:
        """Lithops' name: the call returned a result."""
        return self._state == cf_base.FINISHED and self._exception is None

    @property
    def error(self) -> bool:
        """Lithops' name: the call raised."""
        return self._state == cf_base.FINISHED and self._exception is not None

    def __reduce__(self):
        """A future travels as its outcome: pickling it waits until its call has ended. So a call may
        return the futures of calls it started (or take futures as arguments); the receiver gets
        settled futures."""
        self._wait_done(None)
        error = self._exception
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
                from .errors import RemoteError

                error = RemoteError(f"call {self.name} raised {type(error).__name__}: {error}", self.name)
        outcome = (self._state in DONE_STATES and self._state != cf_base.FINISHED, self._result, error)
        return _settled_future, (self.job_key, self.call_index, self.function_name, dict(self.stats), *outcome)

    @property
    def name(self) -> str:
        return f"{self.job_key}/{self.call_id} ({self.function_name})"

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.name} {self._state.lower()}>"


def _settled_future(job_key, call_index, function_name, stats, cancelled, result, error) -> ResponseFuture:
    future = ResponseFuture(job_key, call_index, function_name, submitted=stats.get("submitted"))
    future.stats = stats
    future._state = cf_base.CANCELLED_AND_NOTIFIED if cancelled else cf_base.FINISHED
    future._result, future._exception = result, error
    return future


class FuturesList(list):
    """The futures of a map, in input order: a list, with ``wait()`` and ``get_result()``, and
    ``map(f)``/``map_reduce(f, r)`` that chain a next stage over their results. As in Lithops,
    chaining makes the list the next stage's futures and returns it:
    ``fexec.map(f, data).map(g).get_result()`` gives g's results."""

    reduced = False
    """Made by ``cloudbutton.lithops``' ``map_reduce`` with one reducer: ``get_result`` of it gives that
    reducer's value, as in Lithops."""

    def __init__(self, futures=(), executor=None):
        super().__init__(futures)
        self.executor = executor

    def _executor(self):
        if self.executor is None:  # e.g. a list that was pickled: a default executor of its own
            from .executor import FunctionExecutor

            self.executor = FunctionExecutor()
        return self.executor

    def map(self, map_function, sync: bool = False, **kwargs) -> FuturesList:
        if sync:
            self.wait()
        self[:] = self._executor().map(map_function, list(self), **kwargs)
        return self

    def map_reduce(self, map_function, reduce_function, sync: bool = False, **kwargs) -> FuturesList:
        if sync:
            self.wait()
        self[:] = self._executor().map_reduce(map_function, list(self), reduce_function, **kwargs)
        return self

    def wait(self, **kwargs):
        return self._executor().wait(list(self), **kwargs)

    def get_result(self, **kwargs):
        return self._executor().get_result(list(self), **kwargs)

    def __reduce__(self):
        return FuturesList, (list(self),)


def mark_running(futures: list[ResponseFuture]) -> list[bool]:
    """The calls of these futures (of one job) go to a worker now: those pending or running (a retry)
    count as running from now on, and can no longer be cancelled. Returns which are (the others are
    done: cancelled meanwhile, and must not run)."""
    if not futures:
        return []
    with futures[0]._condition:
        for future in futures:
            if future._state == cf_base.PENDING:
                future._state = cf_base.RUNNING
        return [future._state == cf_base.RUNNING for future in futures]


def discard(future: ResponseFuture) -> bool:
    """Cancel a call even if it runs (its result is then discarded): ``Pool.terminate()``."""
    with future._condition:
        if future._state not in (cf_base.PENDING, cf_base.RUNNING):
            return future._state in (cf_base.CANCELLED, cf_base.CANCELLED_AND_NOTIFIED)
        future._state = cf_base.CANCELLED
        future._condition.notify_all()
    future._notify_cancelled()
    future._invoke_callbacks()
    return True


def settle(outcomes: list[tuple[ResponseFuture, Any, BaseException | None]]) -> None:
    """Set the result (or exception) of futures sharing one condition, all under one lock with one
    wake-up: ``set_result`` one by one costs more than running a quick call. Futures already done
    (cancelled by the user) are left as they are."""
    if not outcomes:
        return
    condition, finished = outcomes[0][0]._job.condition, cf_base.FINISHED
    settled = []
    with condition:
        for future, value, error in outcomes:
            assert future._job.condition is condition, "settle() takes the futures of one job"
            if future._state in DONE_STATES:
                continue
            if error is None:
                future._result = value
            else:
                future._exception = error
            future._state = finished
            for waiter in future._waiting or ():
                if error is None:
                    waiter.add_result(future)
                else:
                    waiter.add_exception(future)
            if future._callbacks:
                settled.append(future)
        condition.notify_all()
    for future in settled:
        future._invoke_callbacks()


class _ProgressBar:
    def __init__(self, total: int):
        self.total, self.start, self.shown = total, time.monotonic(), -1

    def update(self, done: int, final: bool = False) -> None:
        if done == self.shown and not final:
            return
        self.shown = done
        width = 30
        filled = width * done // max(self.total, 1)
        elapsed = time.monotonic() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} calls  {elapsed:.1f} s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _progress_wanted(show_progressbar: bool | None) -> bool:
    return sys.stderr.isatty() if show_progressbar is None else show_progressbar


def wait(
    fs: Sequence[cf.Future],
    throw_except: bool = True,
    return_when: str = ALL_COMPLETED,
    timeout: float | None = None,
    show_progressbar: bool | None = False,
) -> tuple[list, list]:
    """Wait for futures; return ``(done, not_done)`` in input order. Returns when ``return_when``
    holds or ``timeout`` expires (whichever first): ``ALL_COMPLETED``, ``ANY_COMPLETED``, ``ALWAYS``,
    Lithops' numbers for them (100, -1, 0), or a number between 0 and 100, the percentage of futures
    to wait for. With ``throw_except``, raise the exception of the first failed call among those done."""
    fs = list(fs)
    needed = _needed(return_when, len(fs))
    return_when = ALWAYS if needed is None else ALL_COMPLETED if needed >= len(fs) else ANY_COMPLETED
    if timeout is not None:
        if timeout != timeout:
            raise ValueError("timeout must be a number of seconds or None, not nan")
        if timeout > MAX_SECONDS:  # beyond what thread clocks take: as good as no limit
            timeout = None
    if return_when != ALWAYS:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _ProgressBar(len(fs)) if _progress_wanted(show_progressbar) and fs else None
        pending = [f for f in fs if f._state not in DONE_STATES]  # done futures never change: no lock
        if return_when == ANY_COMPLETED and len(fs) - len(pending) >= needed:
            pending = []
        if return_when == ALL_COMPLETED and all(isinstance(f, ResponseFuture) for f in pending):
            _wait_all(pending, deadline, bar, len(fs) - len(pending))
            pending = []
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = left if bar is None else min(0.25, left if left is not None else 0.25)
            _, not_done = cf.wait(pending, step, return_when)
            if bar:
                bar.update(len(fs) - len(not_done))
            if return_when == ANY_COMPLETED and len(fs) - len(not_done) >= needed:
                break
            pending = [f for f in pending if f in not_done]
            if deadline is not None and time.monotonic() >= deadline:
                break
        if bar:
            bar.update(sum(f.done() for f in fs), final=True)
    done, not_done = [], []
    for f in fs:
        (done if f._state in DONE_STATES else not_done).append(f)
    if throw_except:
        for f in done:
            if f._state == cf_base.FINISHED and f._exception is not None:
                raise f._exception
    return done, not_done


def _needed(return_when, n: int) -> int | None:
    """How many of ``n`` futures ``return_when`` waits for (None: none, return at once)."""
    if isinstance(return_when, (int, float)) and not isinstance(return_when, bool):
        if return_when in _LITHOPS_RETURN_WHEN:
            return_when = _LITHOPS_RETURN_WHEN[return_when]
        elif 0 < return_when < 100:
            return math.ceil(return_when * n / 100)
    if return_when == ALWAYS:
        return None
    if return_when == ANY_COMPLETED:
        return min(1, n)
    if return_when == ALL_COMPLETED:
        return n
    raise ValueError(
        f"return_when must be ALL_COMPLETED, ANY_COMPLETED or ALWAYS (or a percentage between 0 and 100),"
        f" not {return_when!r}"
    )


def _wait_all(pending: list[ResponseFuture], deadline: float | None, bar: _ProgressBar | None, done: int) -> None:
    """Wait until every future is done or ``deadline`` passes, on the conditions the futures share
    (``concurrent.futures.wait`` would add a waiter to each future, which each settling then updates)."""
    groups: dict[JobInfo, list[ResponseFuture]] = {}
    for f in pending:
        groups.setdefault(f._job, []).append(f)
    for job, group in groups.items():
        condition, position = job.condition, 0
        with condition:
            while True:
                while position < len(group) and group[position]._state in DONE_STATES:
                    position += 1  # a done future stays done: each is checked until done, once after
                if bar:
                    bar.update(done + position)
                if position == len(group):
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                condition.wait(left if bar is None else min(0.25, left if left is not None else 0.25))
        done += len(group)


def get_result(
    fs: Sequence[cf.Future],
    throw_except: bool = True,
    timeout: float | None = None,
    show_progressbar: bool | None = False,
) -> list:
    """Results of ``fs`` in input order; a failed call raises (or, without ``throw_except``, its
    exception takes its place). Raise ``WaitTimeoutError`` if ``timeout`` expires first.

    A call whose result is a future, or a list of futures (calls it started), gives their results
    instead, in the list's place; the maps of a ``map_reduce`` give none (as in Lithops)."""
    fs = list(fs)
    _, not_done = wait(fs, throw_except, ALL_COMPLETED, timeout, show_progressbar)
    if not_done:
        raise WaitTimeoutError(
            f"{len(not_done)} of {len(fs)} calls not finished after {timeout} s (first: {_name(not_done[0])});"
            " they keep running: call get_result again to collect them"
        )
    results = []
    for f in fs:
        if f._state == cf_base.FINISHED and f._exception is None and type(f._result) in _PLAIN:
            if getattr(f, "produces_output", True):
                results.append(f._result)  # the common case, read without the lock (a final state)
            continue
        if not getattr(f, "produces_output", True):
            continue
        value = _outcome(f, throw_except)
        if isinstance(value, cf.Future):
            value = [value]
        elif not (isinstance(value, list) and value and all(isinstance(v, cf.Future) for v in value)):
            results.append(value)
            continue
        results += get_result(value, throw_except, timeout, False)
    return results


def _outcome(f: cf.Future, throw_except: bool) -> Any:
    if f._state == cf_base.FINISHED:  # final: read without the lock
        return f._result if f._exception is None else f._exception
    if f.cancelled():
        error = cf.CancelledError(f"{_name(f)} was cancelled")
        if throw_except:
            raise error
        return error
    return f.exception() or f.result()


def _name(f: cf.Future) -> str:
    return getattr(f, "name", repr(f))


def as_list(fs: cf.Future | Iterable[cf.Future]) -> list:
    return [fs] if isinstance(fs, cf.Future) else list(fs)
