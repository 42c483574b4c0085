"""FunctionExecutor: the Lithops-compatible entry point."""

from __future__ import annotations

import concurrent.futures as cf
import dis
import functools
import hashlib
import itertools
import logging
import os
import pickle
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from . import serialize, spill
from .backends import get_backend_class
from .config import resolve_config
from .errors import CallError, MemoryLimitError, RemoteError, WorkerLostError
from .futures import (
    ALL_COMPLETED,
    DONE_STATES,
    FuturesList,
    JobInfo,
    ResponseFuture,
    as_list,
    discard,
    get_result,
    mark_running,
    settle,
    wait,
)
from .job import JobSpec, expand_objects, parameter_names, plan_calls
from .stats import summary_rows, to_dataframe
from .storage import Storage, default_storage_url, resolve_url
from .worker import Results

logger = logging.getLogger(__name__)


class _JobRun:
    """Receives the outcomes of one job's calls from the backend and settles their futures; removes
    the job's stored data once every call is settled."""

    def __init__(
        self, executor: FunctionExecutor, job: JobSpec, futures: list[ResponseFuture], retries: int,
        retry_errors: bool = False,
    ):
        self.executor, self.job, self.futures, self.retries = executor, job, futures, retries
        self.info = futures[0]._job if futures else None  # their shared record, with the calls' stats
        self.retry_errors = retry_errors  # run a call that raised again too, not only one whose worker was lost
        self.args: list[bytes | None] = [None] * len(futures)  # kept until settled, to run lost calls again
        self.payloads: list[bytes | None] | None = None  # results as pickled, kept for a reducer if set
        self.stored = False  # whether any argument or result went through storage
        self.settled = bytearray(len(futures))  # whether each call's outcome arrived (or it will never run)
        self.unsettled = len(futures)
        self._lock = threading.Lock()

    def launch(self, calls: list[tuple[int, bytes]]) -> None:
        """Send calls ``(index, pickled arguments)``; arguments above the threshold go through storage."""
        job, threshold = self.job, self.job.storage_threshold
        if job.data_url and threshold:
            for n, (index, data) in enumerate(calls):
                if len(data) > threshold:
                    self.stored = True  # before writing: a failed write may leave a part behind
                    calls[n] = (index, spill.spill(data, f"{job.data_url}/args/{index:05d}"))
        args = self.args
        for index, data in calls:
            args[index] = data
        self.executor.backend.submit(job, calls, self)

    def on_results(self, job: JobSpec, results: Results | list[tuple[int, bool, bytes, tuple]]) -> None:
        if not isinstance(results, Results):
            results = Results.of(results)
        self.info.record(results.indices, results.stats, time.time())  # each call's last attempt's
        outcomes, futures, payloads, mark, loads = [], self.futures, self.payloads, spill.MARK, serialize.loads
        rows = zip(results.indices, results.oks, results.payloads, strict=True)
        for position, (index, ok, payload) in enumerate(rows):
            stored = payload[: len(mark)] == mark
            if stored:
                self.stored = True  # also for a cancelled call: its stored result must go too
            if futures[index]._state in DONE_STATES:  # cancelled by the user meanwhile
                outcomes.append((index, None, None))
                continue
            try:
                if stored:
                    payload = spill.unspill(payload)
                if ok:
                    value, error = loads(payload), None
                    if payloads is not None:
                        payloads[index] = payload
                else:
                    worker_id, extra = results.stats[0][position], results.stats[-1][position]
                    value, error = None, _remote_exception(job, index, payload, worker_id, extra)
            except Exception as e:  # the result cannot be read or unpickled here
                name = job.call_name(index)
                value, error = None, RemoteError(f"the result of call {name} cannot be loaded: {e!r}", name)
            if error is not None and self.retry_errors and self._retried(index):
                continue
            outcomes.append((index, value, error))
        self.settle(outcomes)

    def _retried(self, index: int) -> bool:
        """Run call ``index`` again if it has retries left; return whether it was sent."""
        future = self.futures[index]
        with self._lock:
            if future.attempts > self.retries or future.done() or self.settled[index]:
                return False
            future.attempts += 1
            self.executor.backend.submit(self.job, [(index, self.args[index])], self)
        return True

    def on_started(self, job: JobSpec, indices: list[int]) -> list[int]:
        running = mark_running([self.futures[index] for index in indices])
        dropped = [(index, None, None) for index, run in zip(indices, running, strict=True) if not run]
        self.settle(dropped)  # cancelled before they started: they never run
        return [index for index, run in zip(indices, running, strict=True) if run]

    def on_lost(self, job: JobSpec, index: int, error: CallError) -> None:
        future = self.futures[index]
        retry = self.retry_errors or isinstance(error, WorkerLostError) and not isinstance(error, MemoryLimitError)
        if retry and self._retried(index):
            return
        if future.attempts > 1:
            error.add_note(f"call {job.call_name(index)} was tried {future.attempts} times")
        self.settle([(index, None, error)])

    def settle(self, outcomes: list[tuple[int, Any, BaseException | None]]) -> None:
        """Settle calls ``(index, value, error)``; the first outcome of a call counts. Once every call
        is settled, the job's stored data is removed (before the last future settles, so that a waiter
        finds nothing left)."""
        settled, args, payloads, futures = self.settled, self.args, self.payloads, self.futures
        with self._lock:
            fresh = []
            for index, value, error in outcomes:
                if settled[index]:
                    continue
                settled[index], args[index] = True, None
                if payloads is not None and error is not None:
                    payloads[index] = None
                fresh.append((futures[index], value, error))
            self.unsettled -= len(fresh)
            last = self.unsettled == 0 and fresh
        if last and self.stored:
            _remove_stored(self.job.data_url)
        settle(fresh)


