"""The dask backend, on a real LocalCluster (given by address) and on the one an executor starts."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from calls import (  # noqa: E402
    CustomError,
    exit_on,
    fail_on,
    inc,
    process_ended,
    sleep_for,
    start_child_then,
    until,
    wait_for,
)

from cloudbutton import (  # noqa: E402
    BackendError,
    CallTimeoutError,
    FunctionExecutor,
    RemoteError,
    WorkerLostError,
    serialize,
)
from cloudbutton.backends.dask import START_TOPIC, DaskBackend  # noqa: E402
from cloudbutton.config import resolve_config  # noqa: E402
from cloudbutton.job import JobSpec  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _stop_resource_tracker():
    """Dask's nannies start their workers with multiprocessing, which starts its resource tracker
    once per interpreter; it would only stop at exit, so stop it once this module's clusters are."""
    yield
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A LocalCluster of our own, reached by address like any external cluster."""
    # Two settings of the backend's own cluster matter for crash tests on a stock one: it closes, 15 s
    # after a worker left, the nanny of a worker that is restarting at that moment (the cluster would
    # shrink), and its scheduler may try for 30 s to reach a worker that has just died (the backend's
    # own cluster: 10 s; a connection to 127.0.0.1 succeeds at once or never).
    directory = str(tmp_path_factory.mktemp("dask"))  # its files, where the session's are removed
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h", "temporary-directory": directory}):
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP server: not on 8787, maybe taken
        ) as cluster:
            cluster.scheduler.rpc.timeout = 3
            yield cluster


@pytest.fixture(scope="module")
def fexec(cluster):
    with FunctionExecutor(backend="dask", dask_address=cluster.scheduler_address) as executor:
        yield executor


@pytest.fixture(scope="module")
def own():
    """An executor that starts (and stops) its own LocalCluster."""
    with FunctionExecutor(backend="dask", max_workers=2) as executor:
        yield executor


def test_map_returns_results_in_input_order(fexec):
    assert fexec.get_result(fexec.map(inc, range(1000))) == list(range(1, 1001))
    assert fexec.get_result(fexec.call_async(inc, 41)) == 42


def test_batches_keep_order_and_honour_chunksize(fexec):
    calls = [(i, b"") for i in range(1000)]
    batches = fexec.backend._batches(calls, None)
    assert [c for b in batches for c in b] == calls
    assert 1 < len(batches) < 100 and len(batches[0]) >= len(batches[-1])
    assert [len(b) for b in fexec.backend._batches(calls[:25], 10)] == [10, 10, 5]
    futures = fexec.map(inc, range(25), chunksize=10)
    assert fexec.get_result(futures) == list(range(1, 26))


def test_lambdas_closures_and_nested_functions_of_the_test_module(fexec):
    offset = 10

    def add_offset(x):
        return x + offset

    assert fexec.get_result(fexec.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    assert fexec.get_result(fexec.map(add_offset, [1, 2])) == [11, 12]
    assert fexec.get_result(fexec.map(fail_on, [{"x": 1, "bad": 0}])) == [1]


def test_exception_is_reraised_with_its_type_and_remote_traceback(fexec):
    futures = fexec.map(fail_on, [(i, 3) for i in range(6)])
    with pytest.raises(CustomError, match="bad value 3") as info:
        fexec.get_result(futures)
    note = "\n".join(info.value.__notes__)
    assert "Remote traceback" in note and "fail_on" in note and "00003" in note and "dask:" in note


def test_throw_except_false_puts_the_exception_in_place(fexec):
    results = fexec.get_result(fexec.map(fail_on, [(i, 1) for i in range(3)]), throw_except=False)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], CustomError)


def test_stats_are_recorded(fexec, cluster):
    futures = fexec.map(inc, range(20))
    fexec.get_result(futures)
    workers = set(cluster.scheduler_info["workers"])
    for row in fexec.stats(futures):
        assert row["status"] == "ok"
        assert row["worker_id"].removeprefix("dask:") in workers
        assert row["submitted"] <= row["started"] <= row["finished"] <= row["received"]
        assert isinstance(row["cold_start"], bool) and row["args_bytes"] > 0 and row["result_bytes"] > 0


@pytest.mark.parametrize("where", ["by address", "own cluster"])
def test_a_crashing_call_loses_only_itself(request, where):
    executor = request.getfixturevalue("fexec" if where == "by address" else "own")
    futures = executor.map(exit_on, [(i, 5) for i in range(20)], chunksize=10)
    results = executor.get_result(futures, throw_except=False)
    assert isinstance(results[5], WorkerLostError)
    assert "00005" in str(results[5]) and results[5].call.endswith("00005 (exit_on)")
    assert results[:5] + results[6:] == [i for i in range(20) if i != 5]
    assert executor.get_result(executor.map(abs, range(-4, 0))) == [4, 3, 2, 1]


def test_retries_run_a_lost_call_again_and_deliver_it_once(own):
    futures = own.map(exit_on, [(i, 1) for i in range(3)], retries=1)
    results = own.get_result(futures, throw_except=False)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], WorkerLostError) and futures[1].attempts == 2
    assert "tried 2 times" in "\n".join(results[1].__notes__)


def exit_and_count(x, bad, log):
    """``x``, or, if ``x == bad``, a line in the file ``log`` and the end of the worker process."""
    if x == bad:
        with open(log, "a") as f:
            f.write("ran\n")
        os._exit(3)
    return x


@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("where", ["by address", "own cluster"])
def test_a_call_that_kills_its_worker_runs_once_per_attempt(request, tmp_path, where, retries):
    # "by address": a cluster whose allowed-failures is Dask's default (3), so Dask runs the task again itself
    executor = request.getfixturevalue("fexec" if where == "by address" else "own")
    log = tmp_path / "runs"
    futures = executor.map(exit_and_count, [(i, 5, str(log)) for i in range(20)], chunksize=10, retries=retries)
    results = executor.get_result(futures, throw_except=False)
    assert isinstance(results[5], WorkerLostError) and results[5].call.endswith("00005 (exit_and_count)")
    assert results[:5] + results[6:] == [i for i in range(20) if i != 5]
    assert log.read_text().count("ran") == futures[5].attempts == retries + 1


def first_run_or_wait(flag, first_gate, gate):
    """The first time (which makes ``flag``), waits for ``first_gate``; later, waits for ``gate``."""
    if os.path.exists(flag):
        wait_for(gate)
    else:
        open(flag, "w").close()
        wait_for(first_gate)


def test_a_task_dask_runs_again_on_another_host_does_not_run_the_lost_call_again(tmp_path, gate):
    # two workers whose directories differ, as on two hosts: a run of a task on one does not see the
    # record left by a run on the other; and Dask (allowed-failures 3) runs the task again after a death
    workers = {
        name: {
            "cls": distributed.Nanny,
            "options": {"nthreads": 1, "host": "127.0.0.1", "local_directory": str(tmp_path / f"host{name}")},
        }
        for name in range(2)
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    config = {"distributed.deploy.lost-worker-timeout": "1h", "temporary-directory": str(tmp_path)}
    log, flag, first_gate = tmp_path / "runs", str(tmp_path / "flag"), str(tmp_path / "first-gate")
    with (
        dask.config.set(config),
        distributed.SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        FunctionExecutor(backend="dask", dask_address=cluster.scheduler_address) as executor,
    ):
        # one task: its first call returns (in its first run), its second kills the worker
        calls = [(first_run_or_wait, (flag, first_gate, gate)), (exit_and_count, (1, 1, str(log)))]
        futures = executor.map(lambda func, args: func(*args), calls, chunksize=2)
        # the backend sees a run again only after the start report of the first run (a run that ends
        # its worker before its report left the worker is not seen: see the module's docstring)
        until(lambda: executor.backend.client.get_events(START_TOPIC), "the task to report its start")
        open(first_gate, "w").close()
        results = executor.get_result([futures[1]], throw_except=False)
        assert isinstance(results[0], WorkerLostError) and futures[1].attempts == 1

        def cancelled_on_a_worker():
            states = executor.backend.client.run(
                lambda dask_worker: [task.state for task in dask_worker.state.tasks.values()]
            )
            return any("cancelled" in worker_states for worker_states in states.values())

        until(cancelled_on_a_worker, "the run again of the task to be cancelled on its worker")
        open(gate, "w").close()  # the run again stops before its next call, the call lost
        assert executor.get_result(futures, throw_except=False)[0] is None
        assert log.read_text().count("ran") == 1


def test_workers_are_kept_through_repeated_crashes(own):
    # a stock LocalCluster closes the nanny of a worker that is restarting when this timeout expires
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.1s"}):
        for _ in range(2):
            results = own.get_result(own.map(exit_on, [(i, 1) for i in range(4)]), throw_except=False)
            assert isinstance(results[1], WorkerLostError)
            time.sleep(0.2)
    assert len(own.backend.cluster.workers) == 2
    assert own.get_result(own.map(inc, range(4))) == [1, 2, 3, 4]


@pytest.mark.parametrize("where", ["by address", "own cluster"])
def test_call_timeout_stops_the_call(request, where):
    executor = request.getfixturevalue("fexec" if where == "by address" else "own")
    futures = executor.map(sleep_for, [0.0, 30.0, 0.0, 0.0], timeout=1.0)
    results = executor.get_result(futures, throw_except=False)
    assert isinstance(results[1], CallTimeoutError) and isinstance(results[1], TimeoutError)
    assert "00001" in str(results[1]) and "1.0 s" in str(results[1])
    assert results[0] == results[2] == results[3] == 0.0
    assert executor.get_result(executor.map(abs, [-1, -2])) == [1, 2]


def test_time_queued_does_not_count_against_the_timeout(own):
    # 10 calls of 0.4 s on 2 workers take 2 s; each call runs well within its 1.5 s
    futures = own.map(sleep_for, [0.4] * 10, timeout=1.5)
    assert own.get_result(futures) == [0.4] * 10


class _Sink:
    """Collects what a backend reports, for tests that use a backend directly."""

    def __init__(self):
        self.outcomes, self.lock = [], threading.Lock()

    def on_results(self, job, results):
        with self.lock:
            self.outcomes += [(result[0], result) for result in results]

    def on_lost(self, job, index, error):
        with self.lock:
            self.outcomes.append((index, error))

    def wait(self, n):
        deadline = time.monotonic() + 60
        while len(self.outcomes) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # anything reported twice would show up now
        return sorted(self.outcomes, key=lambda outcome: outcome[0])


def _job(func):
    function_bytes = serialize.dumps(func)
    return JobSpec(
        key="test/M000", function_name=func.__name__, function_key=func.__name__, function_bytes=function_bytes
    )


def _args(*args):
    return serialize.dumps((args, {}))


def test_the_backend_reports_every_call_exactly_once(cluster):
    backend = DaskBackend(resolve_config(backend="dask", dask_address=cluster.scheduler_address))
    try:
        sink = _Sink()
        backend.submit(_job(inc), [(i, _args(i)) for i in range(50)], sink)
        outcomes = sink.wait(50)
        assert [index for index, _ in outcomes] == list(range(50))
        assert all(ok for _, (_, ok, _, _) in outcomes)
    finally:
        backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.submit(_job(inc), [(0, _args(0))], _Sink())


class _Unloadable:
    """Pickles, but cannot be unpickled (``int("not a number")`` raises)."""

    def __reduce__(self):
        return int, ("not a number",)


def test_a_task_dask_cannot_run_is_reported_per_call(fexec):
    # the worker cannot even unpack this task's arguments: no call of it starts
    job = _job(inc)
    sink = _Sink()
    batches = [[(0, _args(0)), (1, _Unloadable())], [(2, _args(2))]]
    fexec.backend._submit_tasks(job, job, batches, sink)
    outcomes = sink.wait(3)
    assert [index for index, _ in outcomes] == [0, 1, 2]
    for index, error in outcomes[:2]:
        assert isinstance(error, RemoteError) and f"test/M000/0000{index} (inc)" in str(error)


def test_shutdown_with_cancel_futures_cancels_the_dask_tasks(cluster):
    executor = FunctionExecutor(backend="dask", dask_address=cluster.scheduler_address)
    futures = executor.map(sleep_for, [0.5] * 8, chunksize=1)
    keys = set(executor.backend._tasks)
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures) and any(f.cancelled() for f in futures)
    deadline = time.monotonic() + 30
    while keys & set(cluster.scheduler.tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {key: cluster.scheduler.tasks[key].state for key in keys & set(cluster.scheduler.tasks)}


def test_unreachable_scheduler_is_a_backend_error():
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(BackendError, match=r"tcp://127\.0\.0\.1:1\b"):
            FunctionExecutor(backend="dask", dask_address="tcp://127.0.0.1:1")


def _running(pid):

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_cluster_an_executor_starts_is_stopped():
    with FunctionExecutor(backend="dask", max_workers=1) as executor:
        assert executor.backend.workers == 1
        assert executor.get_result(executor.map(inc, [1, 2])) == [2, 3]
        pids = list(executor.backend.client.run(os.getpid).values())
        cluster = executor.backend.cluster
        directory = os.path.dirname(next(iter(cluster.scheduler_info["workers"].values()))["local_directory"])
    assert cluster.status.name == "closed"
    assert not [pid for pid in pids if _running(pid)]
    assert not os.path.exists(directory)


def test_the_cluster_an_executor_starts_takes_only_its_own_tls_connections(own):
    address = own.backend.address
    assert address.startswith("tls://127.0.0.1:")
    with pytest.raises((OSError, TimeoutError)):  # plain TCP
        distributed.Client(address.replace("tls://", "tcp://"), timeout=2, set_as_default=False)
    with pytest.raises((OSError, TimeoutError)):  # TLS with keys of its own
        distributed.Client(address, security=distributed.Security.temporary(), timeout=2, set_as_default=False)


def test_a_script_without_main_guard_gets_a_clear_error(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            from cloudbutton import FunctionExecutor

            with FunctionExecutor(backend="dask", max_workers=1) as fexec:
                print(fexec.get_result(fexec.map(abs, [-1])))
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
    # the error, not hundreds of lines of distributed's tracebacks from the worker processes
    assert len(proc.stderr.splitlines()) < 30, proc.stderr


def count_lines(obj):
    return obj.data_stream.read().count(b"\n")


def test_map_reduce_over_objects_and_large_payloads_through_storage(cluster, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "log.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    config = {"storage_url": f"file://{tmp_path}", "storage_threshold": 1000}
    with FunctionExecutor(backend="dask", dask_address=cluster.scheduler_address, config=config) as fexec:
        futures = fexec.map_reduce(count_lines, "data/", sum, obj_chunk_number=4)
        assert fexec.get_result(futures) == [1000]
        assert fexec.get_result(fexec.call_async(lambda b: b * 2, b"x" * 5000)) == b"x" * 10000
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["log.txt"]


def test_a_timed_out_call_takes_its_child_processes_with_it(own, tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(CallTimeoutError):
        own.get_result(own.map(start_child_then, [str(pid_file)], timeout=2))
    child = int(pid_file.read_text())
    until(lambda: process_ended(child), f"the call's child process {child} to end with its worker", timeout=10)
