"""Every failure a user can hit, provoked for real on the local backend."""

import concurrent.futures as cf
import ctypes
import os
import signal
import time
from pathlib import Path

import pytest
from calls import CustomError, exit_on, fail_on, sleep_for, until, wait_for

from cloudbutton import (
    CallTimeoutError,
    FunctionExecutor,
    MemoryLimitError,
    WaitTimeoutError,
    WorkerLostError,
)


def segfault_on(x, bad):
    if x == bad:
        ctypes.string_at(0)
    return x


def wait_to_be_killed(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


def allocate(mb):
    block = bytearray(mb * 2**20)
    return len(block)


def crash_first_attempts(marker_dir, x, crashes):
    """Crashes its worker on the first ``crashes`` runs of call ``x``; counts every run."""
    runs = Path(marker_dir) / f"runs-{x}"
    with runs.open("a") as f:
        f.write("run\n")
    if len(runs.read_text().splitlines()) <= crashes:
        os._exit(1)
    return x


def test_exception_is_reraised_with_its_type_and_remote_traceback(fexec):
    futures = fexec.map(fail_on, [(i, 3) for i in range(6)])
    with pytest.raises(CustomError, match="bad value 3") as info:
        fexec.get_result(futures)
    note = "\n".join(info.value.__notes__)
    assert "Remote traceback" in note and "fail_on" in note and "00003" in note


def test_throw_except_false_puts_the_exception_in_place(fexec):
    results = fexec.get_result(fexec.map(fail_on, [(i, 1) for i in range(3)]), throw_except=False)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], CustomError)


@pytest.mark.parametrize("crash", [exit_on, segfault_on], ids=["os._exit", "segfault"])
def test_a_crashing_call_loses_only_itself(fexec, crash):
    futures = fexec.map(crash, [(i, 5) for i in range(20)], chunksize=10)
    results = fexec.get_result(futures, throw_except=False)
    assert isinstance(results[5], WorkerLostError)
    assert "00005" in str(results[5]) and results[5].call.endswith(f"00005 ({crash.__name__})")
    assert results[:5] + results[6:] == [i for i in range(20) if i != 5]
    # the pool replaced the worker and keeps working
    assert fexec.get_result(fexec.map(abs, range(-4, 0))) == [4, 3, 2, 1]


def test_segfault_message_names_the_signal(fexec):
    with pytest.raises(WorkerLostError, match="SIGSEGV"):
        fexec.get_result(fexec.call_async(segfault_on, (1, 1)))


def test_exit_message_names_the_exit_code(fexec):
    with pytest.raises(WorkerLostError, match="exited with code 3"):
        fexec.get_result(fexec.call_async(exit_on, (1, 1)))


def test_kill_9_from_outside(fexec, tmp_path):
    pid_file = tmp_path / "pid"
    future = fexec.call_async(wait_to_be_killed, str(pid_file))
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.01)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="SIGKILL"):
        fexec.get_result(future, timeout=30)
    assert fexec.get_result(fexec.map(abs, [-1, -2])) == [1, 2]


def test_retries_rerun_a_lost_call_and_deliver_it_once(fexec, tmp_path):
    futures = fexec.map(crash_first_attempts, [(str(tmp_path), i, 2 if i == 3 else 0) for i in range(8)],
                        retries=2, chunksize=4)
    assert fexec.get_result(futures) == list(range(8))
    assert futures[3].attempts == 3
    assert len((tmp_path / "runs-3").read_text().splitlines()) == 3  # the crashing call is blamed exactly
    # a call that finished just before its worker died may run again (its result still arrives once)
    assert all(f.attempts == 1 and (tmp_path / f"runs-{i}").exists() for i, f in enumerate(futures) if i != 3)


def test_retries_exhausted_raise_worker_lost(fexec, tmp_path):
    future = fexec.call_async(crash_first_attempts, (str(tmp_path), 0, 5))
    with pytest.raises(WorkerLostError):
        fexec.get_result(future)
    futures = fexec.map(crash_first_attempts, [(str(tmp_path), 1, 5)], retries=1)
    with pytest.raises(WorkerLostError) as info:
        fexec.get_result(futures)
    assert futures[0].attempts == 2 and "tried 2 times" in "\n".join(info.value.__notes__)


