"""cloudbutton.concurrent.ServerlessExecutor: the concurrent.futures.Executor contract, with real workers
(after CPython's test_concurrent_futures)."""

import concurrent.futures as cf
import gc
import os
import signal
import subprocess
import sys
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest
from calls import exit_on, until, wait_for

from cloudbutton import SerializationError, WorkerLostError
from cloudbutton.concurrent import InitializerError, ServerlessExecutor, _Initializer


def mul(x, y):
    return x * y


def raise_on(x, bad):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x



def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def record_pid(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    global INITIALIZED
    INITIALIZED = "yes"


def initialized(_):
    return os.getpid(), INITIALIZED


def failing_initializer():
    raise ValueError("no database")


@pytest.fixture(scope="module")
def executor(isolated):
    with ServerlessExecutor(max_workers=2) as ex:
        yield ex


def test_is_a_concurrent_futures_executor(executor):
    assert isinstance(executor, cf.Executor)


def test_submit_passes_positional_and_keyword_arguments(executor):
    future = executor.submit(mul, 2, y=8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 16


def test_submit_exception_keeps_its_type_and_remote_traceback(executor):
    future = executor.submit(raise_on, 1, 1)
    with pytest.raises(KeyError, match="bad 1") as info:
        future.result(timeout=30)
    assert isinstance(future.exception(), KeyError)
    assert "Remote traceback" in "\n".join(info.value.__notes__)


def test_map_gives_results_in_order_up_to_the_shortest_iterable(executor):
    assert list(executor.map(mul, range(100), range(1000))) == [i * i for i in range(100)]
    assert list(executor.map(mul, [], [])) == []


def test_map_with_chunksize_gives_the_same_results(executor):
    assert list(executor.map(mul, range(50), range(50), chunksize=7)) == [i * i for i in range(50)]
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(mul, [1], [2], chunksize=0)


def test_map_raises_a_calls_exception_when_it_reaches_it(executor):
    results = executor.map(raise_on, range(5), [3] * 5)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="bad 3"):
        next(results)


def test_map_raises_timeout_error_and_cancels_the_rest(executor, gate):
    before = len(executor.executor.futures)
    results = executor.map(wait_for, [gate] * 4, timeout=0.2)
    futures = executor.executor.futures[before:]
    assert len(futures) == 4
    with pytest.raises(TimeoutError):
        next(results)
    # as in the standard library: the calls not started are cancelled, those running run to the end
    assert [f.cancelled() for f in futures] == [False, False, True, True]
    with pytest.raises(StopIteration):
        next(results)
    with open(gate, "w"):
        pass
    assert [f.result(timeout=30) for f in futures[:2]] == [None, None]


def test_futures_work_with_wait_and_as_completed(executor, gate):
    blocked = executor.submit(wait_for, gate, "slow")
    quick = executor.submit(mul, 3, 3)
    done, not_done = cf.wait([blocked, quick], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {blocked}
    with open(gate, "w"):
        pass
    assert {f.result() for f in cf.as_completed([blocked, quick], timeout=30)} == {"slow", 9}


def test_unpicklable_argument_fails_at_submit_time(executor):
    with pytest.raises(SerializationError, match="lock"):
        executor.submit(mul, threading.Lock(), 2)
    with pytest.raises(SerializationError):
        executor.map(mul, [threading.Lock()], [2])


def test_a_worker_that_dies_fails_only_its_call(executor):
    futures = [executor.submit(exit_on, i, 2) for i in range(6)]
    with pytest.raises(WorkerLostError, match="exited with code 3"):
        futures[2].result(timeout=30)
    assert [f.result(timeout=30) for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4, 5]
    assert executor.submit(mul, 2, 2).result(timeout=30) == 4  # still usable


def test_kill_9_inside_a_call_is_a_worker_lost_error(executor):
    with pytest.raises(WorkerLostError, match="SIGKILL"):
        executor.submit(kill_myself).result(timeout=30)
    assert list(executor.map(mul, [1, 2], [3, 4])) == [3, 8]


def test_shutdown_waits_and_then_refuses_new_calls(isolated, gate):
    ex = ServerlessExecutor(max_workers=2)
    futures = [ex.submit(wait_for, gate, i) for i in range(3)]
    with open(gate, "w"):
        pass
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(mul, 1, 1)
    ex.shutdown()  # again: nothing to do


def test_shutdown_without_wait_lets_the_calls_finish(isolated, gate):
    ex = ServerlessExecutor(max_workers=2)
    futures = [ex.submit(wait_for, gate, i) for i in range(3)]
    ex.shutdown(wait=False)
    assert not any(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 1)
    with open(gate, "w"):
        pass
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2]


def test_shutdown_cancel_futures_cancels_what_has_not_started(isolated, gate):
    ex = ServerlessExecutor(max_workers=2)
    futures = [ex.submit(wait_for, gate, i) for i in range(4)]
    until(lambda: futures[0].running() and futures[1].running(), "the first two calls to start")
    ex.shutdown(wait=False, cancel_futures=True)
    assert [f.cancelled() for f in futures] == [False, False, True, True]  # as ProcessPoolExecutor
    with pytest.raises(cf.CancelledError):
        futures[3].result()
    with open(gate, "w"):
        pass
    assert [f.result(timeout=30) for f in futures[:2]] == [0, 1]


def test_context_manager_shuts_down(isolated):
    with ServerlessExecutor(max_workers=2) as ex:
        future = ex.submit(mul, 5, 5)
    assert future.done() and future.result() == 25
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 1)


