"""The ``dask`` backend: call batches as tasks on a Dask cluster.

With ``dask_address`` set, calls go to that scheduler; without it, the backend starts a
``LocalCluster`` of single-threaded worker processes on 127.0.0.1 and stops it in ``close()``. That
cluster speaks TLS, with a key and a certificate made for it in memory (``Security.temporary()``):
only the backend's client and the cluster's own processes hold them, so no other process can
connect to it, run code on it or read its results (~0.1 s more at start, a few per cent on quick calls).
Each batch of calls is one Dask task running the one worker runtime (``cloudbutton.worker.Runtime``);
Dask does the scheduling. When a task is done, its future's done callback hands it to a few threads
of ours that fetch its results and deliver them to the sink, so neither the client's event loop nor
Dask's one callback thread ever waits for a sink or a fetch. Every call reaches ``sink.on_results``
or ``sink.on_lost`` exactly once: whoever takes a task out of ``_tasks`` (under the lock) reports its
calls.

Failures:

- A call runs once per attempt, and ``attempts`` counts its runs: the executor's ``retries`` decide
  whether a call lost with its worker runs again, not Dask. Before each call, a task notes the
  call's position in a record named by the task's key, in a directory beside the worker's own (its
  nanny's), which outlives the worker process (``_Progress``). When a worker dies while running a
  batch (Dask raises ``KilledWorker``), the backend reads that record: itself on a cluster it
  started, elsewhere through the nanny of the dead worker (``Client.run(..., nanny=True)``, once that
  nanny has started another worker). The call that was running is reported as ``WorkerLostError``
  after that one run; the other calls of the batch are sent again: those that had not started, and
  those that had finished but whose results were lost with the worker (such a call runs again, as on
  the local backend; its outcome is delivered once).
- A cluster we start gives up on a task at the first death (``allowed-failures = 0``). Another
  cluster may run the task again itself (Dask's default ``allowed-failures`` is 3). A re-run on the
  same host finds the record of the run that died and runs no call: it hands the record back, and
  the backend goes on as above. A re-run elsewhere is seen by its second start report: the backend
  reads the first run's record through that run's nanny, cancels the re-run (a task stops before its
  next call once cancelled) and goes on as above; but the re-run may have started calls before the
  cancellation reaches it, the crashing call among them, and a first run that died before its start
  report left its worker is not seen at all. For exact accounting on a cluster of several hosts,
  set its ``distributed.scheduler.allowed-failures`` to 0.
- Without a record (a worker without a nanny on another cluster, or a record that could not be
  written), the backend tells the crashing call apart by running the calls again: the batch one call
  per task, and a single call lost that way again alone, as a suspect (one at a time); only a
  suspect whose worker dies again is reported as ``WorkerLostError``, so that call ran twice.
- Every task reports when it starts running, and where, through a Dask event
  (``Worker.log_event`` -> ``Client.subscribe_topic``). When a job has a ``timeout``, each call is
  its own task, and its clock starts when the client receives that event, so time spent queued
  never counts, and the clocks of client and workers never need to agree. A call still running
  ``timeout`` seconds later is reported as ``CallTimeoutError``, its task is cancelled and its
  worker stopped: on a LocalCluster we started, the worker process is killed and its nanny starts
  another at once; on another cluster the worker is restarted with ``Client.restart_workers``
  (which needs a nanny; without one a warning is logged and the call's thread runs on, its result
  unused).
- The calls of a LocalCluster we start see the caller's ``sys.path`` and working directory; the
  calls sent to a cluster at ``dask_address`` do not (those are another machine's).
- A script that starts a LocalCluster at its top level, without ``if __name__ == "__main__":``, gets
  a ``BackendError`` saying so: the cluster's worker processes are spawned and import the main script
  again; when that makes them start a cluster too, they end quietly instead, so that the one error
  is all the script prints.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import heapq
import itertools
import logging
import mmap
import multiprocessing.process
import os
import queue
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
import weakref

import dask
import distributed
import psutil
from dask.utils import parse_timedelta
from distributed import Client, KilledWorker, LocalCluster
from distributed.deploy.cluster import Cluster

from ..errors import BackendError, CallError, CallTimeoutError, RemoteError, WorkerLostError
from ..job import JobSpec, next_batch_size
from ..worker import Runtime
from . import Backend, ResultSink

logger = logging.getLogger(__name__)

LOCAL_CLUSTER_CONFIG = {
    # a task whose worker dies fails with KilledWorker at once (Dask's default runs it again, up to three
    # times): the executor's retries decide whether a lost call runs again
    "distributed.scheduler.allowed-failures": 0,
    # one task at a time per single-threaded worker: a crash or a restart takes no queued task with it
    "distributed.scheduler.worker-saturation": 1.0,
}
"""Dask settings of the LocalCluster the backend starts itself."""
_MAIN_GUARD_HINT = (
    "backend='dask' without dask_address starts a dask LocalCluster, whose worker processes are spawned and"
    " import your main script again: put the code that creates the FunctionExecutor under"
    ' `if __name__ == "__main__":` (or give a dask_address, or use the local backend, which needs no guard)'
)
START_TOPIC = "cloudbutton-task-started"
"""The Dask event topic of the tasks' start reports (one topic: the scheduler keeps every topic)."""
FETCHERS = 4
"""Threads that fetch and deliver the outcomes of finished tasks."""
LOCAL_CONNECT_TIMEOUT = 10.0
"""Seconds the scheduler of a LocalCluster we start tries to connect to one of its workers."""
NANNY_WAIT = 30.0
"""Seconds the backend waits for the nanny of a dead worker (on a cluster it did not start) to start
another worker, through which it reads the dead worker's records."""
RECORD = struct.Struct("q")
"""A task's progress record: the position in its batch of the call running (-1: none started yet)."""


