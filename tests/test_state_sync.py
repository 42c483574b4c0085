"""Locks, semaphores, barriers, latches, futures and queues on a real (embedded Valkey) server, used from
threads of the client and from real worker processes."""

import os
import pickle
import queue
import subprocess
import sys
import threading
import time

import pytest
import redis
from calls import unique, until

from cloudbutton import FunctionExecutor
from cloudbutton.errors import (
    BrokenBarrierError,
    InvalidStateError,
    LockNotHeldError,
    StateError,
    WaitTimeoutError,
    WorkerLostError,
)
from cloudbutton.state import (
    AtomicInt,
    Barrier,
    CountDownLatch,
    Future,
    Lock,
    Queue,
    Semaphore,
    SharedDict,
    state_url,
)
from cloudbutton.state import server as state_server

pytestmark = pytest.mark.usefixtures("embedded_server")  # one server for the module


@pytest.fixture(scope="module")
def fexec():
    with FunctionExecutor(max_workers=4) as executor:
        yield executor


def in_thread(fn, *args):
    """Start ``fn(*args)`` in a daemon thread; return (thread, box) where box gets 'value' or 'error'."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001  (handed to the test to assert on)
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread, box):
    thread.join(60)
    assert not thread.is_alive(), "a waiter is still blocked"
    return box


# --- functions run in workers ----------------------------------------------------------------------

def locked_increments(lock, total, inside, times):
    """Unguarded read-modify-write of ``total`` under ``lock``; returns the most holders seen at once."""
    most = 0
    for _ in range(times):
        with lock:
            most = max(most, inside.increment())
            total.set(total.get() + 1)
            inside.decrement()
    return most


def acquire_and_die(lock, acquired):
    lock.acquire()
    acquired.count_down()
    os.kill(os.getpid(), 9)


def acquire_then_mark(lock, entered):
    got = lock.acquire(timeout=60)
    entered.increment()
    lock.release()
    return got


def semaphore_section(sem, inside):
    with sem:
        now = inside.increment()
        time.sleep(0.05)
        inside.decrement()
    return now


def barrier_rounds(barrier, arrivals, rounds):
    """Return this party's index per round and whether it ever passed before all parties arrived."""
    indices, early = [], False
    for r in range(rounds):
        arrivals.increment()
        indices.append(barrier.wait(timeout=60))
        early |= arrivals.get() < (r + 1) * barrier.parties
    return indices, early


def barrier_wait(barrier, timeout):
    return barrier.wait(timeout=timeout)


def latch_count_down(latch):
    return latch.count_down()


def future_set(future, value, fail):
    if fail:
        future.set_exception(ValueError(value))
    else:
        future.set_result(value)


def future_get(future):
    return future.result(timeout=60)


def produce(q, producer, n):
    for i in range(n):
        q.put((producer, i), timeout=60)
    return n


def consume(q, n):
    return [q.get(timeout=60) for _ in range(n)]


# --- Lock ----------------------------------------------------------------------------------------------

def test_lock_acquire_release_and_context_manager():
    lock = Lock(unique("lock"))
    other = Lock(lock.name)
    assert not lock.locked()
    assert lock.acquire() is True and lock.locked()
    assert other.acquire(blocking=False) is False
    assert other.acquire(timeout=0.05) is False
    lock.release()
    assert not lock.locked()
    with other:
        assert lock.locked() and lock.acquire(blocking=False) is False
    assert not lock.locked()
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    assert lock.acquire(timeout=-1) is True  # -1 waits forever, as with threading.Lock
    assert lock.acquire(blocking=False, timeout=-1) is False  # -1 is also "no timeout given"
    lock.release()
    with pytest.raises(ValueError):
        Lock(unique("lock"), lease=0)
    lock.delete()


def test_releasing_a_lock_not_held_is_a_clear_error():
    lock = Lock(unique("lock"))
    with pytest.raises(LockNotHeldError, match=f"{lock.name}.*not acquired"):
        lock.release()
    lock.acquire()
    copy = pickle.loads(pickle.dumps(lock))
    assert copy == lock and copy.lease == lock.lease
    with pytest.raises(LockNotHeldError) as info:  # a copy of the handle does not hold the lock
        copy.release()
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, StateError)
    assert lock.locked()
    lock.release()
    lock.delete()


