"""FunctionExecutor: the Lithops-compatible entry point."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import os
import pickle
import secrets
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from . import serialize
from .backends import get_backend_class
from .config import resolve_config
from .errors import CallError, MemoryLimitError, RemoteError, WorkerLostError
from .futures import ALL_COMPLETED, ResponseFuture, as_list, get_result, wait
from .job import JobSpec, plan_calls
from .stats import summary_rows, to_dataframe


class _JobRun:
    """Receives the outcomes of one job's calls from the backend and settles their futures."""

    def __init__(self, executor: FunctionExecutor, futures: list[ResponseFuture], args: list[bytes], retries: int):
        self.executor, self.futures, self.retries = executor, futures, retries
        self.args: list[bytes] | None = args if retries else None  # kept only to run lost calls again
        self._lock = threading.Lock()

    def on_result(self, job: JobSpec, result: tuple[int, bool, bytes, dict]) -> None:
        index, ok, payload, stats = result
        future = self.futures[index]
        future.stats.update(stats, received=time.time())
        if future.done():
            return  # cancelled by the user meanwhile
        try:
            if ok:
                value, error = serialize.loads(payload), None
            else:
                value, error = None, _remote_exception(job, index, payload, stats)
        except Exception as e:  # the result cannot be unpickled here
            name = job.call_name(index)
            value, error = None, RemoteError(f"the result of call {name} cannot be loaded: {e!r}", name)
        _settle(future, value, error)

    def on_lost(self, job: JobSpec, index: int, error: CallError) -> None:
        future = self.futures[index]
        retry = isinstance(error, WorkerLostError) and not isinstance(error, MemoryLimitError)
        with self._lock:
            if retry and future.attempts <= self.retries and not future.done():
                future.attempts += 1
                self.executor.backend.submit(job, [(index, self.args[index])], self)
                return
        if future.attempts > 1:
            error.add_note(f"call {job.call_name(index)} was tried {future.attempts} times")
        _settle(future, None, error)


def _settle(future: ResponseFuture, value: Any, error: BaseException | None) -> None:
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except cf.InvalidStateError:
        pass  # the user cancelled it meanwhile


def _remote_exception(job: JobSpec, index: int, payload: bytes, stats: dict) -> BaseException:
    exc_bytes, type_name, message, tb = pickle.loads(payload)
    name = job.call_name(index)
    where = f"Remote traceback of call {name} on worker {stats.get('worker_id')}:\n{tb}"
    exc = None
    if exc_bytes is not None:
        try:
            exc = serialize.loads(exc_bytes)
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(f"call {name} raised {type_name}: {message}", name)
    if stats.get("memory_exceeded"):
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


