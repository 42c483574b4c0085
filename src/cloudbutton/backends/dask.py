"""The ``dask`` backend: call batches as tasks on a Dask cluster.

With ``dask_address`` set, calls go to that scheduler; without it, the backend starts a
``LocalCluster`` of single-threaded worker processes on 127.0.0.1 and stops it in ``close()``.
Each batch of calls is one Dask task running ``cloudbutton.worker.run_batch`` (the one worker
runtime); Dask does the scheduling, and results come back through the futures' done callbacks
(which Dask runs on its own callback thread, never on the client's event loop).

Failures:

- A worker process that dies while running a batch (Dask raises ``KilledWorker`` once the
  scheduler's ``allowed-failures`` are used up) makes the backend resubmit that batch one call per
  task, so the calls that do not crash still complete; a single call whose task is
  ``KilledWorker`` is reported as ``WorkerLostError`` naming the call. A cluster we start allows one
  retry per task (``allowed-failures = 1``), so a crashing call costs a few worker restarts, not
  minutes; an external cluster keeps its own setting (Dask's default is 3).
- When a job has a ``timeout``, each call is its own task and, when it starts running, the task
  reports the start through a Dask event (``Worker.log_event`` -> ``Client.subscribe_topic``). The
  clock of a call starts when the client receives that event, so time spent queued never counts,
  and the clocks of client and workers never need to agree. A call still running ``timeout``
  seconds later is reported as ``CallTimeoutError``, its task is cancelled and its worker restarted
  (``Client.restart_workers``; a worker without a nanny is only removed from the cluster).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import heapq
import itertools
import logging
import os
import signal
import threading
import time
import uuid

import dask
import distributed
from dask.utils import parse_timedelta
from distributed import Client, KilledWorker, LocalCluster

from ..errors import BackendError, CallError, CallTimeoutError, RemoteError, WorkerLostError
from ..job import JobSpec, next_batch_size
from ..worker import run_batch
from . import Backend, ResultSink

logger = logging.getLogger(__name__)

LOCAL_CLUSTER_CONFIG = {
    # a task whose worker dies twice fails with KilledWorker at once (Dask's default waits for four
    # deaths); tasks that were only queued on a dying worker still get their second chance
    "distributed.scheduler.allowed-failures": 1,
    # one task at a time per single-threaded worker: a crash or a restart takes no queued task with it
    "distributed.scheduler.worker-saturation": 1.0,
}
"""Dask settings of the LocalCluster the backend starts itself."""


def run_calls(calls: list[tuple[int, bytes]], job: JobSpec, topic: str | None = None) -> list:
    """The Dask task: runs a batch on a worker through the one worker runtime. With ``topic``, first
    tells the client (through a Dask event) that the task started and on which worker."""
    worker = distributed.get_worker()
    if topic is not None:
        msg = {"key": str(worker.get_current_task()), "worker": worker.address, "pid": os.getpid()}
        worker.log_event(topic, msg)
    return run_batch(job, calls, worker_id=f"dask:{worker.address}")


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


class DaskBackend(Backend):
    def __init__(self, config):
        super().__init__(config)
        self.cluster: LocalCluster | None = None
        self.address = config.dask_address
        if self.address:
            timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
            try:
                self.client = Client(self.address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise BackendError(
                    f"cannot connect to the dask scheduler at {self.address} (dask_address): {e}."
                    " Is it running and reachable? The time allowed is dask's distributed.comm.timeouts.connect"
                    f" ({timeout:g} s)"
                ) from e
        else:
            n_workers = config.max_workers or os.cpu_count() or 1
            try:
                with dask.config.set(LOCAL_CLUSTER_CONFIG):
                    self.cluster = LocalCluster(
                        n_workers=n_workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                self.client = Client(self.cluster, set_as_default=False)
            except Exception as e:
                if self.cluster is not None:
                    self.cluster.close()
                raise BackendError(f"cannot start a dask LocalCluster with {n_workers} workers: {e!r}") from e
            self.address = self.cluster.scheduler_address
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}  # by dask key: tasks whose outcome is not reported yet
        self._worker_jobs: dict[str, JobSpec] = {}  # by job key: the JobSpec sent to workers
        self._closed = False
        self._topic: str | None = None  # of the "task started" events, once a job has a timeout
        self._deadlines: list[tuple[float, int, str, float]] = []  # heap of (deadline, seq, key, started)
        self._seq = itertools.count()
        self._wakeup = threading.Condition(self._lock)
        self._timer: threading.Thread | None = None
        self._restarts: list[threading.Thread] = []
        self._fetchers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="cloudbutton-dask-results")

    @property
    def workers(self) -> int:
        """Worker threads in the cluster (at least 1, so batches can be planned while it scales up)."""
        try:
            threads = self.client.scheduler_info(n_workers=0)["total_threads"]
        except (TypeError, KeyError):  # distributed before 2025
            threads = sum(self.client.nthreads().values())
        return max(1, threads)

    # --- submitting -------------------------------------------------------------------------

    def submit(self, job: JobSpec, calls: list[tuple[int, bytes]], sink: ResultSink) -> None:
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

    def _submit_tasks(self, job: JobSpec, worker_job: JobSpec, batches: list[list], sink: ResultSink) -> None:
        topic = self._start_events() if job.timeout is not None else None
        tasks = {f"run_calls-{uuid.uuid4().hex}": _Task(job, worker_job, batch, sink) for batch in batches}
        with self._lock:  # known before they can start: their start events find them
            self._tasks.update(tasks)
        try:
            futures = self.client.map(run_calls, batches, job=worker_job, topic=topic, key=list(tasks), pure=False)
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
            for index, _ in task.calls:
                name = task.job.call_name(index)
                lost = CallError(f"call {name} could not be sent to the dask scheduler at {self.address}: {error!r}", name)
                lost.__cause__ = error
                task.sink.on_lost(task.job, index, lost)

    # --- outcomes ---------------------------------------------------------------------------

    def _on_done(self, future: distributed.Future) -> None:
        """Runs on Dask's one callback thread (shared by every future of the process): hand the
        fetching of the outcome to our own threads, since a result whose worker just died is
        computed again and fetching it can take a while."""
        self._fetchers.submit(self._settle, future)

    def _settle(self, future: distributed.Future) -> None:
        with self._lock:
            task = self._tasks.pop(future.key, None)
        if task is None:
            return  # it timed out, or it was cancelled by cancel()/close()
        try:
            try:
                results = future.result()
            except (asyncio.CancelledError, concurrent.futures.CancelledError):
                self._lost(task, "its dask task was cancelled (by another client, or the scheduler went away)")
            except Exception as e:
                self._failed(task, e)
            else:
                for result in results:
                    task.sink.on_result(task.job, result)
        except Exception:
            logger.exception("cloudbutton: delivering the outcome of dask task %s failed", future.key)

    def _failed(self, task: _Task, exc: BaseException) -> None:
        if isinstance(exc, KilledWorker):
            if len(task.calls) > 1 and not self._closed:
                # a call of this batch crashes its worker: run them one per task so the others complete
                self._submit_tasks(task.job, task.worker_job, [[call] for call in task.calls], task.sink)
                return
            last = getattr(exc.last_worker, "address", exc.last_worker)
            self._lost(
                task,
                f"the dask worker running it died ({exc.allowed_failures + 1} workers died while running it,"
                f" the last was {last})",
            )
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

    # --- timeouts ---------------------------------------------------------------------------

    def _start_events(self) -> str:
        """Subscribe (once) to the events in which tasks report their start; return the topic."""
        with self._lock:
            if self._topic is None:
                self._topic = f"cloudbutton-started-{uuid.uuid4().hex}"
                self.client.subscribe_topic(self._topic, self._on_started)
                self._timer = threading.Thread(target=self._enforce_timeouts, name="cloudbutton-dask-timeouts",
                                               daemon=True)
                self._timer.start()
            return self._topic

    def _on_started(self, event) -> None:
        """A task started (runs on the client's event loop: must be quick)."""
        _, msg = event
        with self._lock:
            task = self._tasks.get(msg["key"])
            if task is None or task.job.timeout is None:
                return
            # a task run again after its worker died starts a new clock
            task.started, task.worker, task.pid = time.monotonic(), msg["worker"], msg.get("pid")
            deadline = task.started + task.job.timeout
            heapq.heappush(self._deadlines, (deadline, next(self._seq), msg["key"], task.started))
            self._wakeup.notify()

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
            if self.cluster is not None and task.pid is not None:
                os.kill(task.pid, signal.SIGKILL)
            else:
                self.client.restart_workers([task.worker], raise_for_error=False)
        except ProcessLookupError:
            pass  # it ended by itself meanwhile
        except Exception:
            if not self._closed:
                logger.warning("cloudbutton: could not restart dask worker %s", task.worker, exc_info=True)

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
            tasks = list(self._tasks.values())
            self._tasks.clear()
        futures = [t.future for t in tasks if t.future is not None]
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:
                logger.debug("cancelling dask futures failed", exc_info=True)
        return [(t.job, index) for t in tasks for index, _ in t.calls]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tasks = list(self._tasks.values())
            self._tasks.clear()
            self._wakeup.notify_all()
            restarts = list(self._restarts)
        for task in tasks:  # not waited for: they will not finish now
            for index, _ in task.calls:
                name = task.job.call_name(index)
                task.sink.on_lost(task.job, index, CallError(f"call {name} did not finish: the dask backend was closed",
                                                            name))
        for thread in restarts:
            thread.join(timeout=30)
        if self._timer is not None:
            self._timer.join(timeout=5)
        self._fetchers.shutdown(wait=False, cancel_futures=True)
        try:
            if self._topic is not None:
                self.client.unsubscribe_topic(self._topic)
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __repr__(self) -> str:
        return f"<DaskBackend {self.address}{' (LocalCluster)' if self.cluster is not None else ''}>"