class _LocalCluster(LocalCluster):
    """A LocalCluster whose nannies stay. When a worker leaves the scheduler, ``SpecCluster`` waits
    ``distributed.deploy.lost-worker-timeout`` (15 s) and then closes its nanny for good if no
    worker of that name is registered at that moment: after a crash, and another crash 15 s later,
    the cluster would shrink, down to no workers at all (and a job that never finishes). Our nannies
    live in this process and restart their workers themselves, so that clean-up is skipped."""

    def _update_worker_status(self, op, msg):
        if op == "remove":
            Cluster._update_worker_status(self, op, msg)
        else:
            super()._update_worker_status(op, msg)


def _record_path(local_directory: str, key: str) -> str:
    """The progress record of task ``key`` on a worker whose own directory is ``local_directory``: in
    the directory that holds it (its nanny's), which a new worker of that nanny does not clean."""
    return os.path.join(os.path.dirname(local_directory), f"cloudbutton-{key}.running")


def _take_record(local_directory: str, key: str) -> int:
    """Read and remove the record of task ``key`` whose worker died (or was stopped): the position of
    the call it was running, or -1 if it has none (it had not started, or another reader took it)."""
    path = _record_path(local_directory, key)
    try:
        with open(path, "rb") as f:
            data = f.read(RECORD.size)
        os.unlink(path)  # of two readers, one takes it
    except FileNotFoundError:
        return -1
    return RECORD.unpack(data)[0] if len(data) == RECORD.size else -1


class _EarlierRunDied(Exception):
    """Raised, before any call runs, by a task that Dask runs again on a host where an earlier run of
    it died while running the call at ``position`` (a cluster whose allowed-failures is not 0)."""

    def __init__(self, position: int):
        super().__init__(position)
        self.position = position