def test_shutdown_cancelling_calls_cancels_a_retry_waiting_for_a_worker(tmp_path, gate):
    fexec = FunctionExecutor(max_workers=1, retries=2)
    crashing = fexec.call_async(crash_first_attempts, (str(tmp_path), 0, 1))
    blocker = fexec.call_async(wait_for, gate)
    until(lambda: crashing.attempts == 2 and blocker.running(), "the retry to wait behind the blocker")
    fexec.shutdown(wait=False, cancel_futures=True)
    assert crashing.cancelled()  # not a success with None: it never ran again
    with pytest.raises(cf.CancelledError):
        crashing.result(timeout=30)
    Path(gate).touch()
    assert blocker.result(timeout=30) is None  # running: not cancelled


def test_call_timeout_stops_the_call_and_replaces_its_worker(fexec):
    futures = fexec.map(sleep_for, [0.0, 30.0, 0.0, 0.0], timeout=1.0, chunksize=4)
    results = fexec.get_result(futures, throw_except=False)
    assert isinstance(results[1], CallTimeoutError) and isinstance(results[1], TimeoutError)
    assert "00001" in str(results[1]) and "1.0 s" in str(results[1])
    assert results[0] == results[2] == results[3] == 0.0
    assert fexec.get_result(fexec.map(abs, [-1, -2])) == [1, 2]


def test_a_timeout_runs_from_a_calls_start_not_from_its_workers_start_up(isolated):
    # the one worker is stopped at 0.05 s; the other calls wait for its replacement, whose start-up
    # takes longer than their timeout: they must still run
    with FunctionExecutor(max_workers=1) as fexec:
        results = fexec.get_result(fexec.map(sleep_for, [30.0, 0.0, 0.0], timeout=0.05), throw_except=False)
    assert isinstance(results[0], CallTimeoutError)
    assert results[1:] == [0.0, 0.0]


def test_get_result_timeout_leaves_the_job_collectable(fexec):
    futures = fexec.map(sleep_for, [1.5, 1.5])
    with pytest.raises(WaitTimeoutError, match="keep running"):
        fexec.get_result(futures, timeout=0.2)
    assert fexec.get_result(futures) == [1.5, 1.5]


def test_runtime_memory_is_enforced_and_reported(fexec):
    futures = fexec.map(allocate, [1, 400, 2], runtime_memory=100)
    results = fexec.get_result(futures, throw_except=False)
    assert results[0] == 2**20 and results[2] == 2 * 2**20
    error = results[1]
    assert isinstance(error, MemoryLimitError) and isinstance(error, MemoryError)
    assert "runtime_memory of 100 MB" in str(error) and "00001" in str(error)
    # without a limit, the same allocation works (the limit was lifted and the worker replaced)
    assert fexec.get_result(fexec.call_async(allocate, 400)) == 400 * 2**20


def test_unpicklable_argument_fails_at_submit_time(fexec):
    import threading

    with pytest.raises(TypeError, match="00001"):
        fexec.map(abs, [1, threading.Lock()])


def test_workers_that_cannot_start_fail_the_calls_instead_of_hanging(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")  # every new interpreter dies at start
    with FunctionExecutor(max_workers=3) as broken:  # a pool of its own: the others stay healthy
        with pytest.raises(WorkerLostError, match="exit as soon as they start"):
            broken.get_result(broken.map(abs, [-1, -2]), timeout=120)
    monkeypatch.delenv("PYTHONHOME")
    with FunctionExecutor(max_workers=3) as healed:  # the next executor gets a working pool
        assert healed.get_result(healed.map(abs, [-1, -2]), timeout=120) == [1, 2]


def test_a_lost_worker_error_carries_the_exit_code(fexec):
    results = fexec.get_result(fexec.map(exit_on, [(0, 0)]), throw_except=False)
    assert isinstance(results[0], WorkerLostError) and results[0].exitcode == 3
    kill = fexec.call_async(lambda: os.kill(os.getpid(), signal.SIGKILL), ())
    assert fexec.get_result(kill, throw_except=False).exitcode == -signal.SIGKILL
