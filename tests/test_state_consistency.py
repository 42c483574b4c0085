"""Tunable consistency on a real primary and a real replica (two valkey-server processes).

The primary listens on a unix socket and on a free port of 127.0.0.1 (the replica needs a TCP address to
replicate from); the replica listens on a unix socket only. Both are stopped at the end.
"""

import os
import pickle
import shutil
import signal
import subprocess
import tempfile

import pytest
import redis
from calls import free_port, unique, until

from cloudbutton.errors import StateError
from cloudbutton.state import AtomicInt, AtomicReference, SharedDict, SharedList
from cloudbutton.state.server import _set_pdeathsig, find_server_binary


class Valkey:
    """A valkey-server child process in a private directory, without persistence."""

    def __init__(self, port: int = 0, replicaof: int | None = None):
        self.dir = tempfile.mkdtemp(prefix="cb-consistency-")
        self.socket = os.path.join(self.dir, "valkey.sock")
        self.port = port
        args = [find_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", self.socket,
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "server.log"), "--repl-diskless-sync-delay", "0"]
        if replicaof:
            args += ["--replicaof", "127.0.0.1", str(replicaof)]
        # its own session (a Ctrl-C reaches only the tests) and SIGTERM if the test process dies
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_set_pdeathsig)
        self.raw = redis.Redis(unix_socket_path=self.socket)
        try:
            until(self._ready, f"valkey on {self.socket} to answer")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"valkey exited: {open(os.path.join(self.dir, 'server.log')).read()}"
        try:
            return self.raw.ping()
        except redis.ConnectionError:
            return False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.raw.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_pair() -> tuple[Valkey, Valkey]:
    primary = Valkey(port=free_port())
    replica = None
    try:
        replica = Valkey(replicaof=primary.port)
        until(lambda: replica.raw.info("replication")["master_link_status"] == "up", "the replica to sync")
        until(lambda: primary.raw.info("replication")["connected_slaves"] == 1, "the primary to see its replica")
    except BaseException:
        if replica is not None:
            replica.stop()
        primary.stop()
        raise
    return primary, replica


@pytest.fixture(scope="module")
def pair():
    primary, replica = start_pair()
    yield primary, replica
    replica.stop()
    primary.stop()


@pytest.fixture
def own_pair(monkeypatch):
    """A pair for one test, with a short state_timeout (the tests that break a server use it)."""
    monkeypatch.setenv("CLOUDBUTTON_STATE_TIMEOUT", "1")
    primary, replica = start_pair()
    yield primary, replica
    replica.stop()
    primary.stop()


def calls(server: Valkey, command: str) -> int:
    """How many times ``command`` ran on ``server`` (from INFO commandstats)."""
    return server.raw.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


# --- strong ---------------------------------------------------------------------------------------

def test_strong_reads_from_another_client_are_never_stale(pair):
    primary, _ = pair
    name = unique("strong")
    writer = AtomicInt(name, url=primary.url)
    reader = AtomicInt(name, url=primary.tcp_url)  # another URL of the same server: another client and pool
    for i in range(200):
        writer.set(i)
        assert reader.get() == i
    writer.delete()


def test_replicas_1_write_is_on_the_replica_when_it_returns(pair):
    primary, replica = pair
    counter = AtomicInt(unique("replicated"), url=primary.url, replicas=1)
    items = SharedList(unique("replicated"), url=primary.url, replicas=1)
    for i in range(1, 51):
        assert counter.increment() == i
        assert replica.raw.get(counter._key) == str(i).encode()
        items.append(i)
        assert replica.raw.llen(items._key) == i
    assert counter.compare_and_set(50, -1)  # a Lua script write
    assert replica.raw.get(counter._key) == b"-1"
    items.insert(0, "first")
    assert replica.raw.lindex(items._key, 0) == pickle.dumps("first", protocol=pickle.HIGHEST_PROTOCOL)
    counter.delete()
    assert replica.raw.exists(counter._key, counter._type_key) == 0
    items.delete()


def test_more_replicas_than_exist_is_a_state_error_and_the_write_stays_on_the_primary(own_pair):
    primary, _ = own_pair
    ref = AtomicReference(unique("two"), url=primary.url, replicas=2)
    with pytest.raises(StateError, match=r"AtomicReference\('two-.*acknowledged by 1 of 2 replicas"):
        ref.set({"x": 1})
    assert AtomicReference(ref.name, url=primary.url).get() == {"x": 1}