class _Progress:
    """The record of a running task (see ``_record_path``), written before each of its calls: which
    call was running, should the worker process die. A task that ends removes it. Also tells the task
    to stop before its next call if it was cancelled. Without a place to write it, the task runs without
    a record (a death of its worker is then handled without one)."""

    def __init__(self, worker: distributed.Worker, key: str, n_calls: int):
        self.path = _record_path(worker.local_directory, key)
        self.task = worker.state.tasks.get(key)  # its state becomes "cancelled" when the client cancels it
        self.memory: mmap.mmap | None = None
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # an earlier run of this task, on this host, ended with its worker
                position = _take_record(worker.local_directory, key)
                if 0 <= position < n_calls:
                    raise _EarlierRunDied(position) from None
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, RECORD.pack(-1))
                self.memory = mmap.mmap(fd, RECORD.size)
            finally:
                os.close(fd)
        except OSError as e:
            logger.warning("cloudbutton: no progress record for dask task %s: %s", key, e)

    def starting(self, position: int) -> None:
        if self.task is not None and self.task.state == "cancelled":
            raise RuntimeError("the dask task was cancelled")
        if self.memory is not None:
            RECORD.pack_into(self.memory, 0, position)

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


_runtime: Runtime | None = None


def _kill_tree(pid: int) -> None:
    """Kill a worker process of ours and every process its calls started, as a serverless platform
    ends a container (stopped first, so that it starts no more while they are listed)."""
    try:
        worker = psutil.Process(pid)
        worker.suspend()
        processes = [*worker.children(recursive=True), worker]
    except psutil.NoSuchProcess:
        return  # it ended by itself meanwhile
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def run_calls(calls: list[tuple[int, bytes]], job: JobSpec, topic: str) -> list:
    """The Dask task: runs a batch on a worker through the one worker runtime, noting which call runs
    (``_Progress``), after telling the client (through a Dask event on ``topic``) that the task
    started, where, and where its record is."""
    global _runtime
    worker = distributed.get_worker()
    key = str(worker.get_current_task())
    progress = _Progress(worker, key, len(calls))
    try:
        worker.log_event(
            topic,
            {
                "key": key,
                "worker": worker.address,
                "pid": os.getpid(),
                "nanny": worker.nanny,
                "directory": worker.local_directory,
            },
        )
        if _runtime is None:
            _runtime = Runtime(f"dask:{worker.address}")
        return list(_runtime.run_batch(job, calls, progress.starting))
    finally:
        progress.close()


@dataclasses.dataclass(eq=False)
class _Task:
    """One Dask task of ours that has not reported its outcome yet."""

    job: JobSpec  # as the caller made it (names calls in errors)
    worker_job: JobSpec  # as sent to the workers
    calls: list
    sink: ResultSink
    future: distributed.Future | None = None
    started: float | None = None  # time.monotonic() when the client learned that it started
    worker: str | None = None  # address of the worker running it
    pid: int | None = None  # of the worker process running it
    nanny: str | None = None  # address of that worker's nanny
    directory: str | None = None  # that worker's local_directory (see _record_path)
    suspect: bool = False  # a single call lost with its worker, run again alone


_open_backends: weakref.WeakSet[DaskBackend] = weakref.WeakSet()


def _close_open_backends() -> None:
    """At interpreter exit, before the thread pools (Dask's callback thread among them) are shut
    down: close what was not closed, so pending tasks end quietly and their clusters stop."""
    for backend in list(_open_backends):
        with contextlib.suppress(Exception):
            backend.close()


# threading's exit hooks run before thread pools are joined and before atexit (Dask closes its
# clusters in atexit): too late for futures whose done callbacks are still pending
getattr(threading, "_register_atexit", atexit.register)(_close_open_backends)


