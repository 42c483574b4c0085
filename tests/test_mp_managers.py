"""cloudbutton.multiprocessing's Value, Array and Manager, on a real embedded Valkey server and real worker
processes (after CPython's _test_multiprocessing.py)."""

import ctypes
import gc
import multiprocessing
import pickle
import queue

import pytest
import redis
from mp_store import finished, mp_store, no_orphans, run  # noqa: F401 - fixtures used by this module

from cloudbutton import multiprocessing as mp
from cloudbutton.errors import StateError
from cloudbutton.multiprocessing import queues as mp_queues
from cloudbutton.multiprocessing.managers import BaseManager, BaseProxy, Manager, RemoteError, SyncManager
from cloudbutton.multiprocessing.synchronize import Lock, RLock
from cloudbutton.multiprocessing.values import Array, RawArray, RawValue, Value
from cloudbutton.state import state_url

# --- functions run in Processes ----------------------------------------------------------------------

def add_under_lock(value, times):
    for _ in range(times):
        with value.get_lock():
            value.value += 1


def add_and_report(value, q, times):
    add_under_lock(value, times)
    q.put(times)


def add_to_array(arr, times):
    for _ in range(times):
        with arr.get_lock():
            for i in range(len(arr)):
                arr[i] += i


def fill(d, lst, ns, start):
    for i in range(start, start + 10):
        d[i] = i * i
        lst.append(i)
    ns.last = start


def set_value(v):
    v.set(v.get() + 41)


def put_all(q, items):
    for item in items:
        q.put(item)


# --- Value and Array ----------------------------------------------------------------------------------

def test_value_from_many_processes_gives_the_exact_total():
    v = Value("i", 0)
    ps = [run(add_under_lock, v, 25) for _ in range(3)]
    add_under_lock(v, 25)
    assert finished(*ps) == [0, 0, 0]
    assert v.value == 100


def test_value_and_queue_passed_in_pool_arguments():
    v, q = Value("i", 0), mp_queues.Queue()
    with mp.Pool(2) as pool:
        assert pool.starmap(add_and_report, [(v, q, 10)] * 4) == [None] * 4
    assert v.value == 40
    assert sorted(q.get_nowait() for _ in range(4)) == [10] * 4 and q.empty()


def test_array_updated_under_its_lock_by_processes():
    arr = Array("d", 4)
    ps = [run(add_to_array, arr, 5) for _ in range(2)]
    add_to_array(arr, 5)
    assert finished(*ps) == [0, 0]
    assert arr[:] == [0.0, 15.0, 30.0, 45.0]


def test_value_converts_like_ctypes():
    v = Value("i", 7)
    assert v.value == 7 and repr(v) == "<Synchronized wrapper for c_int(7)>"
    v.value = 2**32 + 5  # wraps to a C int, as ctypes does
    assert v.value == 5
    with pytest.raises(TypeError):
        v.value = 2.5
    with pytest.raises(TypeError):
        Value("i", 2.5)
    assert Value("d").value == 0.0 and Value(ctypes.c_double, 1.5).value == 1.5
    assert Value("c", b"x").value == b"x"
    with pytest.raises(NotImplementedError, match="not supported"):
        Value(ctypes.c_int * 3)


def test_lock_argument_of_value_and_array():
    raw = Value("i", 1, lock=False)
    assert not hasattr(raw, "get_lock") and raw.value == 1
    raw.value = 2
    assert raw.value == 2
    assert isinstance(Value("i").get_lock(), RLock)  # the standard library's default
    lock = Lock()
    v = Value("i", 0, lock=lock)
    assert v.get_lock() is lock and v.get_obj().value == 0
    with v:  # the wrapper is its lock's context manager
        assert lock.acquire(False) is False
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        Value("i", 0, lock=3)
    arr = Array("i", [1, 2], lock=False)
    assert not hasattr(arr, "get_lock") and arr[:] == [1, 2]
    assert Array("i", 2, lock=RLock()).get_obj()[:] == [0, 0]


def test_array_indexing_and_slicing_like_ctypes():
    arr = Array("i", range(5))
    assert len(arr) == 5 and list(arr) == [0, 1, 2, 3, 4]
    assert arr[-1] == 4 and arr[1:4] == [1, 2, 3] and arr[::-2] == [4, 2, 0]
    arr[0] = 10
    arr[-1] = 40
    arr[1:3] = [11, 12]
    arr[::2] = [0, 0, 0]
    assert arr[:] == [0, 11, 0, 3, 0]
    with pytest.raises(ValueError, match="same size"):
        arr[0:2] = [1]
    with pytest.raises(IndexError):
        arr[5]
    with pytest.raises(IndexError):
        arr[-6] = 1
    with pytest.raises(TypeError):
        arr[0] = "x"
    assert arr[:] == [0, 11, 0, 3, 0]