def _remove_stored(url: str) -> None:
    """Remove stored call data; a failure is logged, never raised (the results are safe already)."""
    try:
        spill.remove(url)
    except Exception as e:  # noqa: BLE001
        logger.warning("cloudbutton: could not remove the stored call data at %s: %s", url, e)


def _when_all_done(futures: list[ResponseFuture], then) -> None:
    """Call ``then()`` once, in the thread that settles the last of ``futures`` (now, if none is pending)."""
    remaining, lock = [len(futures)], threading.Lock()

    def one_done(_future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    if not futures:
        then()
    for future in futures:
        future.add_done_callback(one_done)


def _remote_exception(job: JobSpec, index: int, payload: bytes, worker_id: str, extra: dict | None) -> BaseException:
    exc_bytes, type_name, message, tb = pickle.loads(payload)
    name = job.call_name(index)
    extra = extra or {}
    where = f"Remote traceback of call {name} on worker {worker_id}:\n{tb}"
    exc = None
    if exc_bytes is not None:
        try:
            exc = serialize.loads(exc_bytes)
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(f"call {name} raised {type_name}: {message}", name)
    if extra.get("memory_exceeded"):
        limit = MemoryLimitError(f"call {name} exceeded its runtime_memory of {job.runtime_memory} MB", name)
        limit.__cause__ = exc
        exc = limit
    exc.add_note(where)
    return exc


def _checked_env(extra_env) -> dict[str, str | None] | None:
    """``extra_env`` with its values as text; refuse at submit time what ``os.environ`` would refuse."""
    if not extra_env:
        return None
    env = {}
    for key, value in extra_env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"extra_env: {key!r} is not a valid environment variable name")
        if value is not None and "\0" in str(value):
            raise ValueError(f"extra_env: the value of {key} must be text without NUL characters, not {value!r}")
        env[key] = None if value is None else str(value)  # None unsets the variable
    return env