def test_stopped_replica_makes_a_replicated_write_fail_rather_than_hang(own_pair):
    primary, replica = own_pair
    counter = AtomicInt(unique("lonely"), url=primary.url, replicas=1)
    assert counter.increment() == 1
    replica.stop()
    with pytest.raises(StateError, match=f"{counter.name}.*acknowledged by 0 of 1 replicas.*primary only"):
        counter.increment()
    assert AtomicInt(counter.name, url=primary.url).get() == 2  # nothing lost: the write is on the primary


# --- eventual -------------------------------------------------------------------------------------

def test_eventual_reads_come_from_the_cache(pair):
    primary, _ = pair
    name = unique("cached")
    AtomicInt(name, initial=5, url=primary.url)
    eventual = AtomicInt(name, url=primary.url, consistency="eventual")
    strong = AtomicInt(name, url=primary.url)
    before = calls(primary, "get")
    for _ in range(100):
        assert eventual.get() == 5
    assert calls(primary, "get") - before <= 1
    for _ in range(100):
        assert strong.get() == 5
    assert calls(primary, "get") - before >= 100
    strong.delete()


def test_eventual_reads_converge_after_a_write_by_another_client(pair):
    primary, _ = pair
    name = unique("converge")
    eventual = AtomicInt(name, url=primary.url, consistency="eventual")
    other = AtomicInt(name, url=primary.tcp_url)
    assert eventual.get() == 0
    for value in (7, 8, 9):
        other.set(value)
        until(lambda value=value: eventual.get() == value, f"the eventual read to see {value}")
    primary.raw.incr(eventual._key)  # a plain client, not a cloudbutton handle
    until(lambda: eventual.get() == 10, "the eventual read to see 10")
    other.delete()


def test_eventual_reads_see_this_process_writes_at_once(pair):
    primary, _ = pair
    name = unique("own")
    eventual = SharedDict(name, url=primary.url, consistency="eventual")
    strong = SharedDict(name, url=primary.url)
    for i in range(50):
        eventual[i] = i
        assert eventual[i] == i and len(eventual) == i + 1
        strong[i] = -i  # another handle of this process
        assert eventual[i] == -i
    strong.delete()


def test_eventual_containers_converge_after_writes_delete_and_expiry_elsewhere(pair):
    primary, _ = pair
    items = SharedList(unique("list"), url=primary.url, consistency="eventual")
    other = SharedList(items.name, url=primary.tcp_url)
    assert items.to_list() == [] and len(items) == 0 and items[0:2] == []
    other.extend([1, 2, 3])
    until(lambda: items.to_list() == [1, 2, 3] and len(items) == 3 and items[0:2] == [1, 2], "the list")
    assert items[-1] == 3
    other[-1] = 30
    until(lambda: items[-1] == 30, "the new last item")
    other.delete()
    until(lambda: len(items) == 0 and items.to_list() == [], "the deleted list to read empty")

    d = SharedDict(unique("dict"), url=primary.url, consistency="eventual")
    expiring = SharedDict(d.name, url=primary.tcp_url, ttl=0.2)
    expiring["k"] = "v"
    until(lambda: d.get("k") == "v", "the dict item")
    until(lambda: "k" not in d and d.to_dict() == {}, "the expired dict to read empty")


def test_eventual_reads_stop_when_the_server_stops(own_pair):
    primary, replica = own_pair
    eventual = AtomicInt(unique("gone"), initial=3, url=primary.url, consistency="eventual")
    assert eventual.get() == 3
    replica.stop()
    primary.stop()

    def fails() -> bool:
        try:
            eventual.get()
        except StateError as e:
            assert primary.socket in str(e) and eventual.name in str(e)
            return True
        return False

    until(fails, "the cache to be dropped once the invalidation connection is lost")


def test_eventual_reads_stop_when_the_server_falls_silent(own_pair):
    primary, _ = own_pair
    eventual = AtomicInt(unique("silent"), initial=4, url=primary.url, consistency="eventual")
    assert eventual.get() == 4
    os.kill(primary.proc.pid, signal.SIGSTOP)  # alive but answering nothing, like a partitioned server
    try:
        def fails() -> bool:
            try:
                eventual.get()
            except StateError as e:
                assert "unreachable" in str(e) and eventual.name in str(e)
                return True
            return False

        until(fails, "the cache to be dropped once the server stops answering the invalidation connection")
    finally:
        os.kill(primary.proc.pid, signal.SIGCONT)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="consistency"):
        AtomicInt("x", url="redis://127.0.0.1:1", consistency="weak")
    with pytest.raises(ValueError, match="replicas"):
        SharedList("x", url="redis://127.0.0.1:1", replicas=-1)
    with pytest.raises(ValueError, match="ttl"):
        SharedDict("x", url="redis://127.0.0.1:1", ttl=0)