def test_expired_lease_taken_by_another_makes_release_fail():
    name = unique("lock")
    first, second = Lock(name, lease=0.3), Lock(name, lease=30)
    first.acquire()
    assert second.acquire(timeout=60) is True  # blocks until the first lease runs out
    with pytest.raises(LockNotHeldError, match="expired and another holder took it"):
        first.release()
    with pytest.raises(LockNotHeldError):
        first.renew()
    second.renew()
    second.release()
    first.acquire()
    until(lambda: not first.locked())  # lease of 0.3 s ends with nobody taking it
    with pytest.raises(LockNotHeldError, match="expired$"):
        first.release()
    first.delete()


def test_lock_excludes_across_worker_processes(fexec):
    lock, total, inside = Lock(unique("lock")), AtomicInt(unique("total")), AtomicInt(unique("inside"))
    most = fexec.get_result(fexec.map(locked_increments, [(lock, total, inside, 50)] * 4))
    assert max(most) == 1
    assert total.get() == 200
    assert not lock.locked()
    for obj in (lock, total, inside):
        obj.delete()


def test_waiting_worker_enters_only_after_release(fexec):
    lock, entered = Lock(unique("lock")), AtomicInt(unique("entered"))
    lock.acquire()
    future = fexec.call_async(acquire_then_mark, (lock, entered))
    with pytest.raises(WaitTimeoutError):
        fexec.get_result(future, timeout=0.5)
    assert entered.get() == 0
    lock.release()
    assert fexec.get_result(future, timeout=60) is True
    assert entered.get() == 1
    lock.delete()
    entered.delete()


def test_lock_of_a_killed_holder_is_free_after_its_lease(fexec):
    lock, acquired = Lock(unique("lock"), lease=1.0), CountDownLatch(unique("acquired"), 1)
    future = fexec.call_async(acquire_and_die, (lock, acquired))
    assert acquired.wait(timeout=60)
    waiter = Lock(lock.name)
    assert waiter.acquire(timeout=60) is True
    with pytest.raises(WorkerLostError):
        fexec.get_result(future, timeout=60)
    waiter.release()
    lock.delete()
    acquired.delete()


# --- Semaphore ------------------------------------------------------------------------------------------

def test_semaphore_counts_permits_and_keeps_its_first_value():
    sem = Semaphore(unique("sem"), value=2)
    assert Semaphore(sem.name, value=5).get_value() == 2  # stored only when new
    assert sem.acquire() and sem.acquire(blocking=False)
    assert sem.acquire(blocking=False) is False
    assert sem.acquire(timeout=0.05) is False
    thread, box = in_thread(sem.acquire, True, 60)
    sem.release()
    assert joined(thread, box) == {"value": True}
    sem.release(2)
    assert sem.get_value() == 2
    with pytest.raises(ValueError):
        sem.release(0)
    with pytest.raises(ValueError):
        Semaphore(unique("sem"), value=-1)
    sem.delete()


def test_semaphore_bounds_concurrency_across_workers(fexec):
    sem, inside = Semaphore(unique("sem"), value=2), AtomicInt(unique("inside"))
    seen = fexec.get_result(fexec.map(semaphore_section, [(sem, inside)] * 12))
    assert max(seen) <= 2
    assert sem.get_value() == 2 and inside.get() == 0
    sem.delete()
    inside.delete()


# --- Barrier --------------------------------------------------------------------------------------------

def test_barrier_releases_each_round_together_with_distinct_indices(fexec):
    barrier, arrivals = Barrier(unique("barrier"), 4), AtomicInt(unique("arrivals"))
    rounds = 6
    futures = fexec.map(barrier_rounds, [(barrier, arrivals, rounds)] * 3)
    mine, early = barrier_rounds(barrier, arrivals, rounds)  # the client is the fourth party
    results = fexec.get_result(futures) + [(mine, early)]
    assert not any(passed_early for _, passed_early in results)
    for r in range(rounds):
        assert sorted(indices[r] for indices, _ in results) == [0, 1, 2, 3]
    assert arrivals.get() == 4 * rounds
    assert barrier.n_waiting == 0 and not barrier.broken
    barrier.delete()
    arrivals.delete()


