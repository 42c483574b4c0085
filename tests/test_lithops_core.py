"""What cloudbutton.lithops needs, built in cloudbutton itself: on the core FunctionExecutor and Storage,
with real local workers and real files."""

import os
import pickle
import time
from pathlib import Path

import pytest

import cloudbutton
from cloudbutton import ALL_COMPLETED, FunctionExecutor, RetryingFunctionExecutor
from cloudbutton.storage import CloudObject, Storage


@pytest.fixture
def sfexec(tmp_path):
    with FunctionExecutor(max_workers=2, storage_url=f"file://{tmp_path / 'store'}") as executor:
        yield executor


def inc(x):
    return x + 1


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


def attempt(path, plan):
    """Counts its attempts in ``path``; what attempt n does is ``plan[n]``: "raise", "exit", a number of
    seconds to sleep, or (past the plan) return the attempt's number."""
    n = int(Path(path).read_text()) if Path(path).exists() else 0
    Path(path).write_text(str(n + 1))
    step = plan[n] if n < len(plan) else None
    if step == "raise":
        raise ValueError(f"attempt {n + 1}")
    if step == "exit":
        os._exit(3)
    if step is not None:
        time.sleep(step)
    return n + 1


def test_retrying_executor_retries_errors_lost_workers_and_timeouts(sfexec, tmp_path):
    paths = [str(tmp_path / f"n{i}") for i in range(4)]
    plans = [[], ["raise"], ["exit", "raise"], [30]]
    retrying = RetryingFunctionExecutor(sfexec)
    futures = retrying.map(attempt, [(p, plan) for p, plan in zip(paths, plans, strict=True)], retries=2, timeout=2)
    assert retrying.get_result(futures, timeout=60) == [1, 2, 3, 2]
    assert [f.attempts for f in futures] == [1, 2, 3, 2]


def test_without_retrying_an_error_settles_at_once(sfexec, tmp_path):
    future = sfexec.map(attempt, [(str(tmp_path / "n"), ["raise"])], retries=3)[0]
    with pytest.raises(ValueError, match="attempt 1"):
        future.result(timeout=60)
    assert future.attempts == 1


def test_pickling_a_pending_future_waits_for_its_outcome(sfexec):
    future = sfexec.call_async(sleep_then, (0.3, "late"))
    started = time.monotonic()
    copy = pickle.loads(pickle.dumps(future))
    assert copy.result() == "late" and time.monotonic() - started >= 0.2
    assert copy.name == future.name and copy.stats["received"] == future.stats["received"]


def test_futures_of_other_executors_as_items_and_results(sfexec, tmp_path):
    with FunctionExecutor(max_workers=1, storage_url=f"file://{tmp_path / 'other'}") as other:
        slow = other.map(sleep_then, [(0.2, 5), (0.1, 6)])
        futures = sfexec.map(inc, slow)  # returns at once; the calls start once slow is done
        assert not futures[0].done()
        assert cloudbutton.get_result(futures, timeout=60) == [6, 7]


def test_module_level_wait_takes_percentages(sfexec):
    futures = sfexec.map(sleep_then, [0, 0, 1.5, 1.5])
    done, not_done = cloudbutton.wait(futures, return_when=50, timeout=30)
    assert len(done) >= 2
    done, not_done = cloudbutton.wait(futures, return_when=ALL_COMPLETED, timeout=30)
    assert not not_done


def keys_of(storage, prefix):
    return storage.list_keys(prefix)


def test_storage_parameter_pickles_and_core_storage_has_lithops_methods(sfexec, tmp_path):
    storage = sfexec.storage
    storage.put_object("p/a", b"1")
    assert pickle.loads(pickle.dumps(storage)).get_object("p/a") == b"1"
    assert sfexec.get_result(sfexec.map(keys_of, [("p/",)])) == [["p/a"]]
    assert storage.head_bucket()["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(cloudbutton.StorageError):
        storage.head_bucket("no-such-bucket")
    cobjs = [storage.put_cloudobject(b"x"), storage.put_cloudobject(b"y", "p/b")]
    assert all(isinstance(c, CloudObject) for c in cobjs) and cobjs[0].key.startswith("cloudobjects/")
    storage.delete_cloudobjects([*cobjs, CloudObject(storage.object_url("p/none"), "p/none")])
    assert storage.list_keys("p/") == ["p/a"] and storage.list_keys("cloudobjects/") == []


def puts(x, storage):
    return storage.put_cloudobject(str(x))


def test_clean_removes_the_cloudobjects_of_calls(sfexec):
    cobjs = sfexec.get_result(sfexec.map(puts, [1, 2]))
    assert [Storage(c.url.rsplit("/", 1)[0]).get_object(c.url.rsplit("/", 1)[1]) for c in cobjs] == [b"1", b"2"]
    assert all(f"cloudobjects/{sfexec.executor_id}/" in c.url for c in cobjs)
    mine = Storage(sfexec.storage_url).put_cloudobject(b"the caller's")
    sfexec.clean()
    assert sfexec.storage.list_keys(f"cloudobjects/{sfexec.executor_id}/") == []
    assert Storage(sfexec.storage_url).get_cloudobject(mine) == b"the caller's"  # not the executor's