def char_array_story(module) -> list:
    a = module.Array("c", b"hello")
    story = [a[:], a.value, a.raw, a[1], a[1:3], list(a), list(module.RawArray("c", b"ab"))]
    a.value = b"hi"
    story += [a.value, a.raw]
    a.raw = b"abcde"
    story.append(a.value)
    with pytest.raises(ValueError, match="too long"):
        a.value = b"toolong"
    b = module.RawArray("c", 3)
    return [*story, b.raw, b.value]


def test_char_arrays_read_and_write_bytes_like_the_standard_librarys():
    assert char_array_story(mp) == char_array_story(multiprocessing)


def test_raw_value_and_array_are_store_backed_and_picklable():
    v, arr = RawValue("h", 3), RawArray("b", b"ab")
    copy_v, copy_arr = pickle.loads(pickle.dumps(v)), pickle.loads(pickle.dumps(arr))
    copy_v.value = 9
    copy_arr[0] = 120
    assert v.value == 9 and arr[:] == [120, 98]


# --- Manager ------------------------------------------------------------------------------------------

def test_manager_objects_are_shared_with_processes():
    with Manager() as manager:
        d, lst, ns = manager.dict({"start": 0}), manager.list(), manager.Namespace(first=1)
        ps = [run(fill, d, lst, ns, start) for start in (0, 10)]
        assert finished(*ps) == [0, 0]
        assert d.copy() == {"start": 0, **{i: i * i for i in range(20)}}
        assert sorted(lst) == list(range(20)) and len(lst) == 20
        assert ns.first == 1 and ns.last in (0, 10)
        del ns.first
        with pytest.raises(AttributeError):
            ns.first  # noqa: B018
        ns._local = "stays here"
        assert "_local" not in repr(ns)
        lst += [20]
        assert lst[-1] == 20


def test_manager_value_array_queue_and_sync_objects():
    with Manager() as manager:
        v = manager.Value("i", 1)
        assert v.get() == 1 and v.value == 1
        assert finished(run(set_value, v)) == [0]
        assert v.value == 42
        arr = manager.Array("i", [1, 2, 3])
        arr[1] = 20
        assert len(arr) == 3 and arr[:] == [1, 20, 3]
        q = manager.Queue(2)
        assert finished(run(put_all, q, ["a", "b"])) == [0]
        with pytest.raises(queue.Full):
            q.put_nowait("c")
        assert [q.get(), q.get()] == ["a", "b"]
        lock, rlock, sem = manager.Lock(), manager.RLock(), manager.BoundedSemaphore(1)
        with lock, rlock, rlock, sem:
            assert not lock.acquire(False) and not sem.acquire(False)
        cond, event, barrier = manager.Condition(), manager.Event(), manager.Barrier(1)
        with cond:
            assert cond.wait(0.01) is False
        event.set()
        assert event.wait(0) and barrier.wait() == 0
        jq = manager.JoinableQueue()
        jq.put(1)
        jq.get()
        jq.task_done()
        jq.join()
        assert manager.Semaphore(3).get_value() == 3


def test_manager_value_stores_any_object_as_it_is():
    with Manager() as manager:
        big, text = manager.Value("i", 2**40), manager.Value("c", "hello")
        assert big.value == 2**40 and text.get() == "hello"
        text.value = {"any": [1, 2.5]}
        assert pickle.loads(pickle.dumps(text)).value == {"any": [1, 2.5]}
        assert manager.Value("d", None).value is None


def sort_and_cut(lst):
    lst.sort(reverse=True)
    del lst[::2]


def test_list_proxy_has_the_standard_list_operations():
    with Manager() as manager:
        lst, plain = manager.list([3, 1, 2]), [3, 1, 2]
        for change in (lambda x: x.sort(), lambda x: x.__setitem__(slice(1, 3), ["a"]),
                       lambda x: x.__imul__(3), lambda x: x.__delitem__(slice(None, None, 2)),
                       lambda x: x.sort(key=str, reverse=True), lambda x: x.__setitem__(slice(0, 0), [7, 8])):
            change(lst)
            change(plain)
            assert list(lst) == plain
        assert lst + [0] == plain + [0] and lst * 2 == plain * 2 and 2 * lst == 2 * plain
        with pytest.raises(ValueError, match="extended slice"):
            lst[::2] = [1, 2, 3, 4, 5, 6, 7]
        assert list(lst) == plain  # a failed change leaves the list as it was
        nums = manager.list(range(10))
        assert finished(run(sort_and_cut, nums)) == [0]  # in another process, on the same list
        assert list(nums) == [8, 6, 4, 2, 0]


