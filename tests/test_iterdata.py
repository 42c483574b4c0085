"""Job planning through FunctionExecutor on real local workers: how iterdata items become calls,
extra_args, extra_env, ordering and batching."""

import collections
import itertools
import os
import shutil
import time
from pathlib import Path

import pytest
from calls import wait_for

from cloudbutton import FunctionExecutor
from cloudbutton.job import BATCH_SECONDS, next_batch_size


def echo(*args, **kwargs):
    return args, kwargs


def add(a, b=0, *, c=0):
    return a + b + c


def read_env(name):
    return os.getpid(), os.environ.get(name)


def square_with_pid(x):
    return x * x, os.getpid()


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def run(fexec, function, iterdata, **kwargs):
    return fexec.get_result(fexec.map(function, iterdata, **kwargs), timeout=60)


# --- how an item becomes a call -------------------------------------------------------------------


def test_a_plain_value_is_the_single_argument(fexec):
    items = [1, "ab", None, 2.5, b"xy", {1, 2}, frozenset(), range(3)]
    assert run(fexec, echo, items) == [((item,), {}) for item in items]


def test_a_tuple_or_list_is_positional_arguments(fexec):
    items = [(1, 2), [3, 4], (), [], ([1, 2],), ((1, 2),), (None,)]
    assert run(fexec, echo, items) == [
        ((1, 2), {}),
        ((3, 4), {}),
        ((), {}),
        ((), {}),
        (([1, 2],), {}),
        (((1, 2),), {}),
        ((None,), {}),
    ]


def test_a_dict_is_keyword_arguments(fexec):
    items = [{"a": 1}, {"a": 1, "b": 2, "c": 3}, {}, collections.OrderedDict(a=5)]
    assert run(fexec, echo, items) == [((), dict(item)) for item in items]
    assert run(fexec, add, [{"a": 1, "c": 10}, {"b": 2, "a": 3}]) == [11, 5]


def test_extra_args_tuple_is_appended(fexec):
    items = [1, (2, 3), [4], {"k": 5}]
    assert run(fexec, echo, items, extra_args=(8, 9)) == [
        ((1, 8, 9), {}),
        ((2, 3, 8, 9), {}),
        ((4, 8, 9), {}),
        ((8, 9), {"k": 5}),
    ]
    assert run(fexec, echo, [1], extra_args=[7]) == [((1, 7), {})]
    assert run(fexec, add, [1, 2], extra_args=(10,)) == [11, 12]


def test_extra_args_dict_is_merged_into_kwargs(fexec):
    items = [1, (2, 3), {"k": 5}]
    assert run(fexec, echo, items, extra_args={"z": 0}) == [
        ((1,), {"z": 0}),
        ((2, 3), {"z": 0}),
        ((), {"k": 5, "z": 0}),
    ]
    assert run(fexec, add, [1, {"a": 2}], extra_args={"c": 100}) == [101, 102]


def test_extra_args_of_another_type_is_refused(fexec):
    with pytest.raises(TypeError, match="extra_args"):
        fexec.map(echo, [1], extra_args=5)
    with pytest.raises(TypeError, match="extra_args"):
        fexec.map(echo, [1], extra_args="ab")


def test_wrong_arguments_fail_in_the_call_with_their_own_type(fexec):
    futures = fexec.map(add, [(1, 2), {"a": 1, "b": 2, "e": 3}, {"d": 1}])
    results = fexec.get_result(futures, throw_except=False, timeout=60)
    assert results[0] == 3
    assert isinstance(results[1], TypeError) and "'e'" in str(results[1])
    assert isinstance(results[2], TypeError) and "'d'" in str(results[2])


# --- Lithops' binding rule ------------------------------------------------------------------------


def concat(words):
    return " ".join(words)


def pair(x, y):
    return x, y


def one(x):
    return x


def test_a_tuple_or_list_is_spread_only_when_its_length_fits_the_parameters(fexec):
    assert run(fexec, concat, [["a", "b"], ("c", "d", "e")]) == ["a b", "c d e"]  # one parameter: one argument
    assert run(fexec, one, [(5,), [6], (1, 2), []]) == [5, 6, (1, 2), []]
    assert run(fexec, pair, [(1, 2), [3, 4]]) == [(1, 2), (3, 4)]
    results = fexec.get_result(fexec.map(add, [(1,), (1, 2), (1, 2, 3)]), throw_except=False, timeout=60)
    assert results[:2] == [1, 3] and isinstance(results[2], TypeError)  # a=(1, 2, 3): tuple + int


