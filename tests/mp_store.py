"""Checks that the tests of cloudbutton.multiprocessing's shared objects leave nothing in the state store."""

import gc
import weakref

import redis

from cloudbutton.multiprocessing.synchronize import _delete


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
    """Delete what live objects still own (e.g. arguments of finished Processes, which the Process runner
    keeps), then check the store holds no ``mp:`` object."""
    for finalizer in [f for f, info in list(weakref.finalize._registry.items()) if info.func is _delete]:
        finalizer()
    left = redis.Redis.from_url(url).keys("*mp:*")
    assert not left, f"left in the store: {left}"