class DaskBackend(Backend):
    def __init__(self, config):
        super().__init__(config)
        self.cluster: LocalCluster | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None  # the directory of our cluster's files
        if config.dask_address:
            self.address = config.dask_address
            self.client = self._connect(config.dask_address)
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="cloudbutton-dask-", ignore_cleanup_errors=True)
            try:
                self.cluster, self.client = self._start_cluster(
                    config.max_workers or os.cpu_count() or 1, self._scratch.name
                )
            except BaseException:
                self._scratch.cleanup()
                raise
            self.address = self.cluster.scheduler_address
        self.shares_host = self.cluster is not None  # a LocalCluster of ours: workers import what we can
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}  # by dask key: tasks whose outcome is not reported yet
        self._worker_jobs: dict[str, JobSpec] = {}  # by job key: the JobSpec sent to workers
        self._closed = False
        self._deadlines: list[tuple[float, int, str, float]] = []  # heap of (deadline, seq, key, started)
        self._seq = itertools.count()
        self._wakeup = threading.Condition(self._lock)
        self._timer: threading.Thread | None = None  # enforces timeouts, started with the first timeout
        self._restarts: list[threading.Thread] = []
        self._suspects: collections.deque[_Task] = collections.deque()  # waiting to run alone
        self._suspect_running = False
        self._abandoned = False  # cancel() left tasks running on the workers
        # finished tasks, whose outcomes daemon threads fetch and deliver (daemons: a fetch that waits
        # for a result to be computed again must not hold up the interpreter's exit)
        self._finished: queue.SimpleQueue[distributed.Future | None] = queue.SimpleQueue()
        for i in range(FETCHERS):
            threading.Thread(target=self._fetch, name=f"cloudbutton-dask-results-{i}", daemon=True).start()
        self.client.subscribe_topic(START_TOPIC, self._on_started)
        _open_backends.add(self)

    @staticmethod
    def _connect(address: str) -> Client:
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
        try:
            return Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise BackendError(
                f"cannot connect to the dask scheduler at {address} (dask_address): {e}. Is it running and"
                f" reachable? The time allowed is dask's distributed.comm.timeouts.connect ({timeout:g} s)"
            ) from e

    @staticmethod
    def _start_cluster(n_workers: int, local_directory: str) -> tuple[LocalCluster, Client]:
        if getattr(multiprocessing.process.current_process(), "_inheriting", False):
            # a worker process being spawned for a cluster, importing a main script that starts one at its
            # top level: end quietly (and start nothing), the caller's process raises the error that says why
            raise SystemExit(1)
        main = sys.modules.get("__main__")
        if getattr(main, "__name__", None) == "__mp_main__":
            raise BackendError(_MAIN_GUARD_HINT)
        try:
            security = distributed.Security.temporary()
        except ImportError as e:
            raise BackendError(
                f"a dask LocalCluster needs the cryptography package for its TLS keys ({e}): pip install"
                " 'cloudbutton[dask]'"
            ) from e
        cluster = None
        try:
            # the scheduler's and workers' directories (and the tasks' records) in one of our own
            with dask.config.set({**LOCAL_CLUSTER_CONFIG, "temporary-directory": local_directory}):
                cluster = _LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    protocol="tls://",
                    security=security,  # its key: in this process and the cluster's only
                    dashboard_address=None,
                    # the scheduler's HTTP server (health and metrics routes) starts even without a
                    # dashboard; on a free loopback port, a second cluster does not warn that 8787 is taken
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            # Dask's scheduler can start connecting to a worker that has just died (to fetch a result,
            # while the worker's removal is under way) and then retries until its connect timeout; on
            # 127.0.0.1 a connection succeeds at once or never
            cluster.scheduler.rpc.timeout = LOCAL_CONNECT_TIMEOUT
            return cluster, Client(cluster, set_as_default=False)
        except Exception as e:
            if cluster is not None:
                cluster.close()
            script = getattr(main, "__spec__", None) is None and hasattr(main, "__file__")  # python job.py
            hint = f"; {_MAIN_GUARD_HINT}" if script else ""
            if script:  # most likely unguarded: distributed's tracebacks of its failed start would only bury the hint
                logger.debug("starting a dask LocalCluster failed", exc_info=True)
            error = BackendError(f"cannot start a dask LocalCluster with {n_workers} workers: {e!r}{hint}")
            raise error from (None if script else e)

    @property
    def workers(self) -> int:
        """Worker threads in the cluster (at least 1, so batches can be planned while it scales up)."""
        try:
            threads = self.client.scheduler_info(n_workers=0)["total_threads"]
        except (TypeError, KeyError):  # an older distributed: no n_workers argument, no total_threads
            threads = sum(self.client.nthreads().values())
        return max(1, threads)

    # --- submitting -------------------------------------------------------------------------

    def submit(self, job: JobSpec, calls: list[tuple[int, bytes]], sink: ResultSink) -> None:
        """Send ``calls`` as Dask tasks: in batches (``job.chunksize`` calls each, or see
        ``_batches``), or one call per task when the job has a timeout (its clock is per task)."""
        if self._closed:
            raise BackendError(f"the dask backend ({self.address}) was closed")
        worker_job = self._worker_job(job)
        if job.timeout is not None or len(calls) == 1:
            batches = [[call] for call in calls]
        else:
            batches = self._batches(calls, job.chunksize)
        self._submit_tasks(job, worker_job, batches, sink)

    def _worker_job(self, job: JobSpec) -> JobSpec:
        """``job`` as sent to workers: the caller's sys.path and cwd mean something only on a
        cluster we started on this machine."""
        with self._lock:
            worker_job = self._worker_jobs.get(job.key)
            if worker_job is None:
                worker_job = job if self.cluster is not None else dataclasses.replace(job, sys_path=None, cwd=None)
                self._worker_jobs[job.key] = worker_job
                while len(self._worker_jobs) > 64:
                    del self._worker_jobs[next(iter(self._worker_jobs))]
            return worker_job

    def _batches(self, calls: list, chunksize: int | None) -> list[list]:
        """``chunksize`` calls per task if set; else decreasing sizes (guided self-scheduling, as the
        local backend does) but no smaller than an eighth of an equal share per worker, which makes
        about 4-6 tasks per worker: big batches keep Dask's per-task overhead small, the smaller
        ones at the end keep every worker busy until the job is done."""
        n = len(calls)
        if chunksize:
            return [calls[i : i + chunksize] for i in range(0, n, chunksize)]
        workers = self.workers
        floor = max(1, -(-n // (8 * workers)))
        batches, i = [], 0
        while i < n:
            size = max(floor, next_batch_size(n - i, workers, None))
            batches.append(calls[i : i + size])
            i += size
        return batches

    def _submit_tasks(
        self, job: JobSpec, worker_job: JobSpec, batches: list[list], sink: ResultSink, suspect: bool = False
    ) -> None:
        if job.timeout is not None and self._timer is None:
            self._start_timer()
        tasks = {
            f"run_calls-{uuid.uuid4().hex}": _Task(job, worker_job, batch, sink, suspect=suspect) for batch in batches
        }
        with self._lock:  # known before they can start: their start events find them
            closed = self._closed
            if not closed:
                self._tasks.update(tasks)
        try:
            if closed:
                raise BackendError(f"the dask backend ({self.address}) was closed")
            futures = self.client.map(
                run_calls, batches, job=worker_job, topic=START_TOPIC, key=list(tasks), pure=False
            )
        except Exception as e:  # the client is closed or broken: report without re-entering the sink
            logger.debug("dask submit failed", exc_info=True)
            with self._lock:
                for key in tasks:
                    self._tasks.pop(key, None)
            threading.Thread(target=self._report_unsubmitted, args=(list(tasks.values()), e), daemon=True).start()
            return
        for task, future in zip(tasks.values(), futures, strict=True):
            task.future = future
            future.add_done_callback(self._on_done)

    def _report_unsubmitted(self, tasks: list[_Task], error: Exception) -> None:
        for task in tasks:
            if task.suspect:
                self._suspect_done()
            for index, _ in task.calls:
                name = task.job.call_name(index)
                lost = CallError(
                    f"call {name} could not be sent to the dask scheduler at {self.address}: {error!r}", name
                )
                lost.__cause__ = error
                task.sink.on_lost(task.job, index, lost)

    # --- outcomes ---------------------------------------------------------------------------

    def _on_done(self, future: distributed.Future) -> None:
        """Runs on Dask's one callback thread (shared by every future of the process): hand the
        fetching of the outcome to our own threads, since a result whose worker just died is
        computed again and fetching it can take a while."""
        self._finished.put(future)

    def _fetch(self) -> None:
        while (future := self._finished.get()) is not None:
            self._settle(future)

    def _settle(self, future: distributed.Future) -> None:
        with self._lock:
            task = self._tasks.pop(future.key, None)
        if task is None:
            return  # it timed out, or it was cancelled by cancel()/close()
        try:
            if future.status == "error":
                # not result(): raising the exception stored in the future ties the future to it
                # (through its traceback), and Dask releases the task only once the cycle is collected
                self._failed(task, future.exception())
                return
            try:
                results = future.result()  # may wait: a result lost with its worker is computed again
            except (asyncio.CancelledError, concurrent.futures.CancelledError):
                self._lost(task, "its dask task was cancelled (by another client, or the scheduler went away)")
            except Exception as e:
                self._failed(task, e.with_traceback(None))
            else:
                task.sink.on_results(task.job, results)
        except Exception:
            logger.exception("cloudbutton: delivering the outcome of dask task %s failed", future.key)
        finally:
            if task.suspect:
                self._suspect_done()

    def _failed(self, task: _Task, exc: BaseException) -> None:
        if isinstance(exc, _EarlierRunDied):
            self._died(task, exc.position, None)
            return
        if isinstance(exc, KilledWorker):
            # reading the record may wait for a nanny to start another worker
            threading.Thread(target=self._killed, args=(task, exc), name="cloudbutton-dask-lost", daemon=True).start()
            return
        for index, _ in task.calls:
            name = task.job.call_name(index)
            error = RemoteError(f"dask could not run call {name}: {type(exc).__name__}: {exc}", name)
            error.__cause__ = exc
            task.sink.on_lost(task.job, index, error)

    def _lost(self, task: _Task, why: str) -> None:
        for index, _ in task.calls:
            name = task.job.call_name(index)
            task.sink.on_lost(task.job, index, WorkerLostError(f"call {name} was lost: {why}", name))

    def _killed(self, task: _Task, exc: KilledWorker) -> None:
        """Dask gave up on ``task``: a worker died while it held the task (running, or only queued there)."""
        last = exc.last_worker
        address = getattr(last, "address", last)
        if not self._closed:
            position = self._record(getattr(last, "local_directory", None), getattr(last, "nanny", None), task)
            if position is not None:
                self._died(task, position, address)
                return
        # no record: tell the crashing call apart by running the calls again (see the module's docstring)
        if len(task.calls) > 1 and not self._closed:
            self._submit_tasks(task.job, task.worker_job, [[call] for call in task.calls], task.sink)
        elif not task.suspect and not self._closed:
            with self._lock:
                self._suspects.append(task)
            self._next_suspect()
        else:
            self._lost(
                task,
                f"the dask worker running it died, also when it ran alone ({exc.allowed_failures + 1} workers died"
                f" while running it, the last was {address})",
            )

    def _died(self, task: _Task, position: int, worker: str | None) -> None:
        """The ``worker`` running ``task`` died while it ran its call at ``position`` (-1: none): that
        call is lost; the others go again (those that had finished too: their results were lost with it)."""
        calls = task.calls
        lost = calls[position][0] if 0 <= position < len(calls) else None
        rest = [call for call in calls if call[0] != lost]
        if rest:
            self._submit_tasks(task.job, task.worker_job, [rest], task.sink)
        if lost is not None:
            name = task.job.call_name(lost)
            where = f" ({worker})" if worker else ""
            error = WorkerLostError(f"call {name} was lost: the dask worker process running it{where} died", name)
            task.sink.on_lost(task.job, lost, error)

    def _record(self, directory: str | None, nanny: str | None, task: _Task) -> int | None:
        """Take the progress record of ``task`` from the worker whose local directory was ``directory``
        (see ``_record_path``): the position of the call it was running, -1 if none; None if it cannot
        be read (no nanny on another cluster, or none back within NANNY_WAIT seconds)."""
        if directory is None or task.future is None:
            return None
        if self.cluster is not None:  # our workers' files are ours
            return _take_record(directory, task.future.key)
        if nanny is None:
            return None
        deadline = time.monotonic() + NANNY_WAIT
        while not self._closed:
            try:
                workers = self._scheduler_workers()
                workers = [address for address, info in workers.items() if info.get("nanny") == nanny]
                if workers:  # the nanny is back with a new worker (or the worker lives on)
                    taken = self.client.run(_take_record, directory, task.future.key, workers=workers[:1], nanny=True)
                    return next(iter(taken.values()))
            except Exception:
                logger.debug("reading a dask task's record through nanny %s failed", nanny, exc_info=True)
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return None

    def _scheduler_workers(self) -> dict[str, dict]:
        try:
            return self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # an older distributed: every worker, always
            return self.client.scheduler_info()["workers"]

    def _ran_again(self, key: str, earlier: _Task) -> None:
        """Dask runs task ``key`` again (a cluster whose allowed-failures is not 0) on another host, its
        earlier run's worker having died: if that run was running a call, stop this run and go on as if
        Dask had given up on the task (on the same host, the run itself finds the record)."""
        position = self._record(earlier.directory, earlier.nanny, earlier)
        if position is None or position < 0:  # no call was running: a finished task's result was lost
            return
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            task.future.cancel()
            self._died(task, position, earlier.worker)

    # --- suspects: calls lost with their worker, run again one at a time ----------------------

    def _next_suspect(self) -> None:
        with self._lock:
            if self._suspect_running or not self._suspects or self._closed:
                return
            task = self._suspects.popleft()
            self._suspect_running = True
        self._submit_tasks(task.job, task.worker_job, [task.calls], task.sink, suspect=True)

    def _suspect_done(self) -> None:
        with self._lock:
            self._suspect_running = False
        self._next_suspect()

    # --- timeouts ---------------------------------------------------------------------------

    def _start_timer(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._enforce_timeouts, name="cloudbutton-dask-timeouts", daemon=True
                )
                self._timer.start()

    def _on_started(self, event) -> None:
        """A task started (runs on the client's event loop: must be quick)."""
        _, msg = event
        with self._lock:
            task = self._tasks.get(msg["key"])
            if task is None:
                return
            earlier = dataclasses.replace(task) if task.started is not None else None
            # a task run again after its worker died starts a new clock
            task.started, task.worker, task.pid = time.monotonic(), msg["worker"], msg.get("pid")
            task.nanny, task.directory = msg.get("nanny"), msg.get("directory")
            if task.job.timeout is not None:
                deadline = task.started + task.job.timeout
                heapq.heappush(self._deadlines, (deadline, next(self._seq), msg["key"], task.started))
                self._wakeup.notify()
        if earlier is not None:
            threading.Thread(target=self._ran_again, args=(msg["key"], earlier), daemon=True).start()

    def _enforce_timeouts(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                expired = []
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, key, started = heapq.heappop(self._deadlines)
                    task = self._tasks.get(key)
                    if task is not None and task.started == started:
                        del self._tasks[key]
                        expired.append(task)
                if not expired:
                    self._wakeup.wait(self._deadlines[0][0] - now if self._deadlines else None)
                    continue
            for task in expired:
                self._timed_out(task)

    def _timed_out(self, task: _Task) -> None:
        index = task.calls[0][0]
        name = task.job.call_name(index)
        error = CallTimeoutError(
            f"call {name} exceeded its timeout of {task.job.timeout} s; its dask task was cancelled and its worker"
            f" {task.worker} restarted",
            name,
        )
        try:
            task.sink.on_lost(task.job, index, error)
        except Exception:
            logger.exception("cloudbutton: reporting the timeout of %s failed", name)
        # a running task cannot be interrupted: stop its worker process (the nanny starts another)
        restart = threading.Thread(target=self._stop_task, args=(task,), name="cloudbutton-dask-restart", daemon=True)
        with self._lock:
            self._restarts = [t for t in self._restarts if t.is_alive()] + [restart]
        restart.start()

    def _stop_task(self, task: _Task) -> None:
        """Cancel the task, then stop its worker: on a cluster we started, kill -9 the worker process
        (its nanny starts another at once); elsewhere ask the scheduler to restart it (which waits
        a few seconds for the process to close by itself)."""
        try:
            task.future.cancel()
            self._wait_forgotten(task.future.key)
            self._record(task.directory, task.nanny, task)  # removes it: no one will need it
            if self.cluster is not None and task.pid is not None:
                _kill_tree(task.pid)
            else:
                self.client.restart_workers([task.worker], raise_for_error=False)
        except ProcessLookupError:
            pass  # it ended by itself meanwhile
        except Exception:
            if not self._closed:
                logger.warning("cloudbutton: could not restart dask worker %s", task.worker, exc_info=True)
        finally:
            if task.suspect:
                self._suspect_done()

    def _wait_forgotten(self, key: str, limit: float = 5.0) -> None:
        """Wait (a little) until the scheduler has processed the cancellation of ``key``: a worker
        that dies while the scheduler still counts the task as its own makes the scheduler run it
        again on another worker, where no one would stop it."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            states = self.client.sync(self.client.scheduler.get_task_status, keys=[key])
            if states.get(key) not in ("processing", "queued", "waiting", "no-worker"):
                return
            time.sleep(0.005)

    # --- lifetime ---------------------------------------------------------------------------

    def cancel(self) -> list[tuple[JobSpec, int]]:
        """Cancel this backend's unfinished Dask tasks (a running one runs on, its result unused);
        return the calls dropped, as ``(job, index)``. They are not reported to their sinks."""
        with self._lock:
            running = list(self._tasks.values())
            self._tasks.clear()
            suspects = list(self._suspects)
            self._suspects.clear()
            self._suspect_running = False
            self._abandoned = self._abandoned or bool(running)
        futures = [t.future for t in running if t.future is not None]
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:
                logger.debug("cancelling dask futures failed", exc_info=True)
        return [(t.job, index) for t in running + suspects for index, _ in t.calls]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _open_backends.discard(self)
            tasks = list(self._tasks.values()) + list(self._suspects)
            self._tasks.clear()
            self._suspects.clear()
            self._wakeup.notify_all()
            restarts = list(self._restarts)
        for task in tasks:  # not waited for: they will not finish now
            for index, _ in task.calls:
                name = task.job.call_name(index)
                task.sink.on_lost(
                    task.job, index, CallError(f"call {name} did not finish: the dask backend was closed", name)
                )
        for thread in restarts:
            thread.join(timeout=30)
        if self._timer is not None:
            self._timer.join(timeout=5)
        for _ in range(FETCHERS):
            self._finished.put(None)
        try:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(START_TOPIC)
            self.client.close()
        finally:
            if self.cluster is not None:
                if tasks or self._abandoned:
                    self._stop_workers_now()
                self.cluster.close()
                self._scratch.cleanup()  # with the records of tasks cut short

    def _stop_workers_now(self) -> None:
        """Our cluster's workers still run calls whose results no one wants: stop them at once (a
        nanny closing its worker would give a busy one 4 s to finish) and their nannies with them."""
        for nanny in list(self.cluster.workers.values()):
            with contextlib.suppress(Exception):
                nanny.close_gracefully()  # when its worker process ends, the nanny closes instead of restarting it
                if nanny.pid:
                    os.kill(nanny.pid, signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<DaskBackend {self.address}{' (LocalCluster)' if self.cluster is not None else ''}>"
