"""A joblib parallel backend: scikit-learn (and any ``joblib.Parallel`` code) on cloudbutton.

    import cloudbutton.joblib  # registers the backend "cloudbutton"

    with joblib.parallel_backend("cloudbutton", max_workers=8):
        GridSearchCV(SVC(), grid, cv=5).fit(X, y)

Each batch of joblib tasks is one call on a ``FunctionExecutor`` the backend owns; the backend's
keyword arguments configure it (``max_workers``, ``config``, any config key; cloudbutton's own
``backend`` goes in ``config={"backend": "dask"}``, as joblib's first argument is named backend too).
Exceptions come back with their own type. Large arguments shared by many tasks (``X``, ``y``) are put once in
storage under their content hash and each worker process loads them once (see ``upload_threshold``).

Nested ``Parallel`` calls inside a task run sequentially in the task's worker process (joblib's own
rule for nested parallelism on process workers, which avoids oversubscribing the workers); this also
holds for a nested ``Parallel(backend="cloudbutton")``: a task never starts executors of its own.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextvars
import dataclasses
import hashlib
import logging
import queue
import secrets
import sys
import threading
from typing import Any

from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    parallel_config,
    register_parallel_backend,
)

from . import serialize
from .config import resolve_config
from .futures import discard
from .storage import Storage

__all__ = ["CloudbuttonBackend", "register"]

NAME = "cloudbutton"
WORKER_CACHE_BYTES = 1 << 30
"""Bytes of shared arguments each worker process keeps loaded (least recently used ones are dropped)."""

_log = logging.getLogger(__name__)
_in_task: contextvars.ContextVar[bool] = contextvars.ContextVar("cloudbutton_joblib_in_task", default=False)


def register() -> None:
    """Register the backend with joblib under the name ``"cloudbutton"`` (importing this module does it)."""
    register_parallel_backend(NAME, CloudbuttonBackend)


# --- shared arguments: uploaded once, loaded once per worker ---------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """Stands for an argument put in storage; the worker replaces it by the object."""

    url: str
    key: str
    digest: str
    nbytes: int


def _nbytes(obj: Any) -> int:
    """Size of the data of arrays, pandas objects, sparse matrices and bytes; 0 for anything else
    (measuring an arbitrary object would mean pickling it, on every task)."""
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    size = getattr(obj, "nbytes", None)  # numpy arrays, pandas Series and Index
    if isinstance(size, int) and not isinstance(obj, type):
        return size
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(obj, pandas.DataFrame):
        return int(obj.memory_usage(index=True, deep=False).sum())
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(obj):
        parts = ("data", "indices", "indptr", "row", "col", "offsets")
        return sum(getattr(obj, p).nbytes for p in parts if hasattr(getattr(obj, p, None), "nbytes"))
    return 0


class _WorkerCache:
    """Shared arguments loaded in this process, keyed by content hash; an LRU bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
        self._size = 0
        self._storages: dict[str, Storage] = {}
        self._lock = threading.Lock()

    def load(self, ref: _Stored) -> Any:
        with self._lock:
            hit = self._items.get(ref.digest)
            if hit is not None:
                self._items.move_to_end(ref.digest)
                return hit[0]
            storage = self._storages.get(ref.url) or self._storages.setdefault(ref.url, Storage(ref.url))
        obj = serialize.loads(storage.get_object(ref.key))
        with self._lock:
            if ref.nbytes <= self.max_bytes and ref.digest not in self._items:
                self._items[ref.digest] = (obj, ref.nbytes)
                self._size += ref.nbytes
                while self._size > self.max_bytes:
                    _, (_, size) = self._items.popitem(last=False)
                    self._size -= size
        return obj


_cache = _WorkerCache(WORKER_CACHE_BYTES)


def _resolve(value: Any) -> Any:
    return _cache.load(value) if isinstance(value, _Stored) else value


