"""The FunctionExecutor API on the local backend, with real worker processes."""

import concurrent.futures as cf
import os
import subprocess
import sys
import threading
import time

import pytest
from calls import until, wait_for

import cloudbutton
from cloudbutton import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, FunctionExecutor


def inc(x):
    return x + 1


def slow_identity(x, delay=0.0):
    time.sleep(delay)
    return x


def test_map_returns_results_in_input_order(fexec):
    futures = fexec.map(inc, range(1000))
    assert fexec.get_result(futures) == list(range(1, 1001))


def test_get_result_of_one_future_is_a_value(fexec):
    assert fexec.get_result(fexec.call_async(inc, 41)) == 42


def test_get_result_without_futures_collects_what_was_not_collected():
    with FunctionExecutor(max_workers=2) as executor:
        executor.map(inc, [1, 2])
        executor.map(inc, [10])
        assert executor.get_result() == [2, 3, 11]
        executor.call_async(inc, 5)
        assert executor.get_result() == 6  # a single outstanding call gives a single value


def test_futures_are_concurrent_futures(fexec):
    futures = fexec.map(slow_identity, [(i, 0.01 * (5 - i)) for i in range(5)])
    assert all(isinstance(f, cf.Future) for f in futures)
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == list(range(5))
    done, not_done = cf.wait(futures, timeout=30)
    assert len(done) == 5 and not not_done
    assert futures[2].result(timeout=5) == 2 and futures[2].exception() is None and futures[2].done()


def test_done_callbacks_run_once_per_future(fexec):
    seen = []
    lock = threading.Lock()

    def record(future):
        with lock:
            seen.append(future.call_index)

    futures = fexec.map(inc, range(20))
    for f in futures:
        f.add_done_callback(record)
    fexec.wait(futures)
    deadline = time.monotonic() + 10
    while len(seen) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == list(range(20))


def test_wait_any_completed_returns_before_slow_calls(fexec):
    futures = fexec.map(slow_identity, [(0, 0.0), (1, 3.0)])
    done, not_done = fexec.wait(futures, return_when=ANY_COMPLETED)
    assert futures[0] in done and futures[1] in not_done
    done, not_done = fexec.wait(futures, return_when=ALL_COMPLETED)
    assert len(done) == 2 and not not_done


def test_wait_always_returns_at_once(fexec):
    futures = fexec.map(slow_identity, [(0, 2.0)])
    done, not_done = fexec.wait(futures, return_when=ALWAYS)
    assert not done and not_done == futures
    assert fexec.get_result(futures) == [0]


def test_wait_with_timeout_returns_what_is_done(fexec):
    futures = fexec.map(slow_identity, [(0, 0.0), (1, 3.0)])
    done, not_done = fexec.wait(futures, timeout=1.0)
    assert done == [futures[0]] and not_done == [futures[1]]
    assert fexec.get_result(futures) == [0, 1]


def test_stats_record_each_call(fexec):
    futures = fexec.map(inc, range(10))
    fexec.get_result(futures)
    rows = fexec.stats(futures)
    assert [r["call"] for r in rows] == [f"{i:05d}" for i in range(10)]
    for row in rows:
        assert row["status"] == "ok" and row["function"] == "inc"
        assert row["submitted"] <= row["started"] <= row["finished"] <= row["received"]
        assert row["worker_id"].startswith("local:")
        assert row["peak_rss"] > 0 and row["args_bytes"] > 0 and row["result_bytes"] > 0
        assert isinstance(row["cold_start"], bool)
    frame = fexec.job_summary(futures)
    assert list(frame["call"]) == [r["call"] for r in rows]


def test_workers_stay_warm_across_executors():
    with FunctionExecutor(max_workers=2) as first:
        first.get_result(first.map(inc, range(4)))
    with FunctionExecutor(max_workers=2) as second:
        futures = second.map(os.getpid, [()] * 4)
        pids = set(second.get_result(futures))
        assert not any(f.stats["cold_start"] for f in futures)
    assert pids <= set(second.backend.pool.worker_pids())


