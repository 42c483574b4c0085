"""cloudbutton.multiprocessing.Pool with real workers (after CPython's _test_multiprocessing.py, _TestPool)."""

import collections
import concurrent.futures as cf
import gc
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
import weakref

import pytest
from calls import until, wait_for

from cloudbutton import SerializationError, WorkerLostError
from cloudbutton import multiprocessing as mp
from cloudbutton.backends.local import LocalBackend
from cloudbutton.concurrent import InitializerError
from cloudbutton.multiprocessing.pool import MaybeEncodingError


def sqr(x):
    return x * x


def mul(x, y):
    return x * y


def raise_on(x, bad=3):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


def gated_sqr(x, gate, blocked):
    if x == blocked:
        wait_for(gate)
    return x * x


def exit_on(x, bad=2):
    if x == bad:
        os._exit(3)
    return x


def kill_on(x, bad=1):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def set_global(value):
    global PREFIX
    PREFIX = value


def prefixed(x):
    return f"{PREFIX}{x}"


def failing_initializer():
    raise ValueError("no model file")


def numbers(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise OSError(f"input broke at {i}")
        yield i


@pytest.fixture(scope="module")
def pool(isolated):
    with mp.Pool(2) as p:
        yield p


def open_gate(path):
    with open(path, "w"):
        pass


# --- results ----------------------------------------------------------------------------------


def test_apply(pool):
    assert pool.apply(sqr, (5,)) == 25
    assert pool.apply(mul, (), {"x": 3, "y": 4}) == 12


def test_map_in_order(pool):
    assert pool.map(sqr, range(10)) == [x * x for x in range(10)]
    assert pool.map(sqr, range(1000)) == [x * x for x in range(1000)]
    assert pool.map(sqr, range(100), chunksize=7) == [x * x for x in range(100)]
    assert pool.map(sqr, []) == []


def test_map_of_a_generator(pool):
    assert pool.map(sqr, (x for x in range(20))) == [x * x for x in range(20)]


def test_starmap(pool):
    pairs = list(zip(range(30), range(30, 60), strict=True))
    assert pool.starmap(mul, pairs) == [a * b for a, b in pairs]
    assert pool.starmap_async(mul, pairs).get(timeout=30) == [a * b for a, b in pairs]


def test_map_async(pool):
    assert pool.map_async(sqr, range(10)).get(timeout=30) == [x * x for x in range(10)]


def test_imap_in_order(pool):
    assert list(pool.imap(sqr, range(10))) == [x * x for x in range(10)]
    assert list(pool.imap(sqr, range(100), chunksize=7)) == [x * x for x in range(100)]
    it = pool.imap(sqr, numbers(10))  # a lazy input, read as it is produced
    assert [it.next(timeout=30) for _ in range(10)] == [x * x for x in range(10)]
    with pytest.raises(StopIteration):
        it.next()


def test_imap_streams_a_lazy_input(pool):
    more = threading.Event()

    def produce():
        yield 1
        yield 2
        more.wait(60)
        yield 3

    it = pool.imap(sqr, produce())
    assert [it.next(timeout=30), it.next(timeout=30)] == [1, 4]  # while the input is not exhausted
    more.set()
    assert list(it) == [9]


def test_imap_unordered_gives_all_results(pool):
    assert sorted(pool.imap_unordered(sqr, range(100))) == [x * x for x in range(100)]
    assert sorted(pool.imap_unordered(sqr, numbers(50), chunksize=4)) == [x * x for x in range(50)]


def test_imap_unordered_streams_results_as_they_finish(pool, gate):
    it = pool.imap_unordered(_gated_item, [(x, gate) for x in range(6)])
    first = [it.next(timeout=30) for _ in range(5)]
    assert sorted(first) == [1, 4, 9, 16, 25]  # item 0 is still blocked
    with pytest.raises(mp.TimeoutError):
        it.next(timeout=0.1)
    open_gate(gate)
    assert it.next(timeout=30) == 0


def _gated_item(item):
    x, gate = item
    return gated_sqr(x, gate, 0)


def test_imap_raises_at_the_failed_item_and_goes_on(pool):
    it = pool.imap(raise_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="bad 3"):
        next(it)
    assert list(it) == [4, 5]


def test_imap_input_that_raises_comes_after_the_results(pool):
    it = pool.imap(sqr, numbers(10, fail_at=4))
    assert [next(it) for _ in range(4)] == [0, 1, 4, 9]
    with pytest.raises(OSError, match="input broke at 4"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_imap_next_timeout(pool, gate):
    it = pool.imap(wait_for, [gate])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    open_gate(gate)
    assert it.next(timeout=30) is None


# --- errors -----------------------------------------------------------------------------------


def test_exceptions_are_reraised_with_their_type(pool):
    with pytest.raises(KeyError, match="bad 3"):
        pool.apply(raise_on, (3,))
    with pytest.raises(KeyError, match="bad 3"):
        pool.map(raise_on, range(10))
    with pytest.raises(KeyError, match="bad 3"):
        pool.starmap(raise_on, [(i, 3) for i in range(10)], chunksize=1)


def fail_early_or_late(x, gate, later_failed):
    if x == 1:  # fails last, once the later item has failed
        wait_for(gate)
        raise KeyError("the earlier item")
    if x == 5:
        open_gate(later_failed)
        raise KeyError("the later item")
    return x


def test_map_async_reports_the_first_error_in_input_order(pool, gate):
    later_failed = gate + ".later"
    result = pool.starmap_async(fail_early_or_late, [(x, gate, later_failed) for x in range(8)], chunksize=1)
    wait_for(later_failed)  # item 5 failed while item 1 still runs
    assert not result.ready()
    open_gate(gate)
    result.wait(timeout=30)
    assert result.ready() and not result.successful()
    with pytest.raises(KeyError, match="the earlier item"):
        result.get()


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_unpicklable_arguments_raise_what_pickling_raised_when_the_result_is_got(pool):
    errors = []
    result = pool.apply_async(sqr, (threading.Lock(),), error_callback=errors.append)  # as in the stdlib: no error yet
    with pytest.raises(TypeError, match="lock"):
        result.get(timeout=30)
    assert not isinstance(errors[0], SerializationError) and isinstance(errors[0], TypeError)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        pool.map(sqr, [Unpicklable()] * 10)
    for chunksize in (1, 2):  # only the item (or chunk) that cannot be pickled fails
        results = pool.imap(sqr, [1, 2, Unpicklable(), 4, 5], chunksize)
        assert [next(results) for _ in range(2)] == [1, 4]
        with pytest.raises(RuntimeError, match="cannot pickle"):
            next(results)
        assert list(results) == ([25] if chunksize == 2 else [16, 25])  # a chunk fails whole, as in the stdlib
    results = pool.imap_unordered(sqr, iter([Unpicklable(), 3]))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        next(results)
    assert list(results) == [9]
    assert pool.map(sqr, [3]) == [9]


def unpicklable_result(x):
    return threading.Lock()


def test_a_result_that_cannot_be_pickled_back_is_a_maybe_encoding_error(pool):
    errors = []
    result = pool.apply_async(unpicklable_result, (1,), error_callback=errors.append)
    with pytest.raises(MaybeEncodingError, match="lock") as raised:
        result.get(timeout=30)
    assert errors == [raised.value] and raised.value.exc and raised.value.value
    assert mp.pool.MaybeEncodingError is MaybeEncodingError  # the standard library's
    with pytest.raises(MaybeEncodingError):
        pool.map(unpicklable_result, range(4), chunksize=2)
    assert pool.apply(sqr, (4,)) == 16  # the workers are fine


def test_a_tasks_exception_has_the_remote_traceback_as_its_cause(pool):
    with pytest.raises(KeyError) as raised:
        pool.apply(raise_on, (3,))
    cause = raised.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert 'raise KeyError(f"bad {x}")' in cause.tb and str(cause) == cause.tb
    with pytest.raises(OSError) as raised:  # the input's own exception is not remote
        pool.map(sqr, numbers(5, fail_at=2))
    assert raised.value.__cause__ is None


def test_a_worker_that_dies_fails_its_task_and_the_others_complete(pool):
    results = [pool.apply_async(exit_on, (i,)) for i in range(6)]
    with pytest.raises(WorkerLostError, match="exited with code 3"):
        results[2].get(timeout=30)
    assert [r.get(timeout=30) for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4, 5]
    with pytest.raises(WorkerLostError):
        pool.map(exit_on, range(6))
    assert pool.map(sqr, range(4)) == [0, 1, 4, 9]  # the pool is still usable


def test_kill_9_inside_a_task(pool):
    it = pool.imap(kill_on, range(4))
    assert next(it) == 0
    with pytest.raises(WorkerLostError, match="SIGKILL"):
        next(it)
    assert list(it) == [2, 3]


# --- AsyncResult ------------------------------------------------------------------------------


def test_async_result_while_not_ready(pool, gate):
    result = pool.apply_async(wait_for, (gate, "done"))
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):  # the standard library's class
        result.get(timeout=0.1)
    result.wait(timeout=0.1)
    assert not result.ready()
    open_gate(gate)
    assert result.get(timeout=30) == "done"
    assert result.ready() and result.successful()


def test_callbacks_run_before_the_result_is_ready(pool):
    seen, errors = [], []
    pool.apply_async(sqr, (7,), callback=seen.append).get(timeout=30)
    pool.map_async(sqr, range(5), callback=seen.append).get(timeout=30)
    result = pool.apply_async(raise_on, (3,), callback=seen.append, error_callback=errors.append)
    result.wait(timeout=30)
    assert seen == [49, [0, 1, 4, 9, 16]]
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    threads = []
    pool.apply_async(sqr, (1,), callback=lambda _: threads.append(threading.current_thread().name)).get(timeout=30)
    assert threads == ["cloudbutton-pool-callbacks"]


def test_a_failing_callback_does_not_stop_the_pool(pool, capsys):
    def bad_callback(_):
        raise RuntimeError("callback broke")

    pool.apply_async(sqr, (2,), callback=bad_callback).wait(timeout=30)
    assert "callback broke" in capsys.readouterr().err
    assert pool.apply_async(sqr, (3,)).get(timeout=30) == 9


# --- lifetime ---------------------------------------------------------------------------------


def test_close_then_join_waits_for_the_tasks(isolated, gate):
    p = mp.Pool(2)
    result = p.map_async(wait_for, [gate] * 3)
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(sqr, (1,))
    open_gate(gate)
    p.join()
    assert result.ready() and result.get() == [None] * 3


def test_join_before_close_is_an_error(isolated):
    p = mp.Pool(2)
    with pytest.raises(ValueError, match="Pool is still running"):
        p.join()
    p.terminate()
    p.join()


def test_terminate_cancels_the_tasks_not_finished(isolated, gate):
    p = mp.Pool(2)
    errors = []
    results = [p.apply_async(wait_for, (gate,), error_callback=errors.append) for _ in range(4)]
    p.terminate()
    assert len(errors) == 4  # the error callbacks ran before terminate returned
    assert all(isinstance(error, cf.CancelledError) for error in errors)
    for r in results:
        with pytest.raises(cf.CancelledError, match="terminated"):
            r.get(timeout=30)
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(sqr, [1])
    p.join()


def _new_threads(before, *names):
    return [t for t in threading.enumerate() if t not in before and t.name in names]


def test_terminate_stops_reading_an_endless_input(isolated):
    before = set(threading.enumerate())
    p = mp.Pool(2)
    it = p.imap(sqr, itertools.count())
    assert [it.next(timeout=30) for _ in range(3)] == [0, 1, 4]
    feeding = _new_threads(before, "cloudbutton-pool-feeder", "cloudbutton-pool-reader")
    assert len(feeding) == 2
    p.terminate()
    for thread in feeding:
        thread.join(30)
        assert not thread.is_alive(), f"{thread.name} still runs after terminate()"
    p.join()


def exit_after(n):
    yield from range(n)
    raise SystemExit(5)


def write_later(path):
    time.sleep(1.0)
    open(path, "w").close()


def test_terminate_stops_the_tasks_running(isolated, tmp_path):
    with mp.Pool(1) as p:  # leaving the block terminates the pool
        result = p.apply_async(write_later, (str(tmp_path / "late"),))
        until(lambda: result._futures and result._futures[0].running(), "the task to start")
    with mp.Pool(1) as p:  # the worker it ran on was stopped and replaced: the next pool can use it
        assert p.apply(sqr, (3,)) == 9
    time.sleep(1.5)
    assert not (tmp_path / "late").exists()


def test_imap_input_raising_a_base_exception_ends_the_results(pool):
    it = pool.imap(sqr, exit_after(2))
    assert [it.next(timeout=30), it.next(timeout=30)] == [0, 1]
    with pytest.raises(SystemExit):
        it.next(timeout=30)
    with pytest.raises(StopIteration):
        it.next(timeout=30)


def test_map_async_of_nothing_is_ready_at_once_without_callbacks(pool):
    called = []
    result = pool.map_async(sqr, [], callback=called.append, error_callback=called.append)
    assert result.ready() and result.get(timeout=30) == [] and called == []


def slow_sqr(x):
    time.sleep(0.3)
    return x * x


def key_error_after(n):
    yield from range(1, n + 1)
    raise KeyError("the input failed")


def test_imap_unordered_gives_the_results_of_tasks_before_the_inputs_error(pool):
    it = pool.imap_unordered(slow_sqr, key_error_after(2))  # the input fails while both tasks run
    assert sorted([it.next(timeout=30), it.next(timeout=30)]) == [1, 4]
    with pytest.raises(KeyError, match="the input failed"):
        it.next(timeout=30)
    with pytest.raises(StopIteration):
        it.next(timeout=30)


def test_finished_imap_feeders_are_forgotten(isolated):
    with mp.Pool(2) as p:
        for _ in range(3):
            before = set(threading.enumerate())
            assert list(p.imap(sqr, numbers(3))) == [0, 1, 4]
            for thread in _new_threads(before, "cloudbutton-pool-feeder", "cloudbutton-pool-reader"):
                thread.join(30)
        assert list(p.imap(sqr, numbers(2))) == [0, 1]
        assert len(p._feeders) == 1


def test_a_pool_dropped_without_terminate_stops_its_callback_thread(isolated):
    before = set(threading.enumerate())
    p = mp.Pool(2)
    got = []
    p.map_async(sqr, [1, 2], callback=got.append).wait(30)
    assert got == [[1, 4]]
    (callbacks,) = _new_threads(before, "cloudbutton-pool-callbacks")
    dropped = weakref.ref(p)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):  # as the stdlib's
        del p
        gc.collect()
    assert dropped() is None  # nothing of the pool's own keeps it alive
    callbacks.join(30)
    assert not callbacks.is_alive()