def test_barrier_timeout_breaks_the_round_for_every_waiter():
    barrier = Barrier(unique("barrier"), 3)
    patient = in_thread(barrier.wait, None)
    until(lambda: barrier.n_waiting == 1)
    with pytest.raises(BrokenBarrierError):
        barrier.wait(timeout=0.1)
    assert isinstance(joined(*patient)["error"], BrokenBarrierError)
    assert barrier.broken and barrier.n_waiting == 0
    with pytest.raises(BrokenBarrierError):  # stays broken until reset
        barrier.wait(timeout=60)
    barrier.reset()
    assert not barrier.broken
    waiters = [in_thread(barrier.wait, 60) for _ in range(3)]
    assert sorted(joined(*w)["value"] for w in waiters) == [0, 1, 2]
    barrier.delete()


def test_barrier_default_timeout_applies():
    barrier = Barrier(unique("barrier"), 2, timeout=0.05)
    with pytest.raises(BrokenBarrierError):
        barrier.wait()
    assert pickle.loads(pickle.dumps(barrier)).timeout == 0.05
    barrier.delete()


def test_barrier_abort_wakes_a_waiting_worker(fexec):
    barrier = Barrier(unique("barrier"), 2)
    future = fexec.call_async(barrier_wait, (barrier, None))
    until(lambda: barrier.n_waiting == 1)
    barrier.abort()
    with pytest.raises(BrokenBarrierError) as info:
        fexec.get_result(future, timeout=60)
    assert isinstance(info.value, threading.BrokenBarrierError)
    assert barrier.broken
    barrier.delete()


def test_barrier_reset_wakes_waiters_and_starts_a_new_round():
    barrier = Barrier(unique("barrier"), 3)
    waiters = [in_thread(barrier.wait, 60) for _ in range(2)]
    until(lambda: barrier.n_waiting == 2)
    barrier.reset()
    for w in waiters:
        assert isinstance(joined(*w)["error"], BrokenBarrierError)
    assert not barrier.broken and barrier.n_waiting == 0
    waiters = [in_thread(barrier.wait, 60) for _ in range(3)]
    assert sorted(joined(*w)["value"] for w in waiters) == [0, 1, 2]
    barrier.delete()


def test_barrier_arguments_are_checked():
    with pytest.raises(ValueError):
        Barrier(unique("barrier"), 0)
    with pytest.raises(ValueError):
        Barrier(unique("barrier"), 2, timeout=-1)
    barrier = Barrier(unique("barrier"), 2)
    with pytest.raises(StateError, match="parties=2, not 3"):
        Barrier(barrier.name, 3)
    assert Barrier(unique("single"), 1).wait() == 0
    barrier.delete()


# --- CountDownLatch -------------------------------------------------------------------------------------

def test_latch_opened_by_workers_releases_every_waiter(fexec):
    latch = CountDownLatch(unique("latch"), 3)
    assert latch.wait(timeout=0.05) is False
    waiters = [in_thread(latch.wait, 60) for _ in range(3)]
    counts = fexec.get_result(fexec.map(latch_count_down, [latch] * 3))
    assert sorted(counts) == [0, 1, 2]
    for w in waiters:
        assert joined(*w) == {"value": True}
    assert latch.get_count() == 0 and latch.count_down() == 0 and latch.wait(timeout=0)
    assert CountDownLatch(unique("open"), 0).wait(timeout=0)
    with pytest.raises(ValueError):
        CountDownLatch(unique("latch"), -1)
    latch.delete()


# --- Future ---------------------------------------------------------------------------------------------

