"""Shared state objects on a real (embedded Valkey) server, used from the client and from workers."""

import contextlib
import gc
import os
import pickle
import socket
import stat
import threading
import time
import uuid
from collections.abc import MutableSequence

import numpy
import pytest
import redis
from calls import Color, Odd, Perm, Tag, unique, until

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StateError
from cloudbutton.state import AtomicFloat, AtomicInt, AtomicReference, SharedDict, SharedList, state_url
from cloudbutton.state import objects as state_objects
from cloudbutton.state import server as state_server

pytestmark = pytest.mark.usefixtures("embedded_server")  # one server for the module


# --- functions run in workers -----------------------------------------------------------------

def bump(counter, times):
    for _ in range(times):
        counter.increment()
    return times


def dict_put(d, i):
    d[f"k{i}"] = i * i
    return len(d)


def dict_read(d, key):
    return d[key], key in d, sorted(d)


# --- the embedded server ----------------------------------------------------------------------

def test_embedded_server_is_a_private_unix_socket(embedded_server):
    url = embedded_server
    assert url.startswith("unix://")
    path = url[len("unix://"):]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    r = redis.Redis(unix_socket_path=path)
    assert r.ping()
    assert r.config_get("port")["port"] == "0"
    r.close()


def test_state_url_is_started_once_per_process(embedded_server):
    assert state_url() == embedded_server == state_url()


def test_given_state_url_is_used_instead(embedded_server):
    assert state_url("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_configured_state_url_is_used_instead(embedded_server, monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_URL", "redis://127.0.0.1:1/0")
    assert state_url() == "redis://127.0.0.1:1/0"


def test_a_stopped_state_server_leaves_no_process_or_directory():
    # A separate server instance: start, stop, check the process and its directory are gone.
    server = state_server.StateServer()
    pid, directory = server.proc.pid, server.dir
    server.stop()
    assert server.proc.poll() is not None
    assert not os.path.exists(directory)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- AtomicInt ---------------------------------------------------------------------------------

def test_atomic_int_basic_operations():
    a = AtomicInt(unique("a"))
    assert a.get() == 0
    a.set(41)
    assert a.increment() == 42
    assert a.decrement(2) == 40
    assert a.add_and_get(10) == 50
    assert a.compare_and_set(50, 7) is True
    assert a.compare_and_set(50, 8) is False
    assert a.get() == 7
    a.delete()
    assert AtomicInt(a.name).get() == 0


def test_atomic_int_initial_is_set_only_once():
    name = unique("a")
    a = AtomicInt(name, initial=5)
    a.increment()
    b = AtomicInt(name, initial=5)
    assert b.get() == 6
    a.delete()


def test_atomic_int_compare_and_set_on_missing_value_is_zero():
    a = AtomicInt(unique("a"))
    assert a.compare_and_set(1, 2) is False
    assert a.compare_and_set(0, 2) is True
    assert a.get() == 2
    a.delete()


def test_atomic_int_rejects_non_integers():
    a = AtomicInt(unique("a"))
    with pytest.raises(TypeError):
        a.set(1.5)
    with pytest.raises(TypeError):
        a.increment("1")