def test_context_manager_terminates(isolated):
    with mp.Pool(2) as p:
        assert p.map(sqr, [1, 2]) == [1, 4]
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(sqr, (1,))


# --- construction -----------------------------------------------------------------------------


def test_initializer_sets_globals_the_tasks_see(isolated):
    with mp.Pool(2, initializer=set_global, initargs=("n=",)) as p:
        assert p.map(prefixed, range(20)) == [f"n={i}" for i in range(20)]
        assert p.apply(prefixed, (7,)) == "n=7"


def record_start(folder):
    with open(os.path.join(folder, str(os.getpid())), "a") as f:
        f.write("started\n")


def test_initializer_runs_once_in_each_worker_as_the_pool_starts(isolated, tmp_path):
    p = mp.Pool(2, initializer=record_start, initargs=(str(tmp_path),))
    p.close()
    p.join()  # no task at all: the workers ran it as the pool started
    started = {f.name: f.read_text() for f in tmp_path.iterdir()}
    assert 1 <= len(started) <= 2 and set(started.values()) == {"started\n"}
    (tmp_path / "again").mkdir()
    with mp.Pool(1, initializer=record_start, initargs=(str(tmp_path / "again"),)) as p:
        assert p.map(sqr, range(10)) == [x * x for x in range(10)]
        assert [f.read_text() for f in (tmp_path / "again").iterdir()] == ["started\n"]