def _with_embedded_state_url(extra_env: dict | None) -> dict | None:
    """Point calls at this process's embedded state server, if it runs, so that a state object a call
    creates by name (``AtomicInt("hits")``) is the caller's, not one of a server of the worker's own."""
    server = sys.modules.get("cloudbutton.state.server")
    url = server.running_url() if server else None
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
        self.futures: list[ResponseFuture] = []
        self._uncollected: list[ResponseFuture] = []
        self._jobs = itertools.count()
        self._closed = False

    # --- submitting -------------------------------------------------------------------------

    def call_async(
        self, func, data, extra_env=None, timeout=None, include_modules=None, exclude_modules=None
    ) -> ResponseFuture:
        """Run ``func`` once with ``data`` (one iterdata item) and return its future."""
        return self.map(
            func, [data], extra_env=extra_env, timeout=timeout, include_modules=include_modules,
            exclude_modules=exclude_modules,
        )[0]

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
    ) -> list[ResponseFuture]:
        """Run ``map_function`` once per item of ``map_iterdata``; return the futures in input order.

        An item that is a dict is passed as keyword arguments, a tuple or list as positional
        arguments, anything else as the single argument; ``extra_args`` is appended to each."""
        if self._closed:
            raise RuntimeError("cannot schedule new calls after the executor was shut down")
        if not callable(map_function):
            raise TypeError(f"map_function must be callable, not {type(map_function).__name__}")
        settings = self.config.with_overrides(
            "map argument", runtime_memory=runtime_memory, timeout=timeout, chunksize=chunksize, retries=retries
        )
        extra_env = _checked_env(extra_env)
        if self.config.backend == "local" and not self.config.state_url:
            extra_env = _with_embedded_state_url(extra_env)
        calls = plan_calls(map_iterdata, extra_args)
        modules = serialize.by_value_modules(include_modules, exclude_modules)
        function_bytes = serialize.dumps_function(map_function, modules)
        args = serialize.dumps_arguments(calls, modules, "arguments of call")
        job = JobSpec(
            key=f"{self.executor_id}/M{next(self._jobs):03d}",
            function_name=getattr(map_function, "__qualname__", type(map_function).__name__),
            function_key=hashlib.blake2b(function_bytes, digest_size=16).hexdigest(),
            function_bytes=function_bytes,
            extra_env=extra_env,
            timeout=settings.timeout,
            runtime_memory=settings.runtime_memory,
            sys_path=tuple(sys.path),
            cwd=os.getcwd(),
            chunksize=settings.chunksize,
        )
        condition, submitted = threading.Condition(), time.time()
        futures = [ResponseFuture(job.key, i, job.function_name, condition, submitted) for i in range(len(calls))]
        if futures:
            self.backend.submit(job, list(enumerate(args)), _JobRun(self, futures, args, settings.retries))
        self.futures += futures
        self._uncollected += futures
        return futures

    # --- collecting -------------------------------------------------------------------------

    def wait(self, fs=None, throw_except=True, return_when=ALL_COMPLETED, timeout=None, show_progressbar=None):
        """Wait for ``fs`` (default: every call of this executor); return ``(done, not_done)``."""
        fs = self.futures if fs is None else as_list(fs)
        return wait(fs, throw_except, return_when, timeout, self._progress(show_progressbar))

    def get_result(self, fs=None, throw_except=True, timeout=None, show_progressbar=None):
        """Results in input order: of ``fs`` (a future gives a single value, a list a list), or by
        default of every call not yet collected (a single value if there was just one call)."""
        if fs is None:
            fs, single = self._uncollected, len(self._uncollected) == 1
        else:
            single = isinstance(fs, ResponseFuture)
            fs = as_list(fs)
        results = get_result(fs, throw_except, timeout, self._progress(show_progressbar))
        collected = set(map(id, fs))
        self._uncollected = [f for f in self._uncollected if id(f) not in collected]
        return results[0] if single else results

    def _progress(self, show_progressbar):
        return self.config.show_progressbar if show_progressbar is None else show_progressbar

    # --- records ----------------------------------------------------------------------------

    def stats(self, fs=None) -> list[dict]:
        """One row per call (of ``fs``, default all): timestamps, worker, cold start, sizes, ..."""
        return summary_rows(self.futures if fs is None else as_list(fs))

    def job_summary(self, fs=None):
        """``stats()`` as a pandas DataFrame (or the rows themselves when pandas is not installed)."""
        return to_dataframe(self.stats(fs))

    def clean(self) -> None:
        """Forget finished calls (their results and records) so their memory is freed."""
        self.futures = [f for f in self.futures if not f.done()]
        self._uncollected = [f for f in self._uncollected if not f.done()]

    # --- lifetime ---------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop: with ``cancel_futures`` drop calls not yet started; with ``wait`` wait for the rest."""
        if self._closed:
            return
        self._closed = True
        if cancel_futures:
            for f in self.futures:
                if not f.running():
                    f.cancel()
            cancel = getattr(self.backend, "cancel", None)
            if cancel:
                cancel()
        if wait:
            self.wait(throw_except=False, show_progressbar=False)
        self.backend.close()

    def __enter__(self) -> FunctionExecutor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def __repr__(self) -> str:
        return f"<FunctionExecutor {self.executor_id} backend={self.config.backend}>"