def test_future_result_set_by_a_worker_reaches_waiting_threads_and_workers(fexec):
    future = Future(unique("future"))
    assert not future.done()
    with pytest.raises(WaitTimeoutError, match=future.name):
        future.result(timeout=0.05)
    waiters = [in_thread(future.result, None) for _ in range(2)]
    remote = fexec.call_async(future_get, future)
    fexec.get_result(fexec.call_async(future_set, (future, {"answer": 42}, False)))
    for w in waiters:
        assert joined(*w) == {"value": {"answer": 42}}
    assert fexec.get_result(remote, timeout=60) == {"answer": 42}
    assert future.done() and future.exception() is None
    with pytest.raises(InvalidStateError, match="already"):
        future.set_result(1)
    with pytest.raises(InvalidStateError):
        future.set_exception(ValueError())
    assert future.result() == {"answer": 42}
    future.delete()


def test_future_exception_is_raised_with_its_type(fexec):
    future = Future(unique("future"))
    fexec.get_result(fexec.call_async(future_set, (future, "bad input", True)))
    with pytest.raises(ValueError, match="bad input"):
        future.result(timeout=60)
    assert isinstance(future.exception(), ValueError)
    with pytest.raises(TypeError):
        Future(unique("future")).set_exception("not an exception")
    future.delete()


def test_future_rejects_an_unpicklable_result_and_stays_unset():
    future = Future(unique("future"))
    with pytest.raises(TypeError, match="cannot store"):
        future.set_result(threading.Lock())
    assert not future.done()
    future.delete()


# --- Queue ----------------------------------------------------------------------------------------------

def test_queue_behaves_like_queue_queue():
    q = Queue(unique("queue"), maxsize=2)
    assert q.empty() and q.qsize() == 0 and not q.full()
    q.put({"a": 1})
    q.put_nowait([2])
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert q.get() == {"a": 1} and q.get_nowait() == [2]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(TypeError, match="cannot store"):
        q.put(threading.Lock())
    assert q.empty()
    with pytest.raises(StateError, match="maxsize=2, not 0"):
        Queue(q.name)
    assert pickle.loads(pickle.dumps(q)).maxsize == 2
    q.delete()
    with pytest.raises(ValueError):
        Queue(unique("queue"), maxsize=-1)


def test_bounded_queue_between_workers_loses_and_duplicates_nothing(fexec):
    q = Queue(unique("queue"), maxsize=3)
    producers = fexec.map(produce, [(q, p, 100) for p in range(2)])
    consumers = fexec.map(consume, [(q, 50)] * 2)
    items = [q.get(timeout=60) for _ in range(100)]
    items += [item for got in fexec.get_result(consumers) for item in got]
    assert fexec.get_result(producers) == [100, 100]
    assert sorted(items) == sorted((p, i) for p in range(2) for i in range(100))
    for p in range(2):  # FIFO per producer, as seen by the client
        mine = [i for producer, i in items[:100] if producer == p]
        assert mine == sorted(mine)
    assert q.empty()
    q.delete()


def test_blocked_get_in_a_worker_is_woken_by_a_put(fexec):
    q = Queue(unique("queue"))
    future = fexec.call_async(consume, (q, 1))
    with pytest.raises(WaitTimeoutError):
        fexec.get_result(future, timeout=0.3)
    q.put("hello")
    assert fexec.get_result(future, timeout=60) == ["hello"]
    q.delete()


# --- names, long waits, a stopped server ----------------------------------------------------------------

def test_a_name_cannot_be_two_primitives():
    name = unique("clash")
    Lock(name)
    with pytest.raises(StateError, match=f"{name}.*Lock.*Queue"):
        Queue(name)
    with pytest.raises(StateError):
        SharedDict(name)
    Lock(name).delete()
    Queue(name).delete()


def test_delete_removes_every_key():
    url = state_url()
    r = redis.Redis.from_url(url)
    before = set(r.keys("*"))
    lock, q, sem = Lock(unique("lock")), Queue(unique("queue"), maxsize=1), Semaphore(unique("sem"), 1)
    latch, future = CountDownLatch(unique("latch"), 0), Future(unique("future"))
    barrier = Barrier(unique("barrier"), 2)
    lock.acquire()
    lock.release()
    q.put(1)
    q.get()
    future.set_result(1)
    other = in_thread(barrier.wait, 60)
    barrier.wait(timeout=60)
    joined(*other)
    for obj in (lock, q, sem, latch, future, barrier):
        obj.delete()
    assert set(r.keys("*")) - before == set()
    r.close()