def pid_of(_):
    return os.getpid()


def test_a_worker_is_replaced_after_maxtasksperchild_tasks(isolated):
    if not getattr(LocalBackend, "recycles_workers", False):
        with pytest.raises(NotImplementedError, match="runtime_memory"):  # says what to use instead
            mp.Pool(2, maxtasksperchild=2)
        pytest.skip("the local backend does not replace a worker when a call asks for it yet")
    with mp.Pool(2, maxtasksperchild=2) as p:
        pids = [r.get(60) for r in [p.apply_async(pid_of, (i,)) for i in range(8)]]
        assert max(collections.Counter(pids).values()) <= 2 and len(set(pids)) >= 4
        pids = p.map(pid_of, range(6), chunksize=1)
        assert max(collections.Counter(pids).values()) <= 2 and len(set(pids)) >= 3


def test_failing_initializer_is_a_clear_error(isolated):
    with mp.Pool(2, initializer=failing_initializer) as p:
        with pytest.raises(InitializerError, match="failing_initializer raised ValueError: no model file"):
            p.map(sqr, range(10))
        with pytest.raises(InitializerError, match="no longer be used"):
            p.apply(sqr, (1,))


def test_bad_arguments(isolated):
    with pytest.raises(ValueError, match="at least 1"):
        mp.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        mp.Pool(2, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        mp.Pool(2, initializer=3)
    with mp.Pool(2) as p:
        with pytest.raises(ValueError, match="Chunksize"):
            p.imap(sqr, [1], chunksize=0)


def test_pool_from_a_context(isolated):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as p:
        assert p.map(sqr, range(3)) == [0, 1, 4]