def test_extra_args_count_when_deciding_whether_to_spread(fexec):
    assert run(fexec, pair, [1, (2,), [[3, 4]]], extra_args=(9,)) == [(1, 9), (2, 9), ([3, 4], 9)]
    assert run(fexec, pair, [["a", "b"]], extra_args=("c",)) == [(["a", "b"], "c")]


def total(a, b, c=0, *args, d, e=5, **kwargs):
    return sum([a, b, c, d, e, *args, *kwargs.values()])


def test_dict_keys_named_like_star_args_and_star_kwargs_feed_them(fexec):
    items = [
        {"a": 1, "b": 2, "d": 3},
        {"args": (1, 2), "d": 3},
        {"args": (1, 2, 3, 4), "d": 3},
        {"args": (1, 2), "kwargs": {"d": 3, "e": 6, "f": 4}},
    ]
    assert run(fexec, total, items) == [11, 11, 18, 16]
    assert run(fexec, echo, [{"args": [1, 2], "kwargs": {"k": 3}, "x": 4}]) == [((1, 2), {"k": 3, "x": 4})]


def with_id(x, id):
    return x, id


def id_first(id, x, y=0):
    return id, x, y


def reads(key, storage):
    return storage.get_object(key)


def test_id_and_storage_parameters_are_filled_in(fexec, tmp_path):
    assert run(fexec, with_id, ["a", "b", "c"]) == [("a", 0), ("b", 1), ("c", 2)]
    assert run(fexec, id_first, [7, (8, 9), {"x": 10}]) == [(0, 7, 0), (1, 8, 9), (2, 10, 0)]
    fexec.storage.put_object("lithops-iterdata/k", b"stored")
    try:
        assert run(fexec, reads, ["lithops-iterdata/k"]) == [b"stored"]
    finally:
        fexec.storage.delete_object("lithops-iterdata/k")


def only_id(id):
    return id


def test_special_parameters_an_item_gives_are_its_own(fexec):
    assert run(fexec, with_id, [{"x": 1, "id": "mine"}, ("a", "b")]) == [(1, "mine"), ("a", "b")]
    assert run(fexec, only_id, [7, 8]) == [7, 8]  # nothing else to bind the item to
    assert run(fexec, with_id, [["a", "b"]]) == [(["a", "b"], 0)]  # a list does not give id


def test_futures_as_items_stand_for_their_results(fexec):
    first = fexec.map(pair, [(1, 2), (3, 4)])
    assert run(fexec, concat, [["x", "y"]]) == ["x y"]
    assert run(fexec, lambda x, y: x * y, first) == [2, 12]  # each result (a tuple) spread again
    failed = fexec.map(add, [{"a": 1, "z": 0}])
    results = fexec.get_result(fexec.map(one, [failed[0], 5]), throw_except=False, timeout=60)
    assert isinstance(results[0], TypeError) and results[1] == 5


# --- what iterdata may be -------------------------------------------------------------------------


def test_empty_iterdata_gives_no_futures(fexec):
    assert fexec.map(echo, []) == []
    assert fexec.map(echo, iter(())) == []
    assert fexec.get_result([]) == []


def test_a_generator_is_iterdata(fexec):
    consumed = []

    def gen():
        for i in range(20):
            consumed.append(i)
            yield i

    futures = fexec.map(square_with_pid, gen())
    assert consumed == list(range(20))
    assert [r[0] for r in fexec.get_result(futures, timeout=60)] == [i * i for i in range(20)]


