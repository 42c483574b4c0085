"""The ``local`` backend: warm worker processes on this machine.

Workers are started as ``python -m cloudbutton.worker`` (never by forking the caller, and never
re-importing the caller's main module), talk to the caller over a private socket pair, and are
shared by every local executor of the process with the same size, so later jobs start warm. A
worker that dies or overruns a call's timeout is replaced; the calls of its batch that had not
started are given to other workers.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import mmap
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from multiprocessing.connection import Connection, wait
from pathlib import Path

from ..errors import BackendError, CallTimeoutError, WorkerLostError
from ..job import JobSpec, next_batch_size
from ..worker import PROGRESS, Results, read_progress
from . import Backend, ResultSink

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclasses.dataclass(eq=False)
class _Queued:
    """The calls of one submission, and what sizes their batches."""

    job: JobSpec
    calls: collections.deque  # of (index, args bytes), not sent yet
    sink: ResultSink
    in_flight: int = 0  # calls sent whose outcome has not arrived
    seconds_per_call: float | None = None  # measured on the calls that ran


@dataclasses.dataclass
class _Batch:
    queued: _Queued
    calls: list
    done: int = 0  # results received
    number: int = 0  # per worker, to match the worker's progress record

    @property
    def job(self) -> JobSpec:
        return self.queued.job

    @property
    def sink(self) -> ResultSink:
        return self.queued.sink


class _Worker:
    def __init__(self):
        parent_end, child_end = socket.socketpair()
        progress_file = tempfile.TemporaryFile()
        progress_file.truncate(PROGRESS.size)
        self.progress = mmap.mmap(progress_file.fileno(), PROGRESS.size)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        fds = [child_end.fileno(), progress_file.fileno()]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloudbutton.worker", *map(str, fds), str(os.getpid())],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a process group of its own: ending it ends what its calls started
        )
        child_end.close()
        progress_file.close()
        self.sock = parent_end
        self.conn = Connection(os.dup(parent_end.fileno()))  # for sending; receiving reads self.sock
        self._inbox = bytearray()
        self.known_functions: set[str] = set()
        self.batch: _Batch | None = None
        self.batches_sent = 0
        self.retiring = False  # replace it once its batch is done (it hit a memory limit)
        self.aborted = False  # killed on purpose: its death says nothing about the environment
        self.delivered = False

    def send(self, batch: _Batch) -> None:
        job = batch.job
        if job.function_key in self.known_functions:
            job = dataclasses.replace(job, function_bytes=None)
        self.known_functions.add(job.function_key)
        self.batches_sent += 1
        batch.number = self.batches_sent
        self.batch = batch
        self.conn.send_bytes(pickle.dumps((batch.number, job, batch.calls), protocol=pickle.HIGHEST_PROTOCOL))

    def running(self) -> tuple[int | None, float | None]:
        """Position in its batch of the call running and when it started; ``(None, None)`` if the
        batch has not started (a call's timeout runs from its start, not from a worker's start-up)
        or if every call of it ran."""
        if self.batch is None:
            return None, None
        number, position, started = read_progress(self.progress)
        if number != self.batch.number:
            return None, None
        if position >= len(self.batch.calls):
            return None, None
        return position, started

    def deadline(self) -> float | None:
        """When the running call's timeout expires; while the batch has not started (the worker may
        still be starting up), a moment from now, to look again."""
        if self.batch is None or self.batch.job.timeout is None:
            return None
        number, position, started = read_progress(self.progress)
        if number != self.batch.number:
            return time.monotonic() + 0.01
        return None if position >= len(self.batch.calls) else started + self.batch.job.timeout

    def receive(self) -> tuple[list[bytes], bool]:
        """The messages that have arrived in full, and whether the worker has closed its end.

        Reads everything available at once (``Connection.recv_bytes`` would take two system calls
        per message, and workers send one message per call)."""
        eof = False
        try:
            chunk = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)  # 1 MiB costs ~20 us to allocate, 64 KiB ~2 us
            eof = not chunk
            self._inbox += chunk
        except BlockingIOError:
            pass
        except OSError:
            eof = True
        messages, buf, pos = [], self._inbox, 0
        while len(buf) - pos >= 4:  # the framing of Connection.send_bytes
            (size,), head = struct.unpack_from("!i", buf, pos), 4
            if size == -1:
                if len(buf) - pos < 12:
                    break
                (size,), head = struct.unpack_from("!Q", buf, pos + 4), 12
            if len(buf) - pos - head < size:
                break
            messages.append(bytes(buf[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return messages, eof

    def close(self) -> None:
        self.conn.close()
        self.sock.close()

    def exit_code(self) -> int:
        """The worker's exit code (-N if signal N killed it); waits a little for it to exit."""
        return self.end(timeout=5)

    def kill(self) -> None:
        """Kill the worker and every process its calls started (its process group), as a serverless
        platform ends a container. Only while the worker is not reaped: until then no other process
        can get its pid, so the group is surely ours."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def end(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the worker to exit, then kill what is left of its group (the
        worker too, if it still runs) and return its exit code."""
        if self.proc.returncode is None:
            deadline = time.monotonic() + timeout
            while not _exited(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.kill()
        return self.proc.wait()

    def exit_reason(self) -> str:
        code = self.exit_code()
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


class WorkerPool:
    """A fixed number of warm worker processes and the thread that feeds them."""

    def __init__(self, size: int):
        self.size = size
        self.owner_pid = os.getpid()  # a forked child has neither its workers nor its thread
        self._queue: collections.deque[_Queued] = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self.broken = False  # its dispatcher failed: calls submitted from now on go to a new pool
        self._start_failures = 0
        self._wanted = size  # grow() raises it; the dispatcher thread starts the workers
        self._aborting: set[str] = set()  # keys of jobs whose running calls abort() stops
        self._workers = [_Worker() for _ in range(size)]
        self._thread = threading.Thread(target=self._run, name="cloudbutton-local-pool", daemon=True)
        self._thread.start()

    def submit(self, job: JobSpec, calls, sink: ResultSink) -> None:
        with self._lock:
            self._queue.append(_Queued(job, collections.deque(calls), sink))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the dispatcher has wake-ups pending already

    def cancel(self, job_keys: set[str]) -> list[tuple[JobSpec, int]]:
        """Drop the queued (not yet running) calls of these jobs; return them."""
        dropped = []
        with self._lock:
            for queued in [q for q in self._queue if q.job.key in job_keys]:
                self._queue.remove(queued)
                dropped += [(queued.job, index) for index, _ in queued.calls]
                queued.calls.clear()  # a batch of it coming back from a dead worker must not bring these back
        return dropped

    def abort(self, job_keys: set[str]) -> None:
        """Kill the workers running calls of these jobs (``Pool.terminate()``), in the dispatcher thread
        (which knows what each worker runs), and replace them. Their calls do not run again: their
        futures are cancelled already."""
        with self._lock:
            self._aborting |= job_keys
        self._wake()

    def grow(self, size: int) -> None:
        """Have at least ``size`` workers from now on."""
        with self._lock:
            self._wanted = max(self._wanted, size)
        self._wake()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        if self.owner_pid != os.getpid():
            return  # the parent's, copied by a fork: its workers are the parent's to stop
        self._closed = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)  # so that no batch is being sent while we send the stops
        for w in self._workers:
            if w.batch is not None:  # its calls' results are no longer wanted (abandoned, or daemon Processes)
                w.kill()
                continue
            try:
                w.conn.send_bytes(pickle.dumps((0, None, None)))
            except OSError:
                pass
        deadline = time.monotonic() + 2
        for w in self._workers:
            w.end(timeout=max(0.0, deadline - time.monotonic()))
            w.close()

    # --- the dispatcher thread -------------------------------------------------------------

    def _next_batch(self) -> _Batch | None:
        with self._lock:
            while self._queue:
                queued = self._queue[0]
                if not queued.calls:
                    self._queue.popleft()
                    continue
                n = next_batch_size(
                    len(queued.calls), self.size, queued.job.chunksize, queued.seconds_per_call, queued.in_flight
                )
                calls = [queued.calls.popleft() for _ in range(min(n, len(queued.calls)))]
                queued.in_flight += len(calls)
                return _Batch(queued, calls)
        return None

    def _dispatch(self) -> None:
        for w in self._workers:
            while w.batch is None:
                batch = self._next_batch()
                if batch is None:
                    return
                if not self._claim(batch):
                    continue  # every call of it was cancelled meanwhile
                try:
                    w.send(batch)
                except OSError:
                    pass  # it died; its EOF is handled by the loop and the batch goes to another

    @staticmethod
    def _claim(batch: _Batch) -> bool:
        """Tell the sink the batch's calls start; keep those it still wants (not cancelled). False if none."""
        started = getattr(batch.sink, "on_started", None)
        if started is None:
            return True
        wanted = set(started(batch.job, [index for index, _ in batch.calls]))
        if len(wanted) < len(batch.calls):
            batch.queued.in_flight -= len(batch.calls) - len(wanted)
            batch.calls = [call for call in batch.calls if call[0] in wanted]
        return bool(batch.calls)

    def _run(self) -> None:
        try:
            self._loop()
        except BackendError as e:
            self._fail_everything(e)
        except BaseException as e:  # a bug here must fail the calls, not leave callers waiting forever
            self._fail_everything(e)
            raise

    def _fail_everything(self, cause: BaseException) -> None:
        self.broken = True
        with _pools_lock:
            if _pools.get(self.size) is self:
                del _pools[self.size]
        lost = [(q.job, index, q.sink) for q in self._queue for index, _ in q.calls]
        for w in self._workers:
            if w.batch is not None:
                lost += [(w.batch.job, index, w.batch.sink) for index, _ in w.batch.calls[w.batch.done :]]
            w.kill()
        for job, index, sink in lost:
            name = job.call_name(index)
            error = WorkerLostError(f"call {name} was lost: the local worker pool failed: {cause}", name)
            sink.on_lost(job, index, error)

    def _loop(self) -> None:
        while not self._closed:
            while len(self._workers) < self._wanted:
                self._workers.append(_Worker())
                self.size = len(self._workers)
            if self._aborting:
                with self._lock:
                    aborting, self._aborting = self._aborting, set()
                for w in self._workers:
                    if w.batch is not None and w.batch.job.key in aborting:
                        w.aborted = True
                        w.kill()  # its end of the socket closes: the loop replaces it
            self._dispatch()
            timeout = self._until_next_deadline()
            ready = wait([w.sock for w in self._workers] + [self._wake_r], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for w in list(self._workers):
                if w.sock in ready and self._receive(w, dispatch=True) and not self._closed and w in self._workers:
                    self._replace(w, lambda name, _, w=w: WorkerLostError(
                        f"worker {w.proc.pid} running call {name} was lost: {w.exit_reason()}", name, w.exit_code()))
            self._enforce_timeouts()

    def _receive(self, w: _Worker, dispatch: bool = False) -> bool:
        """Deliver what ``w`` sent; return whether it has closed its end (died). With ``dispatch``, a
        worker that finished its batch gets its next one before the results are handed over (settling
        futures takes time the worker need not wait for).

        Workers get one batch at a time: a second one sent ahead would wait behind a long call that
        another worker could have run meanwhile."""
        messages, eof = w.receive()
        deliveries = [self._account(w, pickle.loads(message)) for message in messages]
        if dispatch and w.batch is None:
            self._dispatch()
        for batch, results in deliveries:
            batch.sink.on_results(batch.job, results)
        return eof

    def _account(self, w: _Worker, results: Results) -> tuple[_Batch, Results]:
        """Book the results of one message (a worker groups results of the batch it runs)."""
        w.delivered = True
        self._start_failures = 0
        batch, n = w.batch, len(results.indices)
        batch.done += n
        batch.queued.in_flight -= n
        _, _, started, finished, _, _, _, extra = results.stats
        batch.queued.seconds_per_call = (sum(finished) - sum(started)) / n
        w.retiring = w.retiring or any(extra)  # a call exceeded its memory, or asked for it (retire())
        if batch.done == len(batch.calls):
            w.batch = None
            if w.retiring:
                self._retire(w)
        return batch, results

    def _retire(self, w: _Worker) -> None:
        try:
            w.conn.send_bytes(pickle.dumps((0, None, None)))
        except OSError:
            pass
        w.close()
        w.progress.close()
        self._workers[self._workers.index(w)] = _Worker()
        w.end(timeout=5)

    def _until_next_deadline(self) -> float | None:
        deadlines = [d for d in (w.deadline() for w in self._workers) if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _enforce_timeouts(self) -> None:
        for w in list(self._workers):
            deadline, b = w.deadline(), w.batch
            if deadline is None or time.monotonic() < deadline:
                continue
            if self._receive(w):  # it died by itself; the loop replaces it
                continue
            if w.batch is not b:
                continue  # its batch ended meanwhile
            w.end(timeout=0)
            while w.batch is b and not self._receive(w):  # deliver what it finished before it was stopped
                pass
            # it is dead in any case: replace it now (nothing is reported if its batch ended meanwhile),
            # else the next batch goes to a dead worker and fails with WorkerLostError
            self._replace(w, lambda name, job: CallTimeoutError(
                f"call {name} exceeded its timeout of {job.timeout} s; its worker was stopped", name))

    def _replace(self, w: _Worker, error_for) -> None:
        """Report the running call of a dead worker, requeue the rest of its batch, start another."""
        w.close()
        w.end(timeout=1)  # it closed its socket: it is exiting, so its exit code tells why
        batch = w.batch
        position, _ = w.running()
        w.progress.close()
        if position is None and not w.delivered and not w.aborted:  # it died before running anything
            self._start_failures += 1
            if self._start_failures > 3 * self.size:  # they all do: the environment is broken
                raise BackendError(f"local worker processes exit as soon as they start (last one {w.exit_reason()})")
        self._workers[self._workers.index(w)] = _Worker()
        if batch is None:
            return
        # Calls before the one running may have finished with their results still in the worker:
        # they run again (their results are delivered once). Calls after it never started.
        blamed = position is not None and position >= batch.done
        rest = batch.calls[batch.done : position] + batch.calls[position + 1 :] if blamed else batch.calls[batch.done :]
        batch.queued.in_flight -= len(batch.calls) - batch.done
        if rest:
            with self._lock:
                batch.queued.calls.extendleft(reversed(rest))
                if batch.queued not in self._queue:
                    self._queue.appendleft(batch.queued)
        if blamed:
            index, _ = batch.calls[position]
            batch.sink.on_lost(batch.job, index, error_for(batch.job.call_name(index), batch.job))


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


_pools: dict[int, WorkerPool] = {}
_private_pools: set[WorkerPool] = set()  # of backends that reserved workers: not shared, closed with them
_pools_lock = threading.Lock()


def shared_pool(size: int) -> WorkerPool:
    with _pools_lock:
        if size not in _pools:
            _pools[size] = WorkerPool(size)
        return _pools[size]


def _private_pool(size: int) -> WorkerPool:
    pool = WorkerPool(size)
    with _pools_lock:
        _private_pools.add(pool)
    return pool


def _forget_parent_pools() -> None:
    """In a forked child: the parent's pools, their workers and threads are not the child's; it
    makes its own at first use (reusing the parent's would hang, as no thread of the child feeds them)."""
    global _pools, _private_pools, _pools_lock
    for pool in [*_pools.values(), *_private_pools]:
        for w in pool._workers:
            with contextlib.suppress(OSError):
                w.close()  # the child's copies of the parent's sockets
    _pools, _private_pools, _pools_lock = {}, set(), threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_pools)


@atexit.register
def close_pools() -> None:
    """Stop every warm worker (also run at interpreter exit)."""
    with _pools_lock:
        pools = list(_pools.values()) + list(_private_pools)
        _pools.clear()
        _private_pools.clear()
    for pool in pools:
        pool.close()


WORKER_MEMORY = 20 * 2**20
"""What an idle worker process takes (its resident size is ~17 MB), before its calls use any."""
FDS_PER_WORKER = 3  # its socket, a duplicate for sending, its progress map


def affordable_workers(wanted: int) -> tuple[int, str | None]:
    """How many of ``wanted`` workers this machine can hold, and if fewer, why: idle workers may
    take at most half the memory available (the rest is for their calls), and each needs a few
    file descriptors of this process."""
    fits: list[tuple[int, str]] = []
    available = _available_memory()
    if available is not None:
        n = available // 2 // WORKER_MEMORY
        fits.append((n, f"{wanted} idle workers would take {wanted * WORKER_MEMORY >> 20} MB of the "
                        f"{available >> 20} MB of memory available"))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        n = (soft - 64) // FDS_PER_WORKER
        fits.append((n, f"{wanted} workers would need {wanted * FDS_PER_WORKER} open files, over this"
                        f" process's limit of {soft} (ulimit -n)"))
    n, why = min(fits, default=(wanted, None))
    return (wanted, None) if n >= wanted else (max(n, 1), why)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


class LocalBackend(Backend):
    shares_host = True
    recycles_workers = True

    def __init__(self, config):
        super().__init__(config)
        self.size = config.max_workers or os.cpu_count() or 1
        affordable, why = affordable_workers(self.size)
        if why:
            warnings.warn(f"cloudbutton: max_workers = {self.size} is more than this machine can hold"
                          f" ({why}): using {affordable} local workers", RuntimeWarning, stacklevel=3)
            self.size = affordable
        self._pool: WorkerPool | None = None  # made at first use: reserve() may want one of its own
        self._own_pool = False
        self._lock = threading.Lock()
        self._jobs: set[str] = set()

    @property
    def pool(self) -> WorkerPool:
        """The shared pool of this size (or this backend's own, after ``reserve``); a new one if it broke."""
        with self._lock:
            if self._pool is None or self._pool.broken or self._pool.owner_pid != os.getpid():
                size = self.size if self._pool is None else self._pool.size
                if self._own_pool:
                    with _pools_lock:
                        _private_pools.discard(self._pool)
                    self._pool = _private_pool(size)
                else:
                    self._pool = shared_pool(size)
            return self._pool

    def reserve(self, calls: int) -> None:
        """Let ``calls`` calls run at once, whatever ``max_workers`` says: each running
        ``multiprocessing.Process`` needs a worker of its own, as it may wait for another. Call it
        before submitting anything: the backend moves to a pool of its own, which grows."""
        with self._lock:
            if not self._own_pool:
                self._pool, self._own_pool = _private_pool(max(calls, self.size)), True
            pool = self._pool
        pool.grow(calls)

    def close(self) -> None:
        if self._own_pool and self._pool is not None:
            with _pools_lock:
                _private_pools.discard(self._pool)
            self._pool.close()

    @property
    def workers(self) -> int:
        return self.size if self._pool is None else self._pool.size

    def submit(self, job, calls, sink) -> None:
        self._jobs.add(job.key)
        self.pool.submit(job, calls, sink)

    def cancel(self) -> list[tuple[JobSpec, int]]:
        return [] if self._pool is None else self._pool.cancel(self._jobs)

    def abort(self) -> None:
        """Stop the calls of this backend's jobs that are running (their workers are replaced)."""
        if self._pool is not None:
            self._pool.abort(self._jobs)