@pytest.fixture
def private_server():
    server = state_server.StateServer()
    yield server
    server.stop()


def test_waits_longer_than_the_socket_timeout_do_not_trip_it(private_server, monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_TIMEOUT", "0.2")  # the client for this new URL gets 0.2 s
    url = private_server.url
    q = Queue("q", url=url)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.6)
    lock = Lock("lock", url=url)
    lock.acquire()
    waiter = in_thread(Lock("lock", url=url).acquire, True, None)
    time.sleep(0.6)
    assert "value" not in waiter[1] and "error" not in waiter[1]
    lock.release()
    assert joined(*waiter) == {"value": True}
    future = Future("f", url=url)
    waiter = in_thread(future.result, None)
    time.sleep(0.6)
    future.set_result("late")
    assert joined(*waiter) == {"value": "late"}


def test_waiters_block_on_the_server_instead_of_polling(private_server):
    url = private_server.url
    stats = redis.Redis.from_url(url)
    lock, q = Lock("lock", url=url), Queue("q", url=url)
    lock.acquire()
    stats.config_resetstat()
    waiters = [in_thread(Lock("lock", url=url).acquire, True, 60), in_thread(q.get, True, 60)]
    time.sleep(0.5)
    lock.release()
    q.put("item")
    assert [joined(*w)["value"] for w in waiters] == [True, "item"]
    calls = {name: info["calls"] for name, info in stats.info("commandstats").items()}
    assert 2 <= calls["cmdstat_blpop"] <= 4  # one blocking call per waiter (twice if a slice ended early)
    assert calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0) <= 6  # polling would make dozens
    stats.close()


def test_a_stopped_server_is_a_state_error_for_waiters_and_callers(private_server):
    url = private_server.url
    q, barrier = Queue("q", url=url), Barrier("b", 2, url=url)
    lock, latch = Lock("lock", url=url), CountDownLatch("latch", 1, url=url)
    blocked = [in_thread(q.get, True, None), in_thread(barrier.wait, None), in_thread(latch.wait, None)]
    until(lambda: barrier.n_waiting == 1)
    private_server.stop()
    for w in blocked:
        error = joined(*w)["error"]
        assert isinstance(error, StateError) and url in str(error)
    with pytest.raises(StateError, match=url):
        lock.acquire(timeout=None)
    with pytest.raises(StateError, match=url):
        q.put(1)


# --- review fixes ---------------------------------------------------------------------------------

def test_threads_sharing_one_lock_handle_keep_their_ownership():
    lock, inside = Lock(unique("lock")), AtomicInt(unique("inside"))
    errors = []

    def hammer():
        try:
            for _ in range(200):
                with lock:
                    assert inside.increment() == 1
                    inside.decrement()
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert not lock.locked()
    lock.delete()
    inside.delete()


WAIT_IN_A_PROCESS = """
import sys
from cloudbutton.state import Barrier
print("waiting", flush=True)
Barrier(sys.argv[1], 2, url=sys.argv[2]).wait()
"""


def test_deleting_a_barrier_removes_the_wake_up_lists_of_a_dead_waiter(embedded_server):
    r = redis.Redis.from_url(embedded_server)
    barrier = Barrier(unique("barrier"), 2)
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_IN_A_PROCESS, barrier.name, embedded_server],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert waiter.stdout.readline() == b"waiting\n"
        until(lambda: barrier.n_waiting == 1)
        waiter.kill()
        waiter.wait(30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(30)
        waiter.stdout.close()
    barrier.abort()  # pushes a token for the waiter, which nobody will pop
    assert [k for k in r.keys("*") if barrier.name.encode() in k and b":round:" in k]
    barrier.delete()
    assert [k for k in r.keys("*") if barrier.name.encode() in k] == []
    r.close()