def test_atomic_int_threads_lose_no_update():
    a = AtomicInt(unique("a"))
    threads = [threading.Thread(target=bump, args=(a, 500)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.get() == 2000
    a.delete()


def test_issue_example_counts_exactly_1000_across_workers(fexec):
    hits = AtomicInt(unique("hits"))
    results = fexec.get_result(fexec.map(bump, [(hits, 10)] * 100))
    assert sum(results) == 1000
    assert hits.get() == 1000
    hits.delete()


def test_captured_handle_works_in_worker(fexec):
    hits = AtomicInt(unique("hits"))

    def work(i):
        hits.increment()
        return i

    assert fexec.get_result(fexec.map(work, range(200))) == list(range(200))
    assert hits.get() == 200
    hits.delete()


def test_pickled_handle_keeps_name_and_url_and_reconnects(fexec):
    a = AtomicInt(unique("a"), initial=3)
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and copy.url == a.url and copy._redis is None
    assert copy.increment() == 4
    assert fexec.get_result(fexec.call_async(bump, (pickle.loads(pickle.dumps(a)), 6))) == 6
    assert a.get() == 10
    a.delete()


# --- SharedDict ---------------------------------------------------------------------------------

def test_shared_dict_is_a_mutable_mapping():
    d = SharedDict(unique("d"))
    assert len(d) == 0 and dict(d) == {}
    d["a"] = 1
    d[(1, "x")] = {"nested": [1, 2]}
    d[7] = None
    assert d["a"] == 1 and d[(1, "x")] == {"nested": [1, 2]} and d[7] is None
    assert len(d) == 3
    assert set(d) == {"a", (1, "x"), 7}
    assert "a" in d and "b" not in d and [1] not in d
    del d["a"]
    assert "a" not in d
    with pytest.raises(KeyError):
        d["a"]
    with pytest.raises(KeyError):
        del d["a"]
    d.update({"u": 1, "v": 2})
    assert d.get("u") == 1 and d.get("zz", 5) == 5
    assert d.to_dict() == {(1, "x"): {"nested": [1, 2]}, 7: None, "u": 1, "v": 2}
    assert d.pop("u") == 1
    d.clear()
    assert len(d) == 0
    d.delete()


def test_shared_dict_compound_operations_are_atomic(raw):
    d = SharedDict(unique("d"))
    before = calls(raw, "hset")
    d.update({"a": 1, (2, 3): [4]}, b=2)
    assert calls(raw, "hset") - before == 1
    assert d.to_dict() == {"a": 1, (2, 3): [4], "b": 2}
    assert d.setdefault("a", 100) == 1 and d.setdefault("c") is None and d["c"] is None
    assert d.pop((2, 3)) == [4] and d.pop("zz", "dflt") == "dflt"
    with pytest.raises(KeyError):
        d.pop("zz")
    seen = {}
    while d:
        key, value = d.popitem()
        seen[key] = value
    assert seen == {"a": 1, "b": 2, "c": None}
    with pytest.raises(KeyError):
        d.popitem()
    d.update({i: i for i in range(200)})
    popped = []

    def pop_all():
        for i in range(200):
            value = d.pop(i, None)
            if value is not None:
                popped.append(value)

    threads = [threading.Thread(target=pop_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(popped) == list(range(200)) and len(d) == 0  # each value popped exactly once
    d.delete()


def test_shared_dict_from_workers(fexec):
    d = SharedDict(unique("d"))
    fexec.get_result(fexec.map(dict_put, [(d, i) for i in range(20)]))
    assert len(d) == 20
    assert d.to_dict() == {f"k{i}": i * i for i in range(20)}
    value, present, keys = fexec.get_result(fexec.call_async(dict_read, (d, "k3")))
    assert value == 9 and present and keys == sorted(f"k{i}" for i in range(20))
    d.delete()


def test_unpicklable_value_is_a_type_error_at_the_call_site():
    d = SharedDict(unique("d"))
    with pytest.raises(TypeError, match="cannot store"):
        d["lock"] = threading.Lock()
    with pytest.raises(TypeError):
        d[["unhashable"]] = 1
    assert len(d) == 0
    d.delete()


# --- errors -------------------------------------------------------------------------------------

def test_a_name_used_with_two_types_is_an_error():
    name = unique("clash")
    AtomicInt(name).increment()
    with pytest.raises(StateError, match=f"{name}.*AtomicInt.*SharedDict"):
        SharedDict(name)
    AtomicInt(name).delete()
    SharedDict(name)["x"] = 1  # after delete the name is free again
    SharedDict(name).delete()


def test_unreachable_server_is_a_state_error_naming_the_url_quickly():
    start = time.monotonic()
    with pytest.raises(StateError, match="redis://127.0.0.1:1"):
        AtomicInt("x", url="redis://127.0.0.1:1")
    missing = "unix:///nonexistent/cloudbutton.sock"
    with pytest.raises(StateError, match=missing):
        SharedDict("x", url=missing)
    assert time.monotonic() - start < 10


def test_something_else_at_the_url_is_a_state_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_like_http():
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_like_http, daemon=True)
    thread.start()
    with pytest.raises(StateError, match=f"redis://127.0.0.1:{port}"):
        AtomicInt("x", url=f"redis://127.0.0.1:{port}")
    thread.join(5)
    listener.close()


def test_password_is_not_shown_in_errors():
    with pytest.raises(StateError) as info:
        AtomicInt("x", url="redis://user:secret@127.0.0.1:1")
    assert "secret" not in str(info.value)


def test_bad_name_is_a_value_error():
    with pytest.raises(ValueError):
        AtomicInt("")


def _increment_by_name(name):
    from cloudbutton.state import AtomicInt as Counter

    return Counter(name).increment()


def test_a_worker_creating_an_object_by_name_uses_the_callers_server():
    name = f"by-name-{uuid.uuid4().hex}"
    counter = AtomicInt(name, initial=0)  # starts (or reuses) this process's embedded server
    with FunctionExecutor(max_workers=2) as fexec:
        fexec.get_result(fexec.map(_increment_by_name, [name] * 20))
    assert counter.get() == 20
    counter.delete()


# --- helpers for the objects below ----------------------------------------------------------------

@pytest.fixture
def raw(embedded_server):
    """A plain redis-py client of the embedded server, to look at what is stored."""
    client = redis.Redis.from_url(embedded_server)
    yield client
    client.close()


def calls(raw_client, command: str) -> int:
    return raw_client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def cas_increment(ref, times):
    for _ in range(times):
        while True:
            current = ref.get()
            if ref.compare_and_set(current, current + 1):
                break
    return times


def float_add(number, times):
    for _ in range(times):
        number.add(0.5)
    return times


def list_append(items, i):
    items.append(i)
    return i


def settings_and_bump(counter):
    return counter.ttl, counter.consistency, counter.replicas, counter.increment()


# --- AtomicFloat ----------------------------------------------------------------------------------

def test_atomic_float_basic_operations():
    f = AtomicFloat(unique("f"))
    assert f.get() == 0.0 and isinstance(f.get(), float)
    assert f.add(0.1) == 0.1
    assert f.add_and_get(0.2) == 0.1 + 0.2  # exact IEEE double arithmetic, like Python's
    assert f.get() == 0.1 + 0.2
    f.set(2)
    assert f.compare_and_set(2.0, -1.25) is True
    assert f.compare_and_set(2.0, 3.0) is False
    assert f.get() == -1.25
    assert AtomicFloat(f.name, initial=9.0).get() == -1.25  # initial only if missing
    f.delete()


def test_atomic_float_rejects_bad_values_and_keeps_its_value():
    f = AtomicFloat(unique("f"), initial=1e308)
    with pytest.raises(TypeError):
        f.set("1.0")
    with pytest.raises(TypeError):
        f.add(True)
    with pytest.raises(ValueError, match="finite"):
        f.set(float("nan"))
    with pytest.raises(ValueError, match=f"{f.name}.*infinite"):
        f.add(1e308)
    assert f.get() == 1e308
    f.delete()


def test_atomic_float_threads_and_workers_lose_no_update(fexec):
    f = AtomicFloat(unique("f"))
    threads = [threading.Thread(target=float_add, args=(f, 250)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(fexec.get_result(fexec.map(float_add, [(f, 25)] * 8))) == 200
    assert f.get() == 600.0
    f.delete()


# --- AtomicReference ------------------------------------------------------------------------------

def test_atomic_reference_operations():
    ref = AtomicReference(unique("r"))
    assert ref.get() is None
    assert ref.compare_and_set(None, {"a": 1, "b": [2]}) is True
    value = ref.get()
    value["b"].append(3)  # a local copy: the stored value does not change
    assert ref.get() == {"a": 1, "b": [2]}
    assert ref.compare_and_set({"b": [2], "a": 1}, 1.0) is True  # equal, though it pickles differently
    assert ref.compare_and_set(2, "no") is False
    assert ref.compare_and_set(1, ("t",)) is True  # 1 == 1.0
    assert ref.get_and_set(None) == ("t",)
    assert ref.get() is None
    ref.set(frozenset({1}))
    assert AtomicReference(ref.name, initial="ignored").get() == frozenset({1})
    ref.delete()


def test_atomic_reference_compare_and_set_loses_no_update(fexec):
    ref = AtomicReference(unique("r"), initial=0)
    threads = [threading.Thread(target=cas_increment, args=(ref, 50)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(fexec.get_result(fexec.map(cas_increment, [(ref, 25)] * 8))) == 200
    assert ref.get() == 400
    ref.delete()


# --- SharedList -----------------------------------------------------------------------------------

def test_shared_list_behaves_like_a_list():
    items, model = SharedList(unique("l")), []
    assert isinstance(items, MutableSequence) and len(items) == 0 and items.to_list() == []

    def same():
        assert items.to_list() == model and len(items) == len(model)

    items.append("a"), model.append("a")
    items.extend(range(10)), model.extend(range(10))
    items += [{"k": 1}, None]
    model += [{"k": 1}, None]
    same()
    for i in (0, 3, -1, -12, len(model) - 1):
        assert items[i] == model[i]
    for bad in (len(model), -len(model) - 1):
        with pytest.raises(IndexError):
            items[bad]
        with pytest.raises(IndexError):
            items[bad] = 0
        with pytest.raises(IndexError):
            del items[bad]
    bounds = (None, 0, 1, 5, -1, -4, 11, 100, -100)
    for start in bounds:
        for stop in bounds:
            for step in (None, 1, 2, 3, -1, -2, -5):
                assert items[start:stop:step] == model[start:stop:step], (start, stop, step)
    with pytest.raises(ValueError):
        items[::0]
    items[2], model[2] = "two", "two"
    items[-1], model[-1] = "last", "last"
    for i in (0, 4, -2, 100, -100):
        items.insert(i, f"ins{i}"), model.insert(i, f"ins{i}")
    same()
    del items[3], model[3]
    del items[-2], model[-2]
    assert items.pop() == model.pop() and items.pop(0) == model.pop(0) and items.pop(4) == model.pop(4)
    items.remove("two"), model.remove("two")
    with pytest.raises(ValueError):
        items.remove("absent")
    items.reverse(), model.reverse()
    same()
    assert "a" in items and "absent" not in items
    assert items.index("a") == model.index("a") and items.count(5) == model.count(5)
    assert list(items) == model and list(reversed(items)) == model[::-1]
    with pytest.raises(TypeError):
        items[0:2] = [1, 2]
    with pytest.raises(TypeError):
        del items[0:2]
    items.clear()
    assert len(items) == 0
    with pytest.raises(IndexError):
        items.pop()
    items.delete()


def test_shared_list_extend_is_one_round_trip(raw):
    items = SharedList(unique("l"))
    before = calls(raw, "rpush")
    items.extend(range(100))
    assert calls(raw, "rpush") - before == 1
    assert items.to_list() == list(range(100))
    items.delete()


def test_shared_list_from_workers_and_threads(fexec):
    items = SharedList(unique("l"))
    assert sorted(fexec.get_result(fexec.map(list_append, [(items, i) for i in range(50)]))) == list(range(50))
    assert sorted(items) == list(range(50))
    popped = []

    def pop_all():
        while True:
            try:
                popped.append(items.pop(0))
            except IndexError:
                return

    threads = [threading.Thread(target=pop_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(popped) == list(range(50)) and len(items) == 0  # each item popped exactly once
    items.delete()


def test_unpicklable_items_are_type_errors_and_store_nothing():
    items = SharedList(unique("l"))
    with pytest.raises(TypeError, match="cannot store"):
        items.append(threading.Lock())
    with pytest.raises(TypeError, match="cannot store"):
        items.extend([1, threading.Lock()])
    with pytest.raises(TypeError, match="cannot store"):
        items.insert(0, threading.Lock())
    assert items.to_list() == []
    ref = AtomicReference(unique("r"), initial=1)
    with pytest.raises(TypeError, match="cannot store"):
        ref.set(threading.Lock())
    with pytest.raises(TypeError, match="cannot store"):
        ref.compare_and_set(1, threading.Lock())
    assert ref.get() == 1
    items.delete()
    ref.delete()


# --- ttl ------------------------------------------------------------------------------------------

def test_ttl_expires_the_object_and_its_type_record(raw):
    handles = [AtomicInt(unique("t"), initial=1, ttl=60), AtomicFloat(unique("t"), initial=1.0, ttl=60),
               AtomicReference(unique("t"), initial="x", ttl=60), SharedDict(unique("t"), ttl=60),
               SharedList(unique("t"), ttl=60)]
    handles[3]["k"] = 1
    handles[4].append(1)
    for h in handles:
        assert 0 < raw.pttl(h._key) <= 60_000, h
        assert 0 < raw.pttl(h._type_key) <= 60_000, h
        h.delete()
    never_written = SharedList(unique("t"), ttl=60)
    assert 0 < raw.pttl(never_written._type_key) <= 60_000
    never_written.delete()


def test_ttl_object_leaves_nothing_behind_and_frees_its_name(raw):
    d = SharedDict(unique("t"), ttl=0.2)
    d["k"] = "v"
    until(lambda: raw.exists(d._key, d._type_key) == 0, "the dict and its type record to expire")
    AtomicInt(d.name).increment()  # the name is free for another type
    AtomicInt(d.name).delete()


def test_writes_refresh_the_ttl_and_handles_without_ttl_keep_it(raw):
    name = unique("t")
    with_ttl, without = AtomicInt(name, ttl=60), AtomicInt(name)
    with_ttl.set(1)
    raw.persist(with_ttl._key)
    with_ttl.increment()  # refreshed by every write through a handle with a ttl
    assert raw.pttl(with_ttl._key) > 0
    without.set(5)
    without.increment()
    assert without.compare_and_set(6, 7)
    assert raw.pttl(with_ttl._key) > 0  # never removed by a handle without one
    raw.persist(with_ttl._key)
    assert with_ttl.compare_and_set(7, 8)  # a script write refreshes it too
    assert raw.pttl(with_ttl._key) > 0
    items = SharedList(unique("t"), ttl=60)
    items.extend([1, 3])
    raw.persist(items._key)
    items.insert(1, 2)
    assert items.to_list() == [1, 2, 3] and raw.pttl(items._key) > 0
    items.delete()
    ref = AtomicReference(unique("t"), ttl=60)
    ref.set(1)
    plain = AtomicReference(ref.name)
    plain.set(2)
    assert plain.get_and_set(3) == 2 and plain.compare_and_set(3, 4)
    assert raw.pttl(ref._key) > 0
    with_ttl.delete()
    ref.delete()


def test_settings_travel_with_the_handle_to_workers(fexec, raw):
    counter = AtomicInt(unique("s"), ttl=60, consistency="eventual")
    counter.set(1)
    raw.persist(counter._key)
    assert fexec.get_result(fexec.call_async(settings_and_bump, (counter,))) == (60, "eventual", 0, 2)
    assert raw.pttl(counter._key) > 0  # the worker's write refreshed the ttl
    counter.delete()


# --- delete -------------------------------------------------------------------------------------

def test_operations_after_delete_are_state_errors_naming_the_object(raw):
    handles = [AtomicInt(unique("del"), initial=1), AtomicFloat(unique("del"), initial=1.0),
               AtomicReference(unique("del"), initial=1), SharedDict(unique("del")), SharedList(unique("del"))]
    handles[3]["k"] = 1
    handles[4].append(1)
    for h in handles:
        h.delete()
        assert raw.exists(h._key, h._type_key) == 0
        operations = [lambda h=h: len(h)] if isinstance(h, (SharedDict, SharedList)) else [h.get, lambda h=h: h.set(2)]
        for op in operations:
            with pytest.raises(StateError, match=rf"{type(h).__name__}\('{h.name}'\) was deleted"):
                op()
        h.delete()  # deleting again is harmless


def test_other_handles_see_a_deleted_object_as_new(raw):
    name = unique("del")
    first, second = AtomicInt(name, initial=5), AtomicInt(name)
    assert second.get() == 5
    first.delete()
    assert second.get() == 0
    assert second.increment() == 1  # recreated, with its type record
    assert raw.get(second._type_key) == b"AtomicInt"
    with pytest.raises(StateError, match="already used by a AtomicInt"):
        SharedList(name)
    second.delete()
    SharedList(name).append(1)  # a new handle reuses the name
    SharedList(name).delete()


# --- reference-counted objects ------------------------------------------------------------------

class CountedDict(SharedDict):
    _counted = True


class CountedList(SharedList):
    _counted = True


def nest(outer, inner):
    outer["inner"] = inner
    return outer["inner"]["v"]


def stored(raw_client, *names) -> list:
    return [key for name in names for key in raw_client.keys(f"cloudbutton:*:{name}")]


def test_a_counted_object_lives_while_a_handle_or_an_item_refers_to_it(raw):
    outer, inner = CountedDict(unique("outer")), CountedDict(unique("inner"))
    inner["v"] = 1
    names = outer.name, inner.name
    with FunctionExecutor(max_workers=1) as fexec:  # a worker stores the handle it was given
        assert fexec.get_result(fexec.call_async(nest, (outer, inner))) == 1
    del inner
    gc.collect()
    assert outer["inner"]["v"] == 1
    plain = SharedDict(unique("plain"))
    plain["o"] = (outer, "any value")  # a plain container's items hold references too
    del outer
    gc.collect()
    assert plain["o"][0]["inner"]["v"] == 1 and len(stored(raw, *names)) == 6
    plain.delete()  # drops its items' references: the outer goes, and the inner with it
    gc.collect()
    assert stored(raw, *names) == []


def test_deleting_a_counted_object_ignores_its_count(raw):
    a, b = CountedList(unique("a")), CountedList(unique("b"))
    a.extend([b, b])
    data = pickle.dumps(a)
    assert raw.get(f"cloudbutton:refs:{b.name}") == b"3"
    a.delete()
    assert stored(raw, a.name) == [] and raw.get(f"cloudbutton:refs:{b.name}") == b"1"
    with pytest.raises(StateError, match="was deleted"):
        pickle.loads(data).append(1)
    b.append(1)
    assert b[:] == [1]
    name = b.name
    del b
    gc.collect()
    assert stored(raw, name) == []


# --- review fixes: no resent writes, canonical dict keys, 64-bit ints, bounded caches, scripts -----

class DelayingProxy:
    """A TCP proxy on 127.0.0.1 in front of a unix-socket server; after ``delay_next_reply(s)`` the next
    reply is held ``s`` seconds before it is passed on (a slow network or a busy server)."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.delay = 0.0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            self.sockets += [client, server]
            for args in ((client, server, False), (server, client, True)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                thread.start()
                self.threads.append(thread)

    def _pump(self, source: socket.socket, target: socket.socket, delayed: bool) -> None:
        try:
            while data := source.recv(65536):
                if delayed:
                    with self.lock:
                        delay, self.delay = self.delay, 0.0
                    time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def delay_next_reply(self, seconds: float) -> None:
        with self.lock:
            self.delay = seconds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def private_server():
    server = state_server.StateServer()
    yield server
    server.stop()


def test_a_write_whose_reply_is_late_is_never_sent_twice(private_server, monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_TIMEOUT", "0.3")  # the client made for the proxy's URL gets it
    proxy = DelayingProxy(private_server.socket_path)
    try:
        url = f"redis://127.0.0.1:{proxy.port}"
        counter, items = AtomicInt("counter", url=url), SharedList("items", url=url)
        raw = redis.Redis(unix_socket_path=private_server.socket_path)
        proxy.delay_next_reply(1.0)
        with pytest.raises(StateError, match="unreachable"):
            counter.increment()
        assert len(items) == 0  # a new pooled connection, so the delayed reply is the RPUSH's
        proxy.delay_next_reply(1.0)
        with pytest.raises(StateError, match="unreachable"):
            items.append("x")
        until(lambda: raw.get(counter._key) is not None and raw.llen(items._key) > 0, "the writes to arrive")
        assert raw.get(counter._key) == b"1"  # applied once: the command was not sent again
        assert raw.llen(items._key) == 1
        assert counter.increment() == 2  # the handle goes on with a new connection
        assert raw.client_kill_filter(skipme=True) >= 1  # the server drops the handle's pooled connection
        assert counter.increment() == 3  # replaced on its next use
        raw.close()
    finally:
        proxy.close()


def test_equal_dict_keys_are_one_entry():
    d = SharedDict(unique("keys"))
    word = "".join(["ab", "cd"])
    other = "".join(["abc", "d"])
    assert word == other and word is not other
    d[(word, word)] = 1
    d[(word, other)] = 2  # pickled differently (memo), equal as a key
    d[1] = "int"
    d[1.0] = "float"
    d[True] = "bool"
    d[2.5] = "x"
    d[None] = "none"
    d[b"raw"] = "bytes"
    d[("t", (1, None), b"b")] = "nested"
    assert len(d) == 6
    assert d[("abcd", "abcd")] == 2 and d[1] == d[1.0] == d[True] == "bool"
    assert d.to_dict() == {("abcd", "abcd"): 2, 1: "bool", 2.5: "x", None: "none", b"raw": "bytes",
                           ("t", (1, None), b"b"): "nested"}
    assert type(next(k for k in d if k == 1)) is int
    for bad in (1j, ("ok", 1j), frozenset({1j})):
        with pytest.raises(TypeError, match="complex"):
            d[bad] = 1
        assert bad not in d
    d.delete()


def test_frozenset_and_enum_keys_are_one_entry_whatever_their_order():
    d = SharedDict(unique("keys"))
    a = frozenset(["x", "y", 3, (1, 2)])
    b = frozenset([(1, 2), 3, "y", "x"])  # equal, iterating in another order maybe
    d[a], d[b], d[Color.RED], d[frozenset()] = 1, 2, "red", "empty"
    assert len(d) == 3 and d[a] == 2
    assert set(d) == {a, Color.RED, frozenset()}
    assert Color.RED in d and Color.GREEN not in d
    d.delete()


def test_every_enum_member_is_a_key_and_those_equal_to_plain_values_are_those_values():
    d = SharedDict(unique("keys"))
    for key in (Perm.R | Perm.W, Perm(0), Odd["a:b"]):
        d[key] = str(key)
    d[Tag.X], d[b"x"] = "tag", "bytes"  # a bytes Enum equals its value: one key, as in a dict
    d[numpy.float64(0.5)], d[0.5] = "numpy", "float"
    assert len(d) == 5 and d[b"x"] == "bytes" and d[0.5] == "float"
    assert set(d) == {Perm.R | Perm.W, Perm(0), Odd["a:b"], b"x", 0.5}
    d.delete()


def test_popitem_of_a_key_this_process_cannot_read_keeps_the_entry():
    d = SharedDict(unique("keys"))
    d["ok"] = 1
    r = redis.Redis.from_url(d.url)
    r.hset(d._key, b"e" + state_objects._joined([b"no_such_module", b"Gone", b"i1"]), pickle.dumps(2))
    r.hdel(d._key, "sok")
    with pytest.raises(StateError, match="no_such_module"):
        d.popitem()
    assert r.hlen(d._key) == 1  # put back: nothing was lost
    d.delete()


def test_atomic_int_is_64_bit_and_overflow_is_an_overflow_error():
    a = AtomicInt(unique("big"))
    for bad in (2**63, -(2**63) - 1, 2**70):
        with pytest.raises(OverflowError):
            a.set(bad)
        with pytest.raises(OverflowError):
            a.increment(bad)
    a.set(2**63 - 1)
    with pytest.raises(OverflowError, match="overflow"):
        a.increment()
    assert a.get() == 2**63 - 1
    a.set(-(2**63))
    with pytest.raises(OverflowError):
        a.decrement()
    assert a.get() == -(2**63)
    a.delete()


def test_the_names_a_process_remembers_are_bounded(monkeypatch):
    monkeypatch.setattr(state_objects._checked, "MAX", 5)
    handles = [AtomicInt(unique("many")) for _ in range(12)]
    assert len(state_objects._checked) <= 5
    assert handles[0].increment() == 1  # forgotten names are claimed again
    with pytest.raises(StateError, match="already used"):
        SharedDict(handles[1].name)
    for h in handles:
        h.delete()


def test_stopping_a_server_drops_this_processs_clients_for_it():
    server = state_server.StateServer()
    counter = AtomicInt("c", url=server.url, consistency="eventual")
    counter.increment()
    assert counter.get() == 1
    assert (server.url, False) in state_objects._clients and server.url in state_objects._trackers
    server.stop()
    assert (server.url, False) not in state_objects._clients and server.url not in state_objects._trackers
    assert not any(token[0] == server.url for token in state_objects._checked._items)


def test_scripts_in_pipelines_are_not_checked_before_every_call(private_server):
    stats = redis.Redis(unix_socket_path=private_server.socket_path)
    f = AtomicFloat("f", url=private_server.url, ttl=60)
    ref = AtomicReference("r", url=private_server.url, ttl=60)
    stats.config_resetstat()
    for _ in range(5):
        f.add(1.0)
        ref.compare_and_set(ref.get(), 1)
    commands = stats.info("commandstats")
    assert "cmdstat_script|exists" not in commands
    assert commands["cmdstat_evalsha"]["calls"] == 10
    stats.script_flush()  # a server that lost its scripts: loaded again, the write applied once
    assert f.add(1.0) == 6.0
    assert stats.pttl(f._key) > 0
    stats.close()