@pytest.mark.parametrize(
    "iterdata",
    [
        lambda: range(5),
        lambda: map(int, "01234"),
        lambda: itertools.islice(itertools.count(), 5),
        lambda: (i for i in range(5)),
        lambda: dict.fromkeys(range(5)),
    ],
    ids=["range", "map", "islice", "genexp", "dict-keys"],
)
def test_any_iterable_is_iterdata(fexec, iterdata):
    assert run(fexec, add, iterdata(), extra_args=(1,)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("iterdata", ["abc", b"abc", 5, None, 2.5])
def test_a_string_or_a_non_iterable_is_refused(fexec, iterdata):
    before = len(fexec.futures)
    with pytest.raises(TypeError, match="map_iterdata"):
        fexec.map(echo, iterdata)
    assert len(fexec.futures) == before


@pytest.mark.parametrize("function", [42, "abs", None, [abs]])
def test_a_non_callable_function_is_refused(fexec, function):
    with pytest.raises(TypeError, match="callable"):
        fexec.map(function, [1])
    with pytest.raises(TypeError, match="callable"):
        fexec.call_async(function, 1)


# --- call_async ---------------------------------------------------------------------------------


def test_call_async_unpacks_its_data_like_a_map_item(fexec):
    assert fexec.get_result(fexec.call_async(echo, 5)) == ((5,), {})
    assert fexec.get_result(fexec.call_async(echo, "abc")) == (("abc",), {})
    assert fexec.get_result(fexec.call_async(echo, (1, 2))) == ((1, 2), {})
    assert fexec.get_result(fexec.call_async(echo, [1, 2])) == ((1, 2), {})
    assert fexec.get_result(fexec.call_async(echo, {"a": 1})) == ((), {"a": 1})
    assert fexec.get_result(fexec.call_async(echo, ())) == ((), {})
    assert fexec.get_result(fexec.call_async(add, {"a": 1, "b": 2, "c": 3})) == 6


# --- extra_env --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """An executor with one worker, so consecutive calls run in the same process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg1")))
        mp.chdir(tmp_path_factory.mktemp("work1"))
        with FunctionExecutor(max_workers=1) as executor:
            yield executor


def test_extra_env_is_seen_by_every_call_of_the_map(fexec):
    results = run(fexec, read_env, ["CB_TEST_VAR"] * 12, extra_env={"CB_TEST_VAR": "hello", "CB_OTHER": 5})
    assert [value for _, value in results] == ["hello"] * 12
    assert run(fexec, read_env, ["CB_OTHER"], extra_env={"CB_OTHER": 5})[0][1] == "5"  # values become text


def test_extra_env_does_not_leak_into_the_next_call(single):
    pid1, during = single.get_result(single.call_async(read_env, "CB_TEST_VAR", extra_env={"CB_TEST_VAR": "x"}))
    pid2, after = single.get_result(single.call_async(read_env, "CB_TEST_VAR"))
    assert during == "x"
    assert after is None
    assert pid1 == pid2  # same worker process, so the variable really was removed


def test_extra_env_overriding_a_variable_is_undone_after_the_call(single):
    pid0, before = single.get_result(single.call_async(read_env, "HOME"))
    pid1, during = single.get_result(single.call_async(read_env, "HOME", extra_env={"HOME": "/nowhere"}))
    pid2, after = single.get_result(single.call_async(read_env, "HOME"))
    assert during == "/nowhere"
    assert after == before and before != "/nowhere"
    assert pid0 == pid1 == pid2


def test_extra_env_of_one_job_is_not_seen_by_calls_of_another(single):
    with_env = single.map(read_env, ["CB_TEST_VAR"] * 3, extra_env={"CB_TEST_VAR": "job1"})
    without = single.map(read_env, ["CB_TEST_VAR"] * 3)
    assert [v for _, v in single.get_result(with_env)] == ["job1"] * 3
    assert [v for _, v in single.get_result(without)] == [None] * 3


@pytest.mark.parametrize("env", [{"BAD=NAME": "1"}, {"CB_NUL": "a\0b"}, {1: "x"}], ids=["equals", "nul", "int-key"])
def test_invalid_extra_env_is_refused_at_submit(single, env):
    before = len(single.futures)
    with pytest.raises((TypeError, ValueError), match="extra_env"):
        single.map(read_env, ["X"], extra_env=env)
    assert len(single.futures) == before
    # the worker is unharmed
    assert single.get_result(single.call_async(read_env, "CB_TEST_VAR", extra_env={"CB_TEST_VAR": "ok"}))[1] == "ok"


# --- order and batching -------------------------------------------------------------------------------


def test_results_are_in_input_order_for_500_calls(fexec):
    futures = fexec.map(square_with_pid, range(500))
    results = fexec.get_result(futures, timeout=60)
    assert [r[0] for r in results] == [i * i for i in range(500)]
    assert [f.call_index for f in futures] == list(range(500))


def test_chunksize_gives_the_same_results_in_batches_of_that_size(fexec):
    plain = run(fexec, square_with_pid, range(100))
    chunked = run(fexec, square_with_pid, range(100), chunksize=7)
    assert [r[0] for r in chunked] == [r[0] for r in plain] == [i * i for i in range(100)]
    # a batch runs on one worker: each run of 7 consecutive calls shares a process
    for start in range(0, 100, 7):
        assert len({pid for _, pid in chunked[start : start + 7]}) == 1, start


def test_chunksize_larger_than_the_job(fexec):
    results = run(fexec, square_with_pid, range(5), chunksize=1000)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    assert len({pid for _, pid in results}) == 1


def test_batches_are_guided_until_the_calls_are_known_to_be_quick():
    # unknown durations: a quarter of the job per worker pair at first, single calls at the end
    assert [next_batch_size(n, 2, None) for n in (1000, 100, 7, 1)] == [250, 25, 1, 1]
    # quick calls: a batch holds BATCH_SECONDS of them, so few round trips to the workers, but no
    # more than a worker's share of the calls not finished (not sent, or sent and running)
    quick = BATCH_SECONDS / 500
    assert [next_batch_size(n, 2, None, quick) for n in (5000, 1000, 100, 7)] == [500, 500, 50, 4]
    assert next_batch_size(500, 2, None, quick, in_flight=500) == 500
    assert next_batch_size(100_000, 2, None, quick / 100) == 1024  # bounded all the same
    # long calls keep the guided sizes, and an explicit chunksize wins
    assert [next_batch_size(n, 2, None, 1.0) for n in (100, 7)] == [25, 1]
    assert next_batch_size(100, 2, 3, quick) == 3


def test_slow_calls_after_quick_ones_are_shared_by_the_workers(fexec):
    run(fexec, sleep_then_pid, [0.0] * 20)  # quick calls of the function do not size the next job's batches
    pids = run(fexec, sleep_then_pid, [0.5, 0.5, 0.0, 0.0])
    assert pids[0] != pids[1]  # the two slow calls ran at the same time, each on its own worker


def test_a_short_job_of_slow_calls_is_shared_even_with_a_long_job_queued_behind_it(fexec, gate):
    blockers = fexec.map(wait_for, [gate, gate])  # both workers busy while the next two jobs queue
    slow = fexec.map(sleep_then_pid, [0.3] * 4)
    quick = fexec.map(sleep_then_pid, [0.0] * 1000)
    Path(gate).touch()
    fexec.get_result(blockers + quick, timeout=60)
    pids = fexec.get_result(slow, timeout=60)
    assert len(set(pids)) == 2  # sized by its own 4 calls, not by the 1004 queued


# --- what else a job carries: the caller's working directory ----------------------------------------


def test_a_deleted_working_directory_does_not_break_warm_workers(single, tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    assert single.get_result(single.call_async(os.getcwd, ())) == str(gone)
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(gone)
    assert single.get_result(single.call_async(os.getcwd, ())) == str(tmp_path)


def chdir_away(path=None):
    if path is not None:
        os.chdir(path)
    return os.getcwd()



def test_each_call_of_a_batch_starts_in_the_callers_directory(single, tmp_path, monkeypatch):
    away = tmp_path / "away"
    away.mkdir()
    monkeypatch.chdir(tmp_path)
    results = single.get_result(single.map(chdir_away, [str(away), None, None], chunksize=3))
    assert results == [str(away), str(tmp_path), str(tmp_path)]


def test_a_call_that_changes_directory_does_not_move_the_next_job(single, tmp_path, monkeypatch):
    away = tmp_path / "away"
    away.mkdir()
    monkeypatch.chdir(tmp_path)
    pid1, here = single.get_result(single.call_async(lambda: (os.getpid(), os.getcwd()), ()))
    assert here == str(tmp_path)
    assert single.get_result(single.call_async(chdir_away, str(away))) == str(away)
    pid2, later = single.get_result(single.call_async(lambda: (os.getpid(), os.getcwd()), ()))
    assert pid1 == pid2  # the same warm worker
    assert later == str(tmp_path)


def test_extra_env_none_unsets_a_variable_for_the_call(single, monkeypatch):
    monkeypatch.setenv("CB_UNSET_ME", "present")  # workers inherit the caller's environment when started
    assert single.get_result(single.call_async(read_env, "CB_UNSET_ME", extra_env={"CB_UNSET_ME": None}))[1] is None
