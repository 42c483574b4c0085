"""cloudbutton.multiprocessing's Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier, on a
real embedded Valkey server and real worker processes (after CPython's _test_multiprocessing.py)."""

import gc
import os
import pickle
import signal
import threading
import time

import pytest
import redis
from mp_store import finished, mp_store, no_orphans, run  # noqa: F401 - fixtures used by this module

from cloudbutton.errors import BrokenBarrierError, StateError
from cloudbutton.multiprocessing.synchronize import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)
from cloudbutton.multiprocessing.values import RawValue
from cloudbutton.state import AtomicInt, state_url


def wait_until(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


# --- functions run in Processes ----------------------------------------------------------------------

def locked_increments(lock, total, inside, most, times):
    """Unguarded read-modify-write of ``total`` under ``lock``, recording the most holders seen at once."""
    for _ in range(times):
        with lock:
            now = inside.increment()
            if now > most.get():
                most.set(now)
            total.value = total.value + 1
            inside.decrement()


def acquire_and_mark(lock, entered):
    if not lock.acquire(timeout=60):
        raise RuntimeError("lock not acquired")
    entered.increment()
    lock.release()


def try_acquire(lock, timeout):
    """Exit code 0 if the lock was taken within ``timeout`` (then released), 3 if not."""
    if not lock.acquire(timeout=timeout):
        raise SystemExit(3)
    lock.release()


def acquire_and_die(lock, acquired):
    lock.acquire()
    acquired.increment()
    os.kill(os.getpid(), signal.SIGKILL)


def just_acquire(lock):
    lock.acquire()


def hold_semaphore(sem, inside, most, times):
    for _ in range(times):
        with sem:
            now = inside.increment()
            if now > most.get():
                most.set(now)
            time.sleep(0.01)
            inside.decrement()


def wait_on_condition(cond, woken, timeout):
    with cond:
        if cond.wait(timeout):
            woken.increment()


def set_when_told(cond, flag):
    with cond:
        flag.increment()
        cond.notify_all()


def set_event(event):
    event.set()


def wait_event(event, seen):
    if event.wait(60):
        seen.increment()


def barrier_party(barrier, indices):
    index = barrier.wait(60)
    indices.increment(1 << (4 * index))  # each index adds to its own 4-bit slot


def barrier_party_checks_action(barrier, actions, wrong):
    barrier.wait(60)
    if actions.get() != 1:  # the action has run before anyone passes
        wrong.increment()


def wait_broken(barrier, broken):
    try:
        barrier.wait(60)
    except threading.BrokenBarrierError:
        broken.increment()


# --- Lock ---------------------------------------------------------------------------------------------

def test_lock_acquire_release_like_the_standard_library():
    lock = Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(False, timeout=5) is False  # the timeout is ignored without blocking
    assert lock.acquire(timeout=0.05) is False
    assert lock.acquire(timeout=-1) is False  # a negative timeout is 0
    lock.release()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    with lock as taken:
        assert taken is True
        assert lock.acquire(False) is False
    assert lock.acquire(False) is True
    lock.release()


def test_lock_is_released_by_another_thread_of_the_holding_process():
    lock = Lock()
    lock.acquire()
    thread = threading.Thread(target=lock.release)
    thread.start()
    thread.join(60)
    assert lock.acquire(False) is True
    lock.release()


def test_a_pickled_copy_does_not_hold_the_lock_but_may_release_it():
    lock = Lock()
    lock.acquire()
    copy = pickle.loads(pickle.dumps(lock))
    assert copy.acquire(False) is False
    copy.release()  # as in the standard library, any handle may release it
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()  # it was released already
    assert copy.acquire(False) is True
    assert lock.acquire(False) is False
    copy.release()


def release(lock):
    lock.release()


def test_a_lock_acquired_here_is_released_by_another_process():
    lock = Lock()
    lock.acquire()
    assert finished(run(release, lock)) == [0]
    assert lock.acquire(False) is True
    lock.release()


def test_lock_excludes_across_processes():
    lock, total = Lock(), RawValue("i", 0)
    inside, most = AtomicInt(f"t-inside-{os.getpid()}-{id(lock)}", 0), AtomicInt(f"t-most-{id(lock)}", 0)
    try:
        ps = [run(locked_increments, lock, total, inside, most, 40) for _ in range(3)]
        locked_increments(lock, total, inside, most, 40)
        assert finished(*ps) == [0, 0, 0]
        assert total.value == 160
        assert most.get() == 1
    finally:
        inside.delete()
        most.delete()


def test_a_process_waits_while_the_lock_is_held_and_enters_after_release():
    lock, entered = Lock(), AtomicInt(f"t-entered-{id(object())}", 0)
    try:
        lock.acquire()
        p = run(acquire_and_mark, lock, entered)
        p.join(0.5)
        assert entered.get() == 0
        lock.release()
        assert finished(p) == [0]
        assert entered.get() == 1
    finally:
        entered.delete()


def test_lock_held_by_a_killed_process_is_free_after_its_lease():
    lock, acquired = Lock(lease=1.0), AtomicInt(f"t-acquired-{id(object())}", 0)
    try:
        p = run(acquire_and_die, lock, acquired)
        assert finished(p) == [-signal.SIGKILL]
        assert acquired.get() == 1
        assert lock.acquire(timeout=60) is True  # the dead holder's lease ran out
        lock.release()
    finally:
        acquired.delete()


def test_lock_left_held_by_a_process_that_returned_is_free_after_its_lease():
    lock = Lock(lease=1.0)
    assert finished(run(just_acquire, lock)) == [0]
    assert lock.acquire(timeout=60) is True
    lock.release()


def test_a_live_holder_keeps_the_lock_beyond_its_lease():
    lock = Lock(lease=0.3)
    lock.acquire()
    time.sleep(1.2)  # four leases: the holder's lease is renewed in the background
    assert finished(run(try_acquire, lock, 0.05)) == [3]
    lock.release()  # still held: no error
    assert finished(run(try_acquire, lock, 60)) == [0]


# --- RLock --------------------------------------------------------------------------------------------

def test_rlock_is_recursive_and_owned_by_its_thread():
    lock = RLock()
    with pytest.raises(AssertionError, match="not owned"):
        lock.release()
    assert lock.acquire() and lock.acquire() and lock.acquire(False)
    box = {}
    thread = threading.Thread(target=lambda: box.update(taken=lock.acquire(timeout=0.05)))
    thread.start()
    thread.join(60)
    assert box == {"taken": False}


    def release_from_another_thread():
        try:
            lock.release()
        except AssertionError as e:
            box["error"] = e

    thread = threading.Thread(target=release_from_another_thread)
    thread.start()
    thread.join(60)
    assert "not owned" in str(box["error"])
    lock.release()
    lock.release()
    assert finished(run(try_acquire, lock, 0.05)) == [3]  # held once more
    lock.release()
    assert finished(run(try_acquire, lock, 60)) == [0]
    with pytest.raises(AssertionError):
        lock.release()


# --- Semaphore and BoundedSemaphore -------------------------------------------------------------------

def test_semaphore_counts_like_the_standard_library():
    sem = Semaphore(2)
    assert sem.get_value() == 2
    assert sem.acquire() and sem.acquire(False)
    assert sem.acquire(False) is False
    assert sem.acquire(timeout=0.05) is False
    assert sem.get_value() == 0
    sem.release()
    sem.release()
    sem.release()  # unbounded, like multiprocessing.Semaphore
    assert sem.get_value() == 3
    with pytest.raises(ValueError):
        Semaphore(-1)


def test_bounded_semaphore_over_release_is_a_value_error():
    sem = BoundedSemaphore(2)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()
    with sem:
        assert sem.get_value() == 1
    assert sem.get_value() == 2
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()
    assert sem.get_value() == 2


def test_semaphore_bounds_concurrency_across_processes():
    sem = BoundedSemaphore(2)
    inside, most = AtomicInt(f"t-inside-{id(sem)}", 0), AtomicInt(f"t-most-{id(sem)}", 0)
    try:
        ps = [run(hold_semaphore, sem, inside, most, 10) for _ in range(2)]
        hold_semaphore(sem, inside, most, 10)
        assert finished(*ps) == [0, 0]
        assert 1 <= most.get() <= 2
        assert sem.get_value() == 2
    finally:
        inside.delete()
        most.delete()


# --- Condition ----------------------------------------------------------------------------------------

def test_condition_needs_its_lock():
    cond = Condition()
    with pytest.raises(AssertionError, match="must acquire"):
        cond.wait(0.01)
    with pytest.raises(AssertionError, match="not owned"):
        cond.notify()
    with cond:
        assert cond.wait(0.05) is False  # nobody notifies
        cond.notify()  # nobody waits: nothing happens
    assert len(cond._waiters) == 0


def test_notify_wakes_one_waiter_and_notify_all_the_rest():
    cond, woken = Condition(), AtomicInt(f"t-woken-{id(object())}", 0)
    try:
        ps = [run(wait_on_condition, cond, woken, 60) for _ in range(2)]
        wait_until(lambda: len(cond._waiters) == 2)
        with cond:
            cond.notify()
        wait_until(lambda: woken.get() == 1)
        assert len(cond._waiters) == 1
        with cond:
            cond.notify_all()
        assert finished(*ps) == [0, 0]
        assert woken.get() == 2
    finally:
        woken.delete()


def test_condition_over_a_plain_lock_and_wait_for():
    cond, flag = Condition(Lock()), AtomicInt(f"t-flag-{id(object())}", 0)
    try:
        with cond:
            assert cond.wait_for(lambda: flag.get() == 1, timeout=0.05) is False
            p = run(set_when_told, cond, flag)
            assert cond.wait_for(lambda: flag.get() == 1, timeout=60) is True
        assert finished(p) == [0]
    finally:
        flag.delete()


def test_a_timed_out_waiter_leaves_no_trace():
    cond = Condition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait(0) is False
    assert len(cond._waiters) == 0


# --- Event --------------------------------------------------------------------------------------------

def test_event_set_by_a_process_wakes_waiters():
    event, seen = Event(), AtomicInt(f"t-seen-{id(object())}", 0)
    try:
        assert event.is_set() is False
        assert event.wait(0.05) is False
        waiter = run(wait_event, event, seen)
        setter = run(set_event, event)
        assert event.wait(60) is True
        assert finished(waiter, setter) == [0, 0]
        assert seen.get() == 1
        assert event.is_set() and event.wait(0)
        event.clear()
        assert event.is_set() is False and event.wait(0) is False
    finally:
        seen.delete()


def test_event_is_one_store_object_and_wait_honours_its_timeout():
    r = redis.Redis.from_url(state_url())
    before = set(r.keys("*mp:*"))
    event = Event()
    event.set()
    names = {key.decode().split("mp:", 1)[1] for key in set(r.keys("*mp:*")) - before}
    assert len(names) == 1  # one flag: no lock a dead setter could leave held, no waiter list
    event.clear()
    seen = AtomicInt(f"t-seen-{id(event)}", 0)
    try:
        waiters = [run(wait_event, event, seen) for _ in range(2)]  # blocked in wait: they hold nothing
        assert event.wait(0.2) is False
        assert event.wait(0) is False
        event.set()  # wakes every waiter
        assert finished(*waiters) == [0, 0]
        assert seen.get() == 2
    finally:
        seen.delete()


def test_event_repr_is_the_standard_librarys():
    event = Event()
    assert repr(event) == f"<Event at {id(event):#x} unset>"
    event.set()
    assert repr(event) == f"<Event at {id(event):#x} set>"


# --- Barrier ------------------------------------------------------------------------------------------

def test_barrier_gives_distinct_indices_to_processes():
    barrier = Barrier(3)
    indices = AtomicInt(f"t-indices-{id(barrier)}", 0)
    try:
        ps = [run(barrier_party, barrier, indices) for _ in range(2)]
        barrier_party(barrier, indices)
        assert finished(*ps) == [0, 0]
        assert indices.get() == 0x111  # indices 0, 1 and 2, once each
        assert barrier.parties == 3 and barrier.n_waiting == 0 and not barrier.broken
    finally:
        indices.delete()


def test_barrier_action_runs_once_before_any_party_passes():
    actions = AtomicInt(f"t-actions-{id(object())}", 0)
    wrong = AtomicInt(f"t-wrong-{id(object())}", 0)
    barrier = Barrier(3, action=actions.increment)
    try:
        ps = [run(barrier_party_checks_action, barrier, actions, wrong) for _ in range(2)]
        barrier_party_checks_action(barrier, actions, wrong)
        assert finished(*ps) == [0, 0]
        assert actions.get() == 1 and wrong.get() == 0
    finally:
        actions.delete()
        wrong.delete()


def test_barrier_timeout_breaks_it_for_every_waiter():
    barrier, broken = Barrier(3), AtomicInt(f"t-broken-{id(object())}", 0)
    try:
        p = run(wait_broken, barrier, broken)
        wait_until(lambda: barrier.n_waiting == 1)
        with pytest.raises(threading.BrokenBarrierError) as info:
            barrier.wait(0.05)
        assert isinstance(info.value, BrokenBarrierError)
        assert finished(p) == [0]
        assert broken.get() == 1 and barrier.broken
        with pytest.raises(threading.BrokenBarrierError):
            barrier.wait(60)
        barrier.reset()
        assert not barrier.broken
    finally:
        broken.delete()


def test_barrier_abort_wakes_a_waiting_process():
    barrier, broken = Barrier(2, timeout=60), AtomicInt(f"t-broken-{id(object())}", 0)
    try:
        p = run(wait_broken, barrier, broken)
        wait_until(lambda: barrier.n_waiting == 1)
        barrier.abort()
        assert finished(p) == [0]
        assert broken.get() == 1
    finally:
        broken.delete()


def test_a_failing_action_breaks_the_barrier_and_reaches_its_caller():
    def fail():
        raise ZeroDivisionError("action failed")

    barrier = Barrier(1, action=fail)
    with pytest.raises(ZeroDivisionError):
        barrier.wait()
    assert barrier.broken


# --- lifetime -----------------------------------------------------------------------------------------

def test_objects_are_deleted_when_their_creator_drops_them_but_not_by_copies():
    r = redis.Redis.from_url(state_url())
    lock = Lock()
    name = lock._lock.name
    lock.acquire()
    lock.release()  # leaves a wake-up list next to the type record
    assert len(r.keys(f"*{name}")) == 2
    copy = pickle.loads(pickle.dumps(lock))
    del copy
    gc.collect()
    assert len(r.keys(f"*{name}")) == 2
    del lock
    gc.collect()
    assert r.keys(f"*{name}") == []


# --- an unreachable state server ----------------------------------------------------------------------

def test_a_stopped_server_is_a_state_error_for_waiters_and_callers(monkeypatch):
    from cloudbutton.multiprocessing.connection import Pipe
    from cloudbutton.multiprocessing.queues import Queue
    from cloudbutton.state.server import StateServer

    server = StateServer()
    try:
        monkeypatch.setenv("CLOUDBUTTON_STATE_URL", server.url)
        lock, cond, event, barrier, q, (_, b) = Lock(), Condition(), Event(), Barrier(2), Queue(), Pipe()
        lock.acquire()
        box = {}

        def waiter(name, fn, *args):
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001  (checked below)
                box[name] = e

        def wait_on_cond():
            with cond:
                cond.wait()

        threads = [threading.Thread(target=waiter, args=args) for args in [
            ("lock", Lock.acquire, lock), ("cond", wait_on_cond), ("event", event.wait),
            ("barrier", barrier.wait), ("queue", q.get), ("pipe", b.recv)]]
        for t in threads:
            t.start()
        wait_until(lambda: barrier.n_waiting == 1 and len(cond._waiters) == 1)
        server.stop()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a waiter still blocks on a stopped server"
        assert sorted(box) == ["barrier", "cond", "event", "lock", "pipe", "queue"]
        for name, error in box.items():
            assert isinstance(error, StateError) and server.url in str(error), (name, error)
        with pytest.raises(StateError, match=server.url):
            q.put(1)
        with pytest.raises(StateError, match=server.url):
            Lock()
    finally:
        server.stop()


def test_releasing_an_unheld_lock_raises_what_both_standard_locks_raise():
    from cloudbutton import multiprocessing as mp

    with mp.Manager() as manager:
        for lock in (mp.Lock(), manager.Lock(), mp.BoundedSemaphore(1)):
            with pytest.raises(ValueError) as info:  # multiprocessing's
                lock.release()
            assert isinstance(info.value, RuntimeError)  # and threading's
