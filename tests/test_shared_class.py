"""User-defined shared objects (`@shared`) on a real embedded Valkey server, used from threads and workers."""

from __future__ import annotations

import pickle
import threading

import cloudpickle
import numpy as np
import pytest
import redis
from calls import unique, until

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StateError
from cloudbutton.state import AtomicInt, SharedClassObject, shared
from cloudbutton.state.server import StateServer

pytestmark = pytest.mark.usefixtures("embedded_server")  # one server for the module


@shared
class Ledger:
    """A counter plus the list of every token added: a lost update shows as a missing token."""

    LIMIT = 10**9

    def __init__(self, start=0):
        self.total = start
        self.tokens = []

    def add(self, amount, token=None):
        self.total += amount
        if token is not None:
            self.tokens.append(token)
        return self.total

    def fail_after_change(self):
        self.total += 1000
        raise KeyError("no such thing")

    def keep(self, value):
        self.kept = value

    @property
    def doubled(self):
        return self.total * 2

    @property
    def level(self):
        return self.total

    @level.setter
    def level(self, value):
        self.total = value


@shared
class Accounts:
    """Two balances whose sum never changes: a reader must never see one half of a transfer."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def transfer(self, amount):
        self.a -= amount
        self.b += amount

    def total(self):
        return self.a + self.b


@shared
class Accumulator:
    def __init__(self, k, d):
        self.sums = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)

    def add(self, sums, counts):
        self.sums += sums
        self.counts += counts

    def get(self):
        return self


# --- functions run in workers ------------------------------------------------------------------------

def add_tokens(ledger, worker, times):
    for i in range(times):
        ledger.add(1, f"{worker}:{i}")
    return times


def transfer_or_read(accounts, i):
    if i % 2:
        for _ in range(20):
            accounts.transfer(1 if i % 4 == 1 else -1)
        return None
    return {accounts.total() for _ in range(20)}


def accumulate(name, row):
    acc = Accumulator(name)  # attach by name in the worker
    for _ in range(10):
        acc.add(np.full((2, 3), row, dtype=float), np.array([1, 2]))


# --- construction and calls --------------------------------------------------------------------------

def test_first_construction_initialises_later_ones_attach():
    name = unique("ledger")
    first = Ledger(name, 5)
    assert isinstance(first, SharedClassObject) and isinstance(first, Ledger)
    assert first.add(1) == 6
    later = Ledger(name, 100)  # exists: the arguments are ignored
    assert later.add(1) == 7
    assert Ledger(name).doubled == 14  # the name alone attaches
    assert Ledger.LIMIT == 10**9 and Ledger.__doc__.startswith("A counter")
    assert repr(first) == f"Ledger({name!r})"
    first.delete()


def test_methods_and_properties_apply_to_the_stored_state():
    name = unique("ledger")
    ledger = Ledger(name)
    assert ledger.add(3, "t") == 3
    ledger.level = 10
    assert ledger.level == 10 and ledger.doubled == 20
    ledger.keep({"nested": [1, 2]})
    other = Ledger(name)
    assert other.add(1) == 11
    assert (other.level, other.doubled) == (11, 22)
    ledger.delete()


def test_initial_state_from_the_constructors_arguments_and_keywords():
    acc = Accumulator(unique("acc"), k=2, d=3)
    local = acc.get()
    assert type(local) is Accumulator.__wrapped__
    assert local.sums.shape == (2, 3) and local.counts.tolist() == [0, 0]
    acc.delete()


def test_a_method_that_raises_changes_nothing():
    ledger = Ledger(unique("ledger"), 1)
    with pytest.raises(KeyError, match="no such thing"):
        ledger.fail_after_change()
    assert ledger.level == 1
    ledger.delete()


def test_an_unpicklable_state_is_a_type_error_and_changes_nothing():
    ledger = Ledger(unique("ledger"), 1)
    with pytest.raises(TypeError, match="cannot store the state of Ledger"):
        ledger.keep(threading.Lock())
    assert ledger.add(1) == 2
    ledger.delete()


def test_a_call_that_changes_nothing_writes_nothing():
    ledger = Ledger(unique("ledger"), 1)
    r = redis.Redis.from_url(ledger.url)
    version = r.hget(ledger._key, "v")
    assert ledger.doubled == 2 and ledger.level == 1
    assert r.hget(ledger._key, "v") == version
    ledger.add(1)
    assert r.hget(ledger._key, "v") != version
    r.close()
    ledger.delete()


def test_handles_pickle_as_name_and_url():
    ledger = Ledger(unique("ledger"), 4)
    copy = pickle.loads(cloudpickle.dumps(ledger))
    assert copy == ledger and copy.url == ledger.url and copy._redis is None
    assert copy.add(1) == 5 and ledger.level == 5
    ledger.delete()


# --- errors --------------------------------------------------------------------------------------------

def test_a_deleted_object_is_a_state_error_naming_it():
    name = unique("ledger")
    ledger, other = Ledger(name), Ledger(name)
    ledger.delete()
    with pytest.raises(StateError, match=f"Ledger\\('{name}'\\)"):
        ledger.add(1)
    with pytest.raises(StateError, match=f"Ledger\\('{name}'\\).*does not exist.*deleted"):
        other.add(1)  # another handle, attached before the delete
    assert Ledger(name, 3).level == 3  # constructing it again re-creates it
    assert other.add(1) == 4
    Ledger(name).delete()


def test_a_name_used_by_another_type_is_a_state_error():
    name = unique("clash")
    AtomicInt(name).increment()
    with pytest.raises(StateError, match=f"{name}.*AtomicInt.*Ledger"):
        Ledger(name)
    AtomicInt(name).delete()
    Ledger(name)
    with pytest.raises(StateError, match=f"{name}.*Ledger.*Accounts"):
        Accounts(name, 1, 2)
    Ledger(name).delete()


def test_an_unreachable_store_is_a_state_error_naming_the_url():
    with pytest.raises(StateError, match="redis://127.0.0.1:1"):
        Ledger("x", url="redis://127.0.0.1:1")


def test_decorating_a_class_that_uses_a_handle_attribute_is_a_type_error():
    for reserved in ("name", "url", "delete"):
        with pytest.raises(TypeError, match=f"Bad.{reserved} clashes"):
            shared(type("Bad", (), {reserved: lambda self: None}))
    with pytest.raises(TypeError, match="decorates a class"):
        shared(lambda: None)
    with pytest.raises(TypeError, match="Slotted has no instance __dict__"):
        shared(type("Slotted", (), {"__slots__": ("x",)}))


# --- concurrency ---------------------------------------------------------------------------------------

def test_threads_lose_no_update():
    ledger = Ledger(unique("ledger"))
    threads = [threading.Thread(target=add_tokens, args=(ledger, f"t{t}", 100)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.level == 400
    assert sorted(_tokens(ledger)) == sorted(f"t{t}:{i}" for t in range(4) for i in range(100))
    ledger.delete()


def _tokens(ledger):
    """The stored list of tokens, read straight from the server."""
    r = redis.Redis.from_url(ledger.url)
    try:
        return pickle.loads(r.hget(ledger._key, "s"))["tokens"]
    finally:
        r.close()


@pytest.mark.parametrize("workers", [2, 4])
def test_worker_processes_lose_no_update(workers):
    ledger = Ledger(unique("ledger"))
    calls = 4 * workers
    with FunctionExecutor(max_workers=workers) as fexec:
        done = fexec.get_result(fexec.map(add_tokens, [(ledger, f"w{c}", 50) for c in range(calls)]))
    assert sum(done) == calls * 50
    assert ledger.level == calls * 50
    assert sorted(_tokens(ledger)) == sorted(f"w{c}:{i}" for c in range(calls) for i in range(50))
    ledger.delete()


def test_readers_never_see_half_of_a_call(fexec):
    accounts = Accounts(unique("accounts"), 1000, 0)
    results = fexec.get_result(fexec.map(transfer_or_read, [(accounts, i) for i in range(16)]))
    seen = set().union(*(r for r in results if r is not None))
    assert seen == {1000}
    assert accounts.total() == 1000
    accounts.delete()


def test_numpy_accumulator_from_workers_by_name(fexec):
    name = unique("centroids")
    acc = Accumulator(name, 2, 3)
    fexec.get_result(fexec.map(accumulate, [(name, row) for row in range(8)]))
    local = acc.get()
    np.testing.assert_array_equal(local.sums, np.full((2, 3), 10.0 * sum(range(8))))
    assert local.counts.tolist() == [80, 160]
    acc.delete()


# --- review fixes ----------------------------------------------------------------------------------------

@shared
class Tally:
    def __init__(self):
        self.n = 0
        self.words = ("".join(["ab", "cd"]), "".join(["abc", "d"]))  # equal strings, pickled twice

    def bump(self):
        self.n += 1

    def bump_after_two_ticks(self, ticks):
        """Add 1, but only after another writer bumped since the state was read (so the swap always fails)."""
        target = ticks.get() + 2
        until(lambda: ticks.get() >= target, "the other writer")
        self.n += 1

    def same_words(self):
        self.words = (self.words[0], self.words[0])  # equal, but pickled with a memo reference

    @property
    def count(self):
        return self.n

    @count.deleter
    def count(self):
        self.n = 0

    @staticmethod
    def describe(x):
        return f"tally {x}"


def test_a_call_that_leaves_an_equal_state_writes_nothing():
    tally = Tally(unique("tally"))
    r = redis.Redis.from_url(tally.url)
    version = r.hget(tally._key, "v")
    tally.same_words()
    assert r.hget(tally._key, "v") == version
    r.close()
    tally.delete()


def test_property_deleters_and_static_methods_are_kept():
    tally = Tally(unique("tally"))
    tally.bump()
    assert tally.count == 1
    del tally.count
    assert tally.count == 0
    assert tally.describe(3) == "tally 3"
    tally.delete()


def test_a_classmethod_is_a_type_error_at_decoration():
    with pytest.raises(TypeError, match="Made.make is a classmethod"):
        shared(type("Made", (), {"make": classmethod(lambda cls: cls())}))


def test_a_call_that_keeps_losing_gives_up_after_state_timeout(monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_TIMEOUT", "0.5")  # the client made for this new URL gets it
    server = StateServer()
    stop = threading.Event()
    try:
        tally, ticks = Tally("tally", url=server.url), AtomicInt("ticks", url=server.url)

        def keep_writing():
            other = Tally("tally", url=server.url)
            while not stop.is_set():
                other.bump()
                ticks.increment()

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            with pytest.raises(StateError, match=r"Tally\('tally'\) lost to other writers"):
                tally.bump_after_two_ticks(ticks)
        finally:
            stop.set()
            writer.join(60)
        assert not writer.is_alive()
        n = tally.count
        assert n == ticks.get()  # every bump of the writer, none of the call that gave up
    finally:
        server.stop()
