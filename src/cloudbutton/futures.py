"""Futures of calls, and waiting for them.

``ResponseFuture`` is a ``concurrent.futures.Future``, so ``result(timeout)``, ``exception()``,
``done()``, ``add_done_callback`` and ``concurrent.futures.wait``/``as_completed`` all work.
"""

from __future__ import annotations

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


DONE_STATES = (cf_base.CANCELLED, cf_base.CANCELLED_AND_NOTIFIED, cf_base.FINISHED)


class ResponseFuture(cf.Future):
    """The future result of one call; ``stats`` holds its timestamps and measurements.

    The futures of one job share one ``threading.Condition`` (creating one per future costs more
    than the rest of a call's overhead), so ``result``/``exception`` wait for their own state."""

    produces_output = True
    """False for the maps of a ``map_reduce``: ``get_result`` of a list gives only the others' results."""

    def __init__(self, job_key: str, call_index: int, function_name: str, condition=None, submitted=None):
        self._condition = condition or threading.Condition()
        self._state = cf_base.PENDING
        self._result = self._exception = None
        self._waiters: list = []
        self._done_callbacks: list = []
        self.job_key = job_key
        self.call_index = call_index
        self.function_name = function_name
        self.attempts = 1
        self.stats: dict[str, Any] = {"submitted": submitted or time.time()}

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
    future = ResponseFuture(job_key, call_index, function_name)
    future.stats.update(stats)
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
    condition = outcomes[0][0]._condition
    settled = []
    with condition:
        for future, value, error in outcomes:
            assert future._condition is condition, "settle() takes the futures of one job"
            if future._state in DONE_STATES:
                continue
            if error is None:
                future._result = value
            else:
                future._exception = error
            future._state = cf_base.FINISHED
            for waiter in future._waiters:
                if error is None:
                    waiter.add_result(future)
                else:
                    waiter.add_exception(future)
            settled.append(future)
        condition.notify_all()
    for future in settled:
        if future._done_callbacks:
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
    groups: dict[int, list[ResponseFuture]] = {}
    for f in pending:
        groups.setdefault(id(f._condition), []).append(f)
    for group in groups.values():
        condition, position = group[0]._condition, 0
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