def test_initializer_runs_once_per_worker_before_its_calls(isolated, tmp_path):
    log = tmp_path / "init-pids"
    with ServerlessExecutor(max_workers=2, initializer=record_pid, initargs=(str(log),)) as ex:
        results = list(ex.map(initialized, range(40)))
    init_pids = log.read_text().split()
    assert len(init_pids) == len(set(init_pids))  # once per worker process
    assert all(value == "yes" for _, value in results)  # and its globals are the ones the calls see
    assert {str(pid) for pid, _ in results} <= set(init_pids)


def test_two_threads_of_one_worker_run_the_initializer_once():
    entered, runs = threading.Event(), []

    def slow_initializer():
        runs.append(threading.get_ident())
        entered.set()
        threading.Event().wait(0.5)  # the other thread arrives meanwhile

    init = _Initializer(slow_initializer, ())
    first = threading.Thread(target=init.ensure)
    first.start()
    assert entered.wait(60)
    second = threading.Thread(target=init.ensure)  # e.g. a second call running in the same worker process
    second.start()
    for thread in (first, second):
        thread.join(60)
        assert not thread.is_alive()
    assert len(runs) == 1


def test_failing_initializer_breaks_the_executor(isolated):
    with ServerlessExecutor(max_workers=2, initializer=failing_initializer) as ex:
        future = ex.submit(mul, 2, 2)
        with pytest.raises(InitializerError, match="failing_initializer raised ValueError: no database") as info:
            future.result(timeout=30)
        assert isinstance(info.value, BrokenProcessPool) and isinstance(info.value, cf.BrokenExecutor)
        with pytest.raises(BrokenProcessPool, match="no longer be used"):
            ex.submit(mul, 2, 2)


def test_bad_arguments_are_refused(isolated):
    with pytest.raises(ValueError, match="max_workers"):
        ServerlessExecutor(max_workers=0)
    with pytest.raises(TypeError, match="initializer"):
        ServerlessExecutor(max_workers=2, initializer=42)


def test_the_interpreter_waits_at_exit_for_calls_of_an_executor_not_shut_down(isolated):
    out = isolated / "written-at-exit"
    script = (
        "import time\n"
        "from cloudbutton.concurrent import ServerlessExecutor\n"
        "def late_write(path):\n"
        "    time.sleep(0.5)\n"
        "    open(path, 'w').write('done')\n"
        f"ServerlessExecutor(max_workers=1).submit(late_write, {str(out)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], timeout=120, check=True, cwd=isolated)
    assert out.read_text() == "done"  # as ProcessPoolExecutor: pending calls finish before the exit


def test_an_executor_dropped_without_shutdown_is_freed_once_its_calls_are_done(isolated):
    refs = []
    for _ in range(3):
        ex = ServerlessExecutor(max_workers=2)
        assert ex.submit(mul, 3, 3).result(timeout=60) == 9
        refs.append(weakref.ref(ex.executor))
        del ex

    def all_freed():
        gc.collect()
        return [r() for r in refs] == [None, None, None]

    until(all_freed, "the dropped executors to be freed")  # each is shut down in a thread of its own first


def keywords(**kwargs):
    return kwargs


def test_keyword_arguments_named_self_and_fn_reach_the_function(executor):
    assert executor.submit(keywords, self=1, fn=2).result(timeout=30) == {"self": 1, "fn": 2}
    with pytest.raises(TypeError):  # fn is positional-only, as in the standard library
        executor.submit(fn=keywords)


class Payload:
    pass


def same(x):
    return x


def test_no_reference_is_kept_to_a_calls_argument_or_result_once_its_future_is_dropped(isolated):
    with ServerlessExecutor(max_workers=2) as ex:
        argument = Payload()
        argument_ref = weakref.ref(argument)
        future = ex.submit(same, argument)
        result_ref = weakref.ref(future.result(timeout=30))
        del argument, future
        gc.collect()
        assert argument_ref() is None
        assert result_ref() is None  # the copy the call sent back