def test_proxies_cannot_be_used_after_shutdown():
    manager = Manager()
    d, lst, ns = manager.dict(a=1), manager.list([1]), manager.Namespace(x=1)
    manager.shutdown()
    for use in (lambda: d["a"], lambda: d.__setitem__("z", 1), lambda: list(lst), lambda: ns.x):
        with pytest.raises(StateError, match="deleted"):
            use()


def test_shutdown_deletes_every_object_the_manager_made():
    r = redis.Redis.from_url(state_url())
    before = set(r.keys("*mp:*"))
    manager = Manager()
    kept = [manager.dict(a=1), manager.list([1]), manager.Namespace(x=1), manager.Queue(), manager.JoinableQueue(),
            manager.Lock(), manager.RLock(), manager.Semaphore(), manager.BoundedSemaphore(), manager.Condition(),
            manager.Event(), manager.Barrier(2), manager.Value("i", 1), manager.Array("i", 3)]
    kept[5].acquire()
    kept[5].release()
    kept[10].set()
    assert set(r.keys("*mp:*")) - before  # they are in the store
    manager.shutdown()
    assert set(r.keys("*mp:*")) - before == set()
    with pytest.raises(AssertionError, match="not yet started"):
        manager.dict()
    manager.shutdown()  # again: nothing to do


def test_sync_manager_must_be_started():
    manager = SyncManager()
    with pytest.raises(AssertionError, match="not yet started"):
        manager.list()
    manager.start()
    with pytest.raises(RuntimeError, match="Already started"):
        manager.start()
    assert manager.list([1, 2])[:] == [1, 2]
    manager.shutdown()
    with SyncManager() as started:  # started by its with block
        assert started.dict(k="v")["k"] == "v"


# --- proxies inside containers: reference counts kept by the server -------------------------------------

def store_keys(*names) -> list:
    r = redis.Redis.from_url(state_url())
    return [key for name in names for key in r.keys(f"*:{name}")]


def read_first_a(outer):
    return outer[0]["a"]


def check_first_a(outer, expected):
    assert read_first_a(outer) == expected


def keep_in(container, proxy):
    container.append(proxy)


def test_a_proxy_stored_in_a_container_outlives_the_proxy_that_made_it():
    manager = Manager()
    outer, inner = manager.list(), manager.dict()
    inner["a"] = 1
    outer.extend([inner, manager.Value("i", 7), manager.Namespace(x=8)])
    names = outer.name, inner.name
    del inner
    gc.collect()
    assert outer[0]["a"] == 1 and outer[1].value == 7 and outer[2].x == 8
    assert finished(run(check_first_a, outer, 1)) == [0]  # the outer passed to and read in a Process
    with mp.Pool(1) as pool:  # and read in a worker
        assert pool.apply(read_first_a, (outer,)) == 1
    outer[0]["a"] = 2
    assert outer[0]["a"] == 2
    del outer
    gc.collect()
    assert store_keys(*names) == []  # the outer went, and the inner with it
    manager.shutdown()


def test_references_follow_the_items_that_hold_them():
    manager = Manager()
    outer, d, lst = manager.dict(), manager.dict(a=1), manager.list([1])
    names = d.name, lst.name
    outer.update(x=d, y=[lst, lst], z=d)
    outer["w"] = lst
    ring = manager.list()
    ring.append(ring)  # a container that holds itself lives until shutdown (as in the standard library)
    del d, lst
    gc.collect()
    assert outer["x"]["a"] == 1 and outer["y"][1][0] == 1
    popped = outer.pop("x")  # a popped proxy keeps its object
    del outer["w"], outer["y"]
    assert outer["z"] is not None and store_keys(names[1]) == []  # no item refers to the list any more
    outer.clear()
    gc.collect()
    assert popped["a"] == 1  # the popped proxy still holds the dict
    del popped
    gc.collect()
    assert store_keys(*names) == []
    assert ring[0] == ring and store_keys(ring.name)
    manager.shutdown()
    assert store_keys(ring.name) == []


def test_a_proxy_stored_by_another_process_and_list_rewrites_keep_the_counts():
    manager = Manager()
    outer, inner = manager.list(), manager.list(["kept"])
    name = inner.name
    assert finished(run(keep_in, outer, inner)) == [0]
    outer.extend([inner, 3])
    del inner
    gc.collect()
    outer.sort(key=str)  # rewrites the whole list: the references move with the items
    outer[1:] = [outer[1]]
    assert [x if isinstance(x, int) else x[:] for x in outer] == [3, ["kept"]]
    outer.remove(3)
    outer.insert(0, outer[0])
    del outer[1]
    assert outer[0][0] == "kept"
    outer.pop()
    gc.collect()
    assert store_keys(name) == []
    manager.shutdown()


