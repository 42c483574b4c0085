"""Shared state objects on a real (embedded Valkey) server, used from the client and from workers."""

import os
import pickle
import socket
import stat
import threading
import time
import uuid

import pytest
import redis

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StateError
from cloudbutton.state import AtomicInt, SharedDict, state_url, stop_server
from cloudbutton.state import server as state_server


@pytest.fixture(scope="module", autouse=True)
def _embedded_server():
    """One embedded server for the module, stopped at the end (the session checks no child is left)."""
    yield state_url()
    stop_server()


@pytest.fixture(scope="module")
def fexec():
    with FunctionExecutor(max_workers=2) as executor:
        yield executor


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


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

def test_embedded_server_is_a_private_unix_socket(_embedded_server):
    url = _embedded_server
    assert url.startswith("unix://")
    path = url[len("unix://"):]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    r = redis.Redis(unix_socket_path=path)
    assert r.ping()
    assert r.config_get("port")["port"] == "0"
    r.close()


def test_state_url_is_started_once_per_process(_embedded_server):
    assert state_url() == _embedded_server == state_url()


def test_given_state_url_is_used_instead(_embedded_server):
    assert state_url("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_configured_state_url_is_used_instead(_embedded_server, monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_URL", "redis://127.0.0.1:1/0")
    assert state_url() == "redis://127.0.0.1:1/0"


def test_stop_server_leaves_nothing_and_restarts_on_demand():
    # A separate server instance: start, stop, check the process and its directory are gone.
    server = state_server._EmbeddedServer()
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
    assert a.get() == 0


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