def test_calls_run_in_parallel_on_separate_processes(fexec):
    pids = fexec.get_result(fexec.map(slow_identity, [(None, 0.3)] * 4))
    assert pids == [None] * 4
    pids = set(fexec.get_result(fexec.map(lambda _: (time.sleep(0.3), os.getpid())[1], range(4))))
    assert len(pids) == 2 and os.getpid() not in pids


def test_workers_use_the_callers_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FunctionExecutor(max_workers=2) as executor:
        assert executor.get_result(executor.call_async(os.getcwd, ())) == str(tmp_path)


def test_map_after_shutdown_is_refused():
    executor = FunctionExecutor(max_workers=2)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.map(inc, [1])


def test_a_cancelled_call_wakes_whoever_waits_for_it(fexec, gate):
    futures = fexec.map(wait_for, [gate] * 4)  # two run (one per worker), two wait for a worker
    assert futures[2].cancel() and futures[2].cancelled()
    assert cf.wait([futures[2]], timeout=30).done == {futures[2]}
    assert list(cf.as_completed([futures[2]], timeout=30)) == [futures[2]]
    # cancelled from another thread while a wait runs: the wait returns with it
    threading.Timer(0.2, futures[3].cancel).start()
    done, _ = fexec.wait([futures[0], futures[3]], return_when=ANY_COMPLETED, timeout=30)
    assert done == [futures[3]]
    assert futures[0].running() and not futures[0].cancel()  # as in concurrent.futures
    with open(gate, "w"):
        pass
    assert fexec.get_result(futures[:2], timeout=30) == [None, None]


def touch_then_wait(path, gate=None):
    open(path, "w").close()
    if gate is not None:
        wait_for(gate)


def test_a_call_cancelled_before_it_starts_never_runs(tmp_path, gate):
    paths = [str(tmp_path / f"ran-{i}") for i in range(3)]
    with FunctionExecutor(max_workers=1) as fexec:
        futures = fexec.map(touch_then_wait, [(paths[0], gate), (paths[1],), (paths[2],)], chunksize=1)
        until(lambda: futures[0].running(), "the first call to start")
        assert futures[2].cancel() and not futures[0].cancel()
        with open(gate, "w"):
            pass
        assert fexec.get_result(futures[:2], timeout=30) == [None, None]
    assert sorted(os.listdir(tmp_path)) == ["gate", "ran-0", "ran-1"]


def test_shutdown_cancels_queued_calls_on_error():
    with pytest.raises(KeyError):
        with FunctionExecutor(max_workers=2, chunksize=1) as executor:
            futures = executor.map(slow_identity, [(i, 0.2) for i in range(40)])
            raise KeyError("stop")
    assert any(f.cancelled() for f in futures)
    results = cloudbutton.get_result([f for f in futures if not f.cancelled()], timeout=30)
    assert results == [i for i, f in enumerate(futures) if not f.cancelled()]


def test_progress_bar_is_written_to_stderr(fexec, capsys):
    fexec.get_result(fexec.map(slow_identity, [(i, 0.05) for i in range(10)]), show_progressbar=True)
    assert "10/10 calls" in capsys.readouterr().err


def test_clean_forgets_finished_calls(fexec):
    fexec.get_result(fexec.map(inc, range(3)))
    fexec.clean()
    assert fexec.futures == [] and fexec.stats() == []


def test_a_job_without_storage_does_not_import_fsspec(isolated):
    # fsspec takes longer to import than the rest of cloudbutton: only storage work may import it
    script = (
        "import sys, cloudbutton\n"
        "with cloudbutton.FunctionExecutor(max_workers=1) as fexec:\n"
        "    assert fexec.get_result(fexec.map(abs, [-1, -2])) == [1, 2]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fsspec'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