def test_a_proxy_to_a_deleted_object_raises_instead_of_reading_empty():
    manager = Manager()
    outer, inner = manager.list(), manager.dict(a=1)
    outer.append(inner)
    data = pickle.dumps(inner)
    copy = outer[0]
    manager.shutdown()
    for handle in (copy, pickle.loads(data)):
        with pytest.raises(StateError, match="deleted"):
            handle["a"]


# --- the standard library's dict iteration, registered types, Pool --------------------------------------

def test_iterating_a_dict_that_changes_size_raises_like_a_dict():
    with Manager() as manager:
        d = manager.dict(a=1, b=2)
        for change in (lambda: d.clear(), lambda: d.__setitem__("c", 3), lambda: d.pop("a")):
            it = iter(d)
            change()
            with pytest.raises(RuntimeError, match="changed size during iteration"):
                list(it)
            d.update(a=1, b=2)
            d.pop("c", None)
        it = iter(d)
        first = next(it)
        d[first] = 10  # a change of value is no change of size, as for a dict
        assert list(it) == [{"a": "b", "b": "a"}[first]]
        expected = {"a": 1, "b": 2, first: 10}
        assert d.keys() == list(d) and sorted(d.items()) == sorted(expected.items())  # lists, as the standard library's
        assert isinstance(d.values(), list) and sorted(d.values()) == sorted(expected.values())


def test_a_list_iterator_reads_as_it_goes():
    with Manager() as manager:
        lst = manager.list(range(300))
        it = iter(lst)
        lst[0] = 100
        assert next(it) == 100  # read at the first next(), as the standard library's iterator
        lst.append(300)
        assert list(it) == list(range(1, 301)) and list(it) == []


class Maths:
    def __init__(self, start=0):
        self.total = start

    def add(self, a, b):
        return a + b

    def accumulate(self, n):
        self.total += n
        return self.total

    def fail(self):
        raise ValueError("refused")

    def _hidden(self):
        return "hidden"


class MathsProxy(BaseProxy):
    _exposed_ = ("accumulate", "_hidden")

    def accumulate(self, n):
        return self._callmethod("accumulate", (n,))


class MathsManager(BaseManager):
    pass


MathsManager.register("Maths", Maths)
MathsManager.register("Hidden", Maths, exposed=("add", "_hidden"))
MathsManager.register("Custom", Maths, proxytype=MathsProxy)


def accumulate(maths, times):
    for _ in range(times):
        maths.accumulate(1)


def test_base_manager_register_makes_shared_objects_in_the_store():
    with MathsManager() as manager:
        maths = manager.Maths(10)
        assert maths.add(4, 3) == 7 and maths.accumulate(5) == 15
        assert [m for m in ("add", "accumulate", "fail", "_hidden") if hasattr(maths, m)] == ["add", "accumulate",
                                                                                               "fail"]
        with pytest.raises(ValueError, match="refused"):
            maths.fail()
        with pytest.raises(RemoteError, match="not in exposed"):
            maths._callmethod("_hidden")
        ps = [run(accumulate, maths, 10) for _ in range(2)]
        accumulate(maths, 10)
        assert finished(*ps) == [0, 0]
        assert maths._getvalue().total == 45 and str(maths).startswith("<test_mp_managers.Maths object")
        hidden = manager.Hidden()
        assert hidden._hidden() == "hidden" and not hasattr(hidden, "accumulate")
        custom = manager.Custom(1)
        assert isinstance(custom, MathsProxy) and custom.accumulate(1) == 2 and custom._callmethod("_hidden")
        assert pickle.loads(pickle.dumps(custom)).accumulate(1) == 3
        with Manager() as other:
            d = other.dict(m=custom)
            del custom
            gc.collect()
            assert d["m"].accumulate(1) == 4  # a registered object in a manager dict lives as long as the item
    with pytest.raises(StateError, match="deleted"):
        maths.add(1, 2)
    with pytest.raises(NotImplementedError, match="method_to_typeid"):
        MathsManager.register("Other", Maths, method_to_typeid={"add": "Maths"})
    assert not hasattr(SyncManager, "Maths")  # registering on a subclass leaves the others alone


def test_sync_manager_pool_is_terminated_at_shutdown():
    with Manager() as manager:
        pool = manager.Pool(2)
        assert pool.map(abs, [-1, -2]) == [1, 2]
    with pytest.raises(ValueError, match="not running"):
        pool.map(abs, [-1])
