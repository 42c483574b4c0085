"""Checks that the tests of cloudbutton.multiprocessing's shared objects leave nothing in the state store."""

import gc
import weakref

import pytest
import redis

from cloudbutton import multiprocessing as mp
from cloudbutton.multiprocessing.synchronize import _delete
from cloudbutton.state import state_url, stop_server


def _owned() -> set[str]:
    """Names of the store objects that a live object of this process still owns."""
    return {handle.name for info in list(weakref.finalize._registry.values()) if info.func is _delete
            for handle in info.args[0]}


def _leftovers(url: str) -> list[str]:
    """The names of the ``mp:`` objects in the store that no live object owns."""
    gc.collect()
    owned = _owned()
    keys = [key.decode() for key in redis.Redis.from_url(url).keys("*mp:*")]
    return sorted({key[key.index("mp:"):] for key in keys} - owned)


def assert_no_orphans(url: str) -> None:
    left = _leftovers(url)
    assert not left, f"left in the store with no owner: {left}"


def assert_all_deleted(url: str) -> None:
    """Delete what live objects still own (e.g. objects a test module keeps at module level), then check the
    store holds no ``mp:`` object."""
    for finalizer in [f for f, info in list(weakref.finalize._registry.items()) if info.func is _delete]:
        finalizer()
    left = redis.Redis.from_url(url).keys("*mp:*")
    assert not left, f"left in the store: {left}"


@pytest.fixture(scope="module", autouse=True)
def mp_store():
    """One embedded server for the module, holding nothing of ours at the end, then stopped (the session
    checks no child is left). Test modules use it by importing it."""
    url = state_url()
    yield url
    assert_all_deleted(url)
    stop_server()


@pytest.fixture(autouse=True)
def no_orphans(mp_store):
    yield
    assert_no_orphans(mp_store)


def run(target, *args):
    """Start a Process running ``target(*args)``; return it."""
    p = mp.Process(target=target, args=args)
    p.start()
    return p


def finished(*processes):
    """Join ``processes`` (at most 60 s each) and return their exit codes."""
    for p in processes:
        p.join(60)
        assert not p.is_alive(), f"{p} is still running"
    return [p.exitcode for p in processes]