def _uses_state(function, function_bytes: bytes) -> bool:
    """Whether ``function`` may use ``cloudbutton.state``: its pickle names it (by value), or a global
    its code reads is a state name (by reference its pickle names only the function)."""
    if b"cloudbutton.state" in function_bytes:
        return True
    code, scope = getattr(function, "__code__", None), getattr(function, "__globals__", None)
    if code is None or scope is None:
        return False
    for name in _global_names(code):
        value = scope.get(name)
        if str(getattr(value, "__module__", None) or getattr(value, "__name__", "")).startswith("cloudbutton.state"):
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _global_names(code) -> frozenset[str]:
    """The global names ``code`` (and the code nested in it) reads."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _global_names(const)
    return frozenset(names)


def _with_state_url(extra_env: dict | None, configured: str | None, function, function_bytes: bytes) -> dict | None:
    """Point calls at the caller's state server, so that a state object a call creates by name
    (``AtomicInt("hits")``) is the caller's: the configured one, else the embedded server if it runs,
    or is started now because the function uses ``cloudbutton.state``. Workers never start one."""
    url = configured
    if url is None:
        server = sys.modules.get("cloudbutton.state.server")
        url = server.running_url() if server else None
        if url is None and _uses_state(function, function_bytes):
            from .state.server import embedded_url

            url = embedded_url()
    if url is None:
        return extra_env
    return {"CLOUDBUTTON_STATE_URL": url, **(extra_env or {})}


_executor_ids = itertools.count()


class FunctionExecutor:
    """Runs Python functions in parallel on a backend.

    >>> with FunctionExecutor() as fexec:
    ...     fexec.get_result(fexec.map(lambda x: x + 1, range(3)))
    [1, 2, 3]
    """

    def __init__(self, backend: str | None = None, max_workers: int | None = None, config=None, **overrides: Any):
        self.config = resolve_config(config, backend=backend, max_workers=max_workers, **overrides)
        self.executor_id = f"{secrets.token_hex(3)}-{next(_executor_ids)}"
        self.backend = get_backend_class(self.config.backend)(self.config)
        self.storage_url = (self.config.storage_url or default_storage_url()).rstrip("/")
        self._data_url = f"{self.storage_url}/cloudbutton-jobs/{self.executor_id}"
        self._runs: list[_JobRun] = []
        self._reducers = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudbutton-reducers")
        self._reducers_waiting = 0  # reducers (and maps over futures) not launched yet: they launch even after shutdown
        self._reducers_lock = threading.Lock()
        self.futures: list[ResponseFuture] = []
        self._uncollected: list[ResponseFuture] = []
        self._jobs = itertools.count()
        self._closed = False
        self._storage: Storage | None = None
        self._last_call = "map"  # what the last submission was, for the shape of get_result()
        self._call_env: dict[str, str] = {}  # environment variables every call gets (before its extra_env)

    @property
    def storage(self) -> Storage:
        """A :class:`~cloudbutton.storage.Storage` on ``storage_url``: what a function's ``storage``
        parameter receives. Cloud objects its calls put without a key are this executor's, removed by
        ``clean()``."""
        if self._storage is None:
            self._storage = self._new_storage()
            self._storage.cloudobject_prefix = f"cloudobjects/{self.executor_id}"
        return self._storage

    def _new_storage(self) -> Storage:
        return Storage(self.storage_url)

    def _resolve_object(self, ref: str) -> str:
        """The URL an object reference in ``map_iterdata`` names (see ``cloudbutton.storage.resolve_url``)."""
        return resolve_url(ref, self.storage_url)

    # --- submitting -------------------------------------------------------------------------

    def call_async(
        self, func, data, extra_env=None, runtime_memory=None, timeout=None, include_modules=None,
        exclude_modules=None,
    ) -> ResponseFuture:
        """Run ``func`` once with ``data`` (one iterdata item) and return its future."""
        future = self.map(
            func, [data], extra_env=extra_env, runtime_memory=runtime_memory, timeout=timeout,
            include_modules=include_modules, exclude_modules=exclude_modules,
        )[0]
        self._last_call = "call_async"
        return future

    def map(
        self,
        map_function,
        map_iterdata: Iterable,
        extra_args=None,
        extra_env: dict[str, str] | None = None,
        runtime_memory: int | None = None,
        timeout: float | None = None,
        chunksize: int | None = None,
        include_modules: list[str] | None = None,
        exclude_modules: list[str] | None = None,
        retries: int | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
    ) -> FuturesList:
        """Run ``map_function`` once per item of ``map_iterdata``; return the futures in input order
        (a :class:`~cloudbutton.futures.FuturesList`).

        An item that is a dict binds its keys to parameter names; a tuple or list is spread over the
        positional parameters if its length fits them, else it is the single argument, as anything else
        is; ``extra_args`` is appended to each. A future as an item stands for its result: the call
        starts once it is done. Parameters named ``id`` and ``storage`` receive the call's index and
        a ready :class:`~cloudbutton.storage.Storage`.

        If ``map_function`` has a parameter named ``obj``, object references given for it (a URL,
        a prefix, a glob, or a key under ``storage_url``; ``map_iterdata`` may be one such string)
        become one call per partition: ``obj`` is then a :class:`~cloudbutton.partition.Partition`.
        ``obj_chunk_size`` (bytes) or ``obj_chunk_number`` (parts per object) split objects, and
        ``obj_newline`` (``None`` for binary data) aligns parts to whole lines."""
        run, _ = self._map(
            map_function, map_iterdata, extra_args=extra_args, extra_env=extra_env, runtime_memory=runtime_memory,
            timeout=timeout, chunksize=chunksize, include_modules=include_modules, exclude_modules=exclude_modules,
            retries=retries, obj_chunk_size=obj_chunk_size, obj_chunk_number=obj_chunk_number, obj_newline=obj_newline,
        )
        self._last_call = "map"
        return FuturesList(run.futures, self)  # a copy: the caller may reorder it

    def map_reduce(
        self,
        map_function,
        map_iterdata: Iterable,
        reduce_function,
        extra_args=None,
        extra_env: dict[str, str] | None = None,
        map_runtime_memory: int | None = None,
        reduce_runtime_memory: int | None = None,
        timeout: float | None = None,
        chunksize: int | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
        reducer_one_per_object: bool = False,
        spawn_reducer: int | None = None,
        include_modules: list[str] | None = None,
        exclude_modules: list[str] | None = None,
        retries: int | None = None,
        obj_reduce_by_key: bool = False,
        extra_args_reduce=None,
    ) -> FuturesList:
        """``map`` then ``reduce_function(results)`` over the map results (in input order); returns the
        reducers' futures, so ``get_result()`` gives the reduced value (``obj_reduce_by_key`` is
        Lithops' name for ``reducer_one_per_object``). ``extra_args_reduce`` (a tuple/list appended,
        a dict merged) goes to each reducer.

        With ``reducer_one_per_object``, each object of ``map_iterdata`` gets its own reducer over the
        results of its partitions, and the reducers' futures come in the objects' order. A reducer
        starts as soon as the last map it needs finishes (``spawn_reducer`` is accepted for Lithops
        compatibility and has no effect). If a map call fails, its reducer fails with that error."""
        reducer_one_per_object = reducer_one_per_object or obj_reduce_by_key
        if not callable(reduce_function):
            raise TypeError(f"reduce_function must be callable, not {type(reduce_function).__name__}")
        if extra_args_reduce is not None and not isinstance(extra_args_reduce, (tuple, list, dict)):
            raise TypeError(f"extra_args_reduce must be a tuple, list or dict, not {type(extra_args_reduce).__name__}")
        modules = serialize.by_value_modules(include_modules, exclude_modules, self.backend.shares_host)
        reduce_bytes = serialize.dumps_function(reduce_function, modules)  # fails before any map runs
        map_run, objects = self._map(
            map_function, map_iterdata, extra_args=extra_args, extra_env=extra_env, runtime_memory=map_runtime_memory,
            timeout=timeout, chunksize=chunksize, include_modules=include_modules, exclude_modules=exclude_modules,
            retries=retries, obj_chunk_size=obj_chunk_size, obj_chunk_number=obj_chunk_number,
            obj_newline=obj_newline, collected_later=True, keep_payloads=True, only_objects=reducer_one_per_object,
        )
        groups: dict[str | None, list[ResponseFuture]] = {}
        if reducer_one_per_object:
            for url, future in zip(objects, map_run.futures, strict=True):
                groups.setdefault(url, []).append(future)
        else:
            groups[None] = map_run.futures
        settings = self._settings(reduce_runtime_memory, timeout, None, retries)
        reduce_run = self._new_job(reduce_function, len(groups), settings, extra_env, reduce_bytes, "R")
        by_keyword = "results" in parameter_names(reduce_function)
        with self._reducers_lock:
            self._reducers_waiting += len(groups)
        for index, futures in enumerate(groups.values()):
            reduce = functools.partial(
                self._launch_reducer, reduce_run, index, map_run, futures, modules, by_keyword, extra_args_reduce
            )
            # launched from a thread of its own: the backend's result thread must not pickle and store
            _when_all_done(futures, functools.partial(self._launch_soon, functools.partial(self._deferred, reduce)))
        self._last_call = "map" if reducer_one_per_object else "map_reduce"
        for future in map_run.futures:
            future.produces_output = False  # get_result() of a list holding them gives the reducers' values
        reducers = FuturesList(reduce_run.futures, self)
        reducers.map_futures = list(map_run.futures)
        return reducers

    def _launch_soon(self, reduce) -> None:
        try:
            self._reducers.submit(reduce)
        except RuntimeError:  # a shutdown in another thread closed the reducers' thread meanwhile
            threading.Thread(target=reduce, name="cloudbutton-reducer", daemon=True).start()

    def _deferred(self, launch) -> None:
        """Run ``launch`` (of a reducer, or of a map over futures), counted as waiting until then."""
        try:
            launch()
        finally:
            with self._reducers_lock:
                self._reducers_waiting -= 1
                last = self._closed and self._reducers_waiting == 0
            if last:  # the executor was shut down without waiting: the thread is no longer needed
                self._reducers.shutdown(wait=False)

    def _launch_reducer(
        self, run: _JobRun, index: int, map_run: _JobRun, futures: list[ResponseFuture], modules, by_keyword: bool,
        extra_args=None,
    ) -> None:
        """Launch reducer ``index`` over the results of ``futures`` of ``map_run`` (all done), or fail
        it with theirs. The results travel as the maps pickled them."""
        if run.futures[index].done():  # cancelled by the user: it will never run
            run.settle([(index, None, None)])
            return
        try:
            for future in futures:
                error = None if future.cancelled() else future.exception()
                if future.cancelled() or error is not None:
                    if error is None:
                        error = cf.CancelledError(f"map call {future.name} was cancelled")
                    error.add_note(f"reducer {run.job.call_name(index)} did not run: map call "
                                   f"{future.name} failed")
                    run.settle([(index, None, error)])
                    for f in futures:
                        map_run.payloads[f.call_index] = None
                    return
            payloads = [map_run.payloads[f.call_index] for f in futures]
            for f in futures:
                map_run.payloads[f.call_index] = None
            results = serialize.Pickled(payloads)
            if isinstance(extra_args, (tuple, list)):  # results first, then these
                call = ((results, *extra_args), {})
            else:
                call = ((), {"results": results}) if by_keyword else ((results,), {})
                call[1].update(extra_args or {})
            args = serialize.dumps_arguments([call], modules, f"results reduced by {run.job.call_name(index)}:")
            run.launch([(index, args[0])])
        except Exception as e:  # noqa: BLE001 - e.g. unpicklable results: the reducer's outcome
            run.settle([(index, None, e)])

    def _settings(self, runtime_memory, timeout, chunksize, retries):
        return self.config.with_overrides(
            "map argument", runtime_memory=runtime_memory, timeout=timeout, chunksize=chunksize, retries=retries
        )

    def _map(
        self, map_function, map_iterdata, *, extra_args, extra_env, runtime_memory, timeout, chunksize,
        include_modules, exclude_modules, retries, obj_chunk_size, obj_chunk_number, obj_newline,
        collected_later: bool = False, keep_payloads: bool = False, only_objects: bool = False,
        retry_errors: bool = False,
    ) -> tuple[_JobRun, list[str | None]]:
        """Plan, pickle and launch a map; return its run and the object URL each call reads. With
        ``only_objects``, every call must read an object in storage (checked before anything runs).
        Items that are futures stand for their results: the map launches once they are all done."""
        if self._closed:
            raise RuntimeError("cannot schedule new calls after the executor was shut down")
        if not callable(map_function):
            raise TypeError(f"map_function must be callable, not {type(map_function).__name__}")
        settings = self._settings(runtime_memory, timeout, chunksize, retries)
        modules = serialize.by_value_modules(include_modules, exclude_modules, self.backend.shares_host)
        if not isinstance(map_iterdata, (str, bytes)) and isinstance(map_iterdata, Iterable):
            map_iterdata = list(map_iterdata)  # a generator is read once
        inputs = [item for item in map_iterdata if isinstance(item, cf.Future)] if type(map_iterdata) is list else []
        if inputs:
            if only_objects:
                raise ValueError("reducer_one_per_object needs map_iterdata made of objects in storage")
            function_bytes = serialize.dumps_function(map_function, modules)
            items = map_iterdata
            run = self._new_job(map_function, len(items), settings, extra_env, function_bytes, "M", collected_later,
                                retry_errors)
            if keep_payloads:
                run.payloads = [None] * len(items)
            launch = functools.partial(self._launch_over_futures, run, map_function, items, extra_args, modules)
            with self._reducers_lock:
                self._reducers_waiting += 1
            _when_all_done(inputs, functools.partial(self._launch_soon, functools.partial(self._deferred, launch)))
            return run, []
        iterdata, objects = expand_objects(
            map_function, map_iterdata, self._resolve_object, obj_chunk_size, obj_chunk_number, obj_newline
        )
        calls = plan_calls(map_function, iterdata, extra_args, lambda: self.storage)
        if only_objects and (len(objects) != len(calls) or None in objects):
            raise ValueError("reducer_one_per_object needs map_iterdata made of objects in storage "
                             "and a map function with a parameter named 'obj'")
        args = serialize.dumps_arguments(calls, modules, "arguments of call")
        function_bytes = serialize.dumps_function(map_function, modules)
        run = self._new_job(
            map_function, len(calls), settings, extra_env, function_bytes, "M", collected_later, retry_errors
        )
        if keep_payloads:
            run.payloads = [None] * len(calls)
        if args:
            try:
                run.launch(list(enumerate(args)))
            except BaseException:
                self._forget(run)  # nothing was sent: no future may wait for it
                raise
        return run, objects

    def _launch_over_futures(self, run: _JobRun, map_function, items: list, extra_args, modules) -> None:
        """Launch the calls of a map whose items include futures (all done): each future gives its
        result as the item; a call whose future failed or was cancelled fails with that error."""
        failed = {}
        for index, item in enumerate(items):
            if isinstance(item, cf.Future):
                error = cf.CancelledError(f"{item!r} was cancelled") if item.cancelled() else item.exception()
                if error is not None:
                    failed[index] = error
                else:
                    items[index] = item.result()
        indices = [index for index in range(len(items)) if index not in failed]
        run.settle([(index, None, error) for index, error in failed.items()])
        try:
            calls = plan_calls(map_function, items, extra_args, lambda: self.storage)
            args = serialize.dumps_arguments([calls[i] for i in indices], modules, "arguments of call")
            if indices:
                run.launch(list(zip(indices, args, strict=True)))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result: the calls' outcome
            run.settle([(index, None, e) for index in indices])

    def _forget(self, run: _JobRun) -> None:
        """Drop a job whose launch failed: its futures, its record and whatever it stored."""
        dropped = set(map(id, run.futures))
        self.futures = [f for f in self.futures if id(f) not in dropped]
        self._uncollected = [f for f in self._uncollected if id(f) not in dropped]
        self._runs.remove(run)
        if run.stored:
            _remove_stored(run.job.data_url)

    def _new_job(
        self, function, n_calls: int, settings, extra_env, function_bytes: bytes, kind: str, collected_later=False,
        retry_errors=False,
    ) -> _JobRun:
        """A job of ``n_calls`` calls of ``function`` with their futures, not launched yet."""
        extra_env = {**self._call_env, **(extra_env or {})}
        extra_env = _with_state_url(_checked_env(extra_env), self.config.state_url, function, function_bytes)
        key = f"{self.executor_id}/{kind}{next(self._jobs):03d}"
        job = JobSpec(
            key=key,
            function_name=getattr(function, "__qualname__", type(function).__name__),
            function_key=hashlib.blake2b(function_bytes, digest_size=16).hexdigest(),
            function_bytes=function_bytes,
            extra_env=extra_env,
            timeout=settings.timeout,
            runtime_memory=settings.runtime_memory,
            sys_path=tuple(sys.path),
            cwd=os.getcwd(),
            chunksize=settings.chunksize,
            data_url=f"{self._data_url}/{key.rsplit('/', 1)[1]}",
            storage_threshold=settings.storage_threshold,
        )
        info = JobInfo(job.key, job.function_name, threading.Condition(), time.time(), n_calls)
        futures = ResponseFuture._of_job(info, n_calls)
        self.futures += futures
        if not collected_later:
            self._uncollected += futures
        run = _JobRun(self, job, futures, settings.retries, retry_errors)
        self._runs.append(run)
        return run

    # --- collecting -------------------------------------------------------------------------

    def wait(
        self, fs=None, throw_except=True, return_when=ALL_COMPLETED, timeout=None, show_progressbar=None, **_lithops
    ):
        """Wait for ``fs`` (default: every call of this executor); return ``(done, not_done)``.
        ``return_when`` may also be Lithops' (``ALWAYS`` 0, ``ANY_COMPLETED`` -1, ``ALL_COMPLETED``
        100) or a percentage of the futures. Lithops' other arguments (``download_results``,
        ``threadpool_size``, ``wait_dur_sec``) are accepted and have no effect."""
        fs = self.futures if fs is None else as_list(fs)
        return wait(fs, throw_except, return_when, timeout, self._progress(show_progressbar))

    def get_result(self, fs=None, throw_except=True, timeout=None, show_progressbar=None, **_lithops):
        """Results in input order: of ``fs`` (a future gives a single value, a list a list), or by
        default of every call not yet collected: a list, or a single value if there is one and the
        last submission was ``call_async`` or ``map_reduce`` (as in Lithops). A call that returned
        futures gives their results in its place."""
        if fs is None:
            fs = self._uncollected
            results = get_result(fs, throw_except, timeout, self._progress(show_progressbar))
            single = len(results) == 1 and self._last_call != "map"
        else:
            single = isinstance(fs, cf.Future) or getattr(fs, "reduced", False)
            fs = as_list(fs)
            results = get_result(fs, throw_except, timeout, self._progress(show_progressbar))
            single = single and len(results) == 1
        self._collected(fs)
        return results[0] if single else results

    def _collected(self, fs: list) -> None:
        """Drop ``fs`` from the calls not yet collected (at once if they are the last ones submitted)."""
        uncollected, n = self._uncollected, len(fs)
        tail = len(uncollected) - n
        if n and tail >= 0 and all(a is b for a, b in zip(uncollected[tail:], fs, strict=True)):
            del uncollected[tail:]
            return
        collected = set(map(id, fs))
        self._uncollected = [f for f in uncollected if id(f) not in collected]

    def _progress(self, show_progressbar):
        return self.config.show_progressbar if show_progressbar is None else show_progressbar

    # --- records ----------------------------------------------------------------------------

    def stats(self, fs=None) -> list[dict]:
        """One row per call (of ``fs``, default all): timestamps, worker, cold start, sizes, ..."""
        return summary_rows(self.futures if fs is None else as_list(fs))

    def job_summary(self, fs=None):
        """``stats()`` as a pandas DataFrame (or the rows themselves when pandas is not installed)."""
        return to_dataframe(self.stats(fs))

    def clean(self, fs=None, cs=None, clean_cloudobjects: bool = True, **_lithops) -> None:
        """Forget finished calls (of ``fs``, default all) so their memory is freed, and remove whatever
        data of finished jobs is left in storage. Also delete the cloud objects ``cs`` and, with
        ``clean_cloudobjects``, those this executor's calls put through their ``storage`` parameter
        without a key. (Lithops' ``clean_fn``, ``force`` and ``on_exit`` have no effect.)"""
        if cs:
            self.storage.delete_cloudobjects(cs)
        if clean_cloudobjects and self._storage is not None:
            storage = self._storage
            found = Storage.list_objects(storage, storage.cloudobject_prefix + "/", bucket=storage.bucket)
            Storage.delete_objects(storage, [o["Key"] for o in found], bucket=storage.bucket)
        chosen = None if fs is None else set(map(id, as_list(fs)))

        def forget(f) -> bool:
            return f._state in DONE_STATES and (chosen is None or id(f) in chosen)

        finished = [run for run in self._runs if run.unsettled == 0]
        for run in finished:
            if run.stored:
                _remove_stored(run.job.data_url)  # normally gone already; a failed removal is retried
        self._runs = [run for run in self._runs if run.unsettled]  # the others: no list scan per run
        if chosen is None:  # the common case, without a call per future
            self.futures = [f for f in self.futures if f._state not in DONE_STATES]
            self._uncollected = [f for f in self._uncollected if f._state not in DONE_STATES]
        else:
            self.futures = [f for f in self.futures if not forget(f)]
            self._uncollected = [f for f in self._uncollected if not forget(f)]

    # --- lifetime ---------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop: with ``cancel_futures`` cancel the calls not started yet; with ``wait`` wait for the rest.

        A job's stored data is removed once all its calls are settled; calls still running after a
        shutdown without ``wait`` keep theirs until they end."""
        with self._reducers_lock:
            if self._closed:
                return
            self._closed = True
            reducers_waiting = self._reducers_waiting
        if cancel_futures:
            for f in self.futures:
                f.cancel()  # refused by those running
            runs = {run.job.key: run for run in self._runs}
            for job, index in self.backend.cancel():
                if job.key in runs:  # dropped before it ran (a retry's future is running: cancel it too)
                    discard(runs[job.key].futures[index])
                    runs[job.key].settle([(index, None, None)])
        if wait:
            self.wait(throw_except=False, show_progressbar=False)
        if wait or not reducers_waiting:
            self._reducers.shutdown(wait=wait)
        self.backend.close()
        if wait and all(run.unsettled == 0 for run in self._runs):
            _remove_stored(self._data_url)  # what is left: empty folders, or data a failed removal left

    def __enter__(self) -> FunctionExecutor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def __repr__(self) -> str:
        return f"<FunctionExecutor {self.executor_id} backend={self.config.backend}>"


class RetryingFunctionExecutor:
    """Lithops' ``RetryingFunctionExecutor(executor)``: its ``map`` runs each call that raised (or
    timed out, or whose worker was lost) again, up to ``retries`` times (default: the executor's
    ``retries`` setting); a call's future settles once, with its last attempt's outcome. Everything
    else is the executor's."""

    def __init__(self, executor: FunctionExecutor):
        self.executor = executor
        self.config = executor.config

    def map(
        self, map_function, map_iterdata, chunksize=None, extra_args=None, extra_env=None, runtime_memory=None,
        obj_chunk_size=None, obj_chunk_number=None, obj_newline="\n", timeout=None, include_modules=None,
        exclude_modules=None, retries=None,
    ) -> FuturesList:
        run, _ = self.executor._map(
            map_function, map_iterdata, extra_args=extra_args, extra_env=extra_env, runtime_memory=runtime_memory,
            timeout=timeout, chunksize=chunksize, include_modules=include_modules, exclude_modules=exclude_modules,
            retries=retries, obj_chunk_size=obj_chunk_size, obj_chunk_number=obj_chunk_number,
            obj_newline=obj_newline, retry_errors=True,
        )
        self.executor._last_call = "map"
        return FuturesList(run.futures, self.executor)

    def __getattr__(self, name: str):
        return getattr(self.executor, name)

    def __enter__(self) -> RetryingFunctionExecutor:
        self.executor.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.executor.__exit__(exc_type, exc, tb)