def joblib_batch(tasks: list, nested_backend, nested_n_jobs) -> list:
    """Runs one batch of joblib tasks in a worker (what ``joblib.parallel.BatchedCalls`` does, plus
    loading the shared arguments); nested ``Parallel`` calls use ``nested_backend``."""
    token = _in_task.set(True)
    try:
        with parallel_config(backend=nested_backend, n_jobs=nested_n_jobs):
            return [
                func(*[_resolve(a) for a in args], **{k: _resolve(v) for k, v in kwargs.items()})
                for func, args, kwargs in tasks
            ]
    finally:
        _in_task.reset(token)


# --- the caller's side -----------------------------------------------------------------------------


class _CallbackThread(threading.Thread):
    """Runs joblib's completion callbacks, in order, on a thread of its own. joblib submits the next
    batch from that callback, which must neither block nor re-enter the thread that delivers results."""

    def __init__(self):
        super().__init__(name="cloudbutton-joblib-callbacks", daemon=True)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.start()

    def put(self, callback, future) -> None:
        self._queue.put((callback, future))  # after close() nobody waits for the result: it is dropped

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, future = item
            try:
                callback(future)
            except Exception:
                _log.exception("a joblib completion callback failed")

    def close(self) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self:
            self.join()


class CloudbuttonBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend that runs each batch of tasks as one call of a ``FunctionExecutor``.

    ``backend``, ``max_workers``, ``config`` and ``**overrides`` configure that executor (an unknown
    key is a ``ConfigError`` at once). Through ``parallel_config``/``parallel_backend``, whose first
    argument is joblib's backend name, give cloudbutton's backend as ``config={"backend": "dask"}``.

    Arguments of at least ``upload_threshold`` bytes (arrays, pandas objects, sparse matrices, bytes;
    ``None``: none) are put once in storage under their content hash and replaced by a reference; a
    worker loads each once and keeps it (``WORKER_CACHE_BYTES`` per process). This pays off far below
    the executor's own ``storage_threshold``: a shared argument travels once per worker instead of
    once per task. As with joblib's other backends, an argument must not change while the ``Parallel``
    call that uses it runs. The objects are deleted when the backend terminates (at the end of every
    ``Parallel`` call, or of a ``with Parallel(...)`` block).

    The executor lives from the first use until ``terminate``; n_jobs=-1 (the default) means all its
    workers. When only one job results, joblib runs the tasks in the calling process."""

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_timeout = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(
        self,
        backend: str | None = None,
        max_workers: int | None = None,
        config=None,
        upload_threshold: int | None = 1 << 16,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **overrides: Any,
    ):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if upload_threshold is not None and (not isinstance(upload_threshold, int) or upload_threshold < 1):
            raise ValueError(f"upload_threshold must be a byte count (an int > 0) or None, not {upload_threshold!r}")
        self.config = resolve_config(config, backend=backend, max_workers=max_workers, **overrides)
        self.upload_threshold = upload_threshold
        self.parallel = None  # the joblib.Parallel being served, set by configure
        self.prefix = f"joblib/{secrets.token_hex(8)}"
        self._lock = threading.RLock()
        self._executor = None
        self._callbacks: _CallbackThread | None = None
        self._storage: Storage | None = None
        self._shared: dict[int, tuple[Any, _Stored]] = {}  # id(arg) -> (arg, ref); arg held so its id stays its own
        self._uploaded: set[str] = set()
        self._pending: set[cf.Future] = set()
        self.uploads = 0  # objects put in storage over the backend's life

    # --- joblib's protocol -------------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs == 1 or _in_task.get():
            return 1
        workers = self._workers()
        n_jobs = -1 if n_jobs is None else n_jobs
        return max(workers + 1 + n_jobs, 1) if n_jobs < 0 else min(n_jobs, workers)

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs) -> int:
        self.parallel = parallel
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:  # joblib runs one job in this process: nothing of ours must keep running
            self.terminate()
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        return n_jobs

    def get_nested_backend(self):
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def submit(self, func, callback=None):
        """Run the batch ``func`` (a ``joblib.parallel.BatchedCalls``) as one call; return its future.
        A batch that cannot be sent (an unpicklable argument, storage failing) gives a failed future, so
        joblib raises the error in the caller whichever thread submitted it."""
        try:
            with self._lock:
                if self._executor is None and isinstance(threading.current_thread(), _CallbackThread):
                    raise cf.CancelledError("the backend was terminated")  # only the caller's thread restarts it
                executor, callbacks = self._started(), self._callbacks
                tasks = [(f, [self._share(a) for a in args], {k: self._share(v) for k, v in kw.items()})
                         for f, args, kw in func.items]
                future = executor.call_async(joblib_batch, (tasks, *self.get_nested_backend()))
                self._pending.add(future)
        except Exception as e:
            future, callbacks = cf.Future(), None
            future.set_exception(e)
        future.add_done_callback(self._pending.discard)
        if callback is not None:
            future.add_done_callback(callback if callbacks is None else lambda f: callbacks.put(callback, f))
        return future

    def retrieve_result_callback(self, out):
        return out.result()

    def start_call(self) -> None:
        """Drop the batches an aborted earlier call of the same ``Parallel`` object had prepared: joblib
        (1.6, with every backend) keeps them queued and would send them first, mixing their results in."""
        ready = getattr(self.parallel, "_ready_batches", None)
        while ready is not None and not ready.empty():
            ready.get_nowait()

    def stop_call(self) -> None:
        with self._lock:
            self._shared = {}  # the next call hashes its arguments again: they may have changed meanwhile
            if self._executor is not None:
                self._executor.clean()  # joblib holds the futures it still needs

    def abort_everything(self, ensure_ready=True) -> None:
        """Drop what is queued, stop what runs (as loky kills its workers) and stop; with ``ensure_ready``
        the next batch starts everything again."""
        executor = self._executor
        for future in list(self._pending):
            discard(future)
        if executor is not None:
            executor.backend.abort()
        self.terminate()

    def terminate(self) -> None:
        """Stop the executor and the callback thread, delete the uploaded arguments."""
        with self._lock:
            executor, callbacks, uploaded = self._executor, self._callbacks, self._uploaded
            self._executor = self._callbacks = None
            self._shared, self._uploaded = {}, set()
        if callbacks is not None:
            callbacks.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if uploaded:
            self._storage.delete_objects(sorted(uploaded))
            try:
                self._storage.fs.rm(self._storage.object_url(self.prefix), recursive=True)  # empty folders
            except FileNotFoundError:
                pass
        self.reset_batch_stats()

    # --- internals ---------------------------------------------------------------------------------

    def _workers(self) -> int:
        """How many calls the backend runs at once, starting nothing that keeps running (scikit-learn asks
        ``effective_n_jobs`` outside any ``Parallel``, and nothing would stop it)."""
        with self._lock:
            if self._executor is not None:
                return self._executor.backend.workers
        from .executor import FunctionExecutor

        executor = FunctionExecutor(config=self.config)  # ask the backend (local starts no worker for it)
        try:
            return executor.backend.workers
        finally:
            executor.shutdown(wait=False)

    def _started(self):
        """The executor, started on first use (after ``terminate`` a new one is started)."""
        with self._lock:
            if self._executor is None:
                from .executor import FunctionExecutor

                self._executor = FunctionExecutor(config=self.config)
                self._callbacks = _CallbackThread()
            return self._executor

    def _share(self, arg: Any) -> Any:
        """``arg`` itself, or if large a reference to a copy put once in storage under its content hash."""
        if self.upload_threshold is None or _nbytes(arg) < self.upload_threshold:
            return arg
        hit = self._shared.get(id(arg))
        if hit is not None:
            return hit[1]
        data = serialize.dumps(arg)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        key = f"{self.prefix}/{digest}"
        if self._storage is None:
            self._storage = Storage(self.config.storage_url)
        if key not in self._uploaded:
            self._storage.put_object(key, data)
            self._uploaded.add(key)
            self.uploads += 1
        ref = _Stored(self._storage.url, key, digest, len(data))
        self._shared[id(arg)] = (arg, ref)
        return ref

    def __repr__(self) -> str:
        return f"<CloudbuttonBackend backend={self.config.backend} max_workers={self.config.max_workers}>"


register()
