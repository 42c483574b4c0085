"""map over objects in storage, map_reduce, and large arguments/results travelling through storage."""

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from calls import sleep_for, wait_for

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StorageError
from cloudbutton.futures import discard
from cloudbutton.partition import Partition

TEXT = "".join(f"line {i} {'word ' * (i % 7)}end\n" for i in range(300))


@pytest.fixture(scope="module")
def storage_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def books(storage_dir):
    """Three objects under the prefix ``books/`` of the executor's storage, plus an unrelated one."""
    folder = storage_dir / "books"
    folder.mkdir()
    texts = {"a.txt": TEXT, "b.txt": TEXT[:1000] + "no final newline", "c.txt": ""}
    for name, text in texts.items():
        (folder / name).write_text(text)
    (storage_dir / "other.log").write_text("x\n")
    return {f"file://{folder / name}": text for name, text in texts.items()}


@pytest.fixture(scope="module")
def sfexec(storage_dir):
    with FunctionExecutor(max_workers=2, storage_url=f"file://{storage_dir}") as executor:
        yield executor


def lines_of(obj):
    return obj.data_stream.read().decode().splitlines(keepends=True)


def count_words(obj):
    return Counter(obj.data_stream.read().split())


def merge(results):
    return sum(results, Counter())


def describe(obj, tag):
    return obj.key.rsplit("/", 1)[1], obj.part, tag


def test_map_over_a_prefix_gives_one_call_per_partition_and_every_line_once(sfexec, books):
    futures = sfexec.map(lines_of, "books/", obj_chunk_size=512)
    parts = sfexec.get_result(futures)
    assert len(futures) > len(books)  # the big object was split
    assert "".join(line for part in parts for line in part) == "".join(books[url] for url in sorted(books))


def test_obj_chunk_number_splits_each_object_into_that_many_parts(sfexec, books):
    url = sorted(books)[0]
    parts = sfexec.get_result(sfexec.map(lines_of, [url], obj_chunk_number=4))
    assert len(parts) == 4
    assert "".join(line for part in parts for line in part) == books[url]


def test_objects_given_in_dicts_and_tuples_keep_their_other_arguments(sfexec, books):
    a, b = sorted(books)[:2]
    by_dict = sfexec.get_result(sfexec.map(describe, [{"obj": a, "tag": 1}, {"obj": b, "tag": 2}]))
    by_tuple = sfexec.get_result(sfexec.map(describe, [(a, 1), (b, 2)], obj_chunk_number=2))
    assert by_dict == [("a.txt", 0, 1), ("b.txt", 0, 2)]
    assert by_tuple == [("a.txt", 0, 1), ("a.txt", 1, 1), ("b.txt", 0, 2), ("b.txt", 1, 2)]


def test_a_glob_names_only_the_matching_objects(sfexec, books, storage_dir):
    results = sfexec.get_result(sfexec.map(describe, [(f"{storage_dir}/books/*.txt", "g")]))
    assert [r[0] for r in results] == ["a.txt", "b.txt", "c.txt"]


def test_the_function_receives_a_partition_that_reads_only_its_range(sfexec, books):
    url = sorted(books)[0]
    parts = sfexec.get_result(sfexec.map(lambda obj: obj, [url], obj_chunk_size=1000, obj_newline=None))
    assert all(isinstance(p, Partition) for p in parts)
    assert [p.data_byte_range for p in parts][:2] == [(0, 1000), (1000, 2000)]
    assert b"".join(p.data_stream.read() for p in parts) == books[url].encode()


def test_map_reduce_counts_words_like_a_single_process(storage_dir, books):
    with FunctionExecutor(max_workers=2, storage_url=f"file://{storage_dir}") as fexec:  # nothing uncollected
        futures = fexec.map_reduce(count_words, "books/", merge, obj_chunk_size=300)
        assert len(futures) == 1
        expected = Counter("".join(books.values()).encode().split())
        assert fexec.get_result() == expected  # get_result() gives the reducer's value, not the maps'
        assert futures[0].result() == expected


def test_one_reducer_per_object_reduces_only_that_objects_results(sfexec, books):
    futures = sfexec.map_reduce(count_words, "books/", merge, obj_chunk_size=300, reducer_one_per_object=True)
    assert sfexec.get_result(futures) == [Counter(books[url].encode().split()) for url in sorted(books)]


def test_map_reduce_over_plain_values_and_a_reducer_taking_results_by_keyword(sfexec):
    def total(results, scale=1):
        return sum(results) * scale

    assert sfexec.get_result(sfexec.map_reduce(lambda x: x * x, range(50), total)) == [sum(x * x for x in range(50))]
    assert sfexec.get_result(sfexec.map_reduce(abs, [], total)) == [0]


def test_a_failing_map_fails_its_reducer_with_that_error(sfexec):
    def check(x):
        if x == 3:
            raise ValueError(f"bad item {x}")
        return x

    futures = sfexec.map_reduce(check, range(6), sum)
    with pytest.raises(ValueError, match="bad item 3") as caught:
        sfexec.get_result(futures)
    assert any("did not run" in note for note in caught.value.__notes__)


def test_bad_object_references_and_chunk_options_fail_before_anything_runs(sfexec, books, storage_dir):
    url = sorted(books)[0]
    with pytest.raises(StorageError, match="no objects at .*missing/"):
        sfexec.map(lines_of, "missing/")
    with pytest.raises(StorageError, match="nothing-here"):
        sfexec.map(lines_of, [f"file://{storage_dir}/nothing-here.txt"])
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="chunk_size"):
            sfexec.map(lines_of, [url], obj_chunk_size=bad)
    with pytest.raises(ValueError, match="not both"):
        sfexec.map(lines_of, [url], obj_chunk_size=10, obj_chunk_number=2)
    with pytest.raises(ValueError, match="parameter named 'obj'"):
        sfexec.map(abs, [1], obj_chunk_size=10)


def grow_then_read(obj, path):
    with open(path, "a") as f:
        f.write("appended after planning\n")
    return obj.data_stream.read()


def test_an_object_that_changes_size_during_the_job_is_detected(sfexec, storage_dir):
    path = storage_dir / "growing.txt"
    path.write_text("first\n")
    with pytest.raises(StorageError, match="changed size"):
        sfexec.get_result(sfexec.map(grow_then_read, [(f"file://{path}", str(path))]))


# --- large arguments and results ------------------------------------------------------------


def sizes_and_stored_objects(data, storage_dir):
    stored = sorted(os.path.relpath(os.path.join(d, f), storage_dir) for d, _, fs in os.walk(storage_dir) for f in fs)
    return len(data), [s for s in stored if s.startswith("cloudbutton-jobs")]


def test_large_arguments_and_results_travel_through_storage_and_are_removed(tmp_path):
    storage = tmp_path / "store"
    with FunctionExecutor(max_workers=2, storage_url=f"file://{storage}", storage_threshold=10_000) as fexec:
        futures = fexec.map(sizes_and_stored_objects, [(b"x" * 50_000, str(storage)), (b"y", str(storage))])
        (big, stored_big), (small, stored_small) = fexec.get_result(futures)
        assert (big, small) == (50_000, 1)
        assert len(stored_big) == 1 and stored_big[0].endswith("args/00000")  # seen by the call itself
        assert futures[0].stats["args_bytes"] > 50_000 > futures[1].stats["args_bytes"]

        result = fexec.get_result(fexec.call_async(lambda n: b"z" * n, 200_000))
        assert result == b"z" * 200_000
        assert [p for p in storage.rglob("*") if p.is_file()] == []  # nothing left once the calls are settled


def length_after_removing(data, path):
    if path:
        import shutil

        shutil.rmtree(os.path.join(path, "cloudbutton-jobs"))
    return len(data)


def test_stored_arguments_missing_when_a_call_starts_is_a_storage_error(tmp_path):
    storage = tmp_path / "store"
    with FunctionExecutor(max_workers=1, storage_url=f"file://{storage}", storage_threshold=1000) as fexec:
        # one batch on one worker: the first call removes the stored arguments of the second
        futures = fexec.map(length_after_removing, [(b"a", str(storage)), (b"b" * 5000, None)], chunksize=2)
        first, second = fexec.get_result(futures, throw_except=False)
    assert first == 1
    assert isinstance(second, StorageError) and "cannot read call data" in str(second)
    assert "args/00001" in str(second)


# --- other storage: real S3 (moto) and HTTP ----------------------------------------------------


def aws_env():
    """The caller's AWS_* settings, for workers started before they were set (pools are shared)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def test_map_reduce_over_objects_on_s3(s3_url, sfexec):
    from cloudbutton.storage import Storage

    storage = Storage(s3_url)
    texts = {"books/a.txt": TEXT[:2000], "books/b.txt": "alpha beta\nbeta\n", "other/c.txt": "not me\n"}
    for key, text in texts.items():
        storage.put_object(key, text)
    prefix = f"{s3_url}/books/"
    futures = sfexec.map_reduce(count_words, prefix, merge, obj_chunk_size=700, extra_env=aws_env())
    expected = Counter(texts["books/a.txt"].encode().split()) + Counter(texts["books/b.txt"].encode().split())
    assert sfexec.get_result(futures) == [expected]
    per_object = sfexec.map_reduce(
        count_words, prefix, merge, obj_chunk_size=700, reducer_one_per_object=True, extra_env=aws_env()
    )
    assert sfexec.get_result(per_object) == [Counter(texts[k].encode().split()) for k in ("books/a.txt", "books/b.txt")]
    with pytest.raises(StorageError, match="no objects at"):
        sfexec.map(count_words, f"{s3_url}/nothing-here/")


def test_map_over_an_object_served_over_http(http_server, sfexec):
    (Path(http_server.directory) / "served.txt").write_text(TEXT)
    parts = sfexec.get_result(sfexec.map(lines_of, [f"{http_server.url}/served.txt"], obj_chunk_number=3))
    assert len(parts) == 3
    assert "".join(line for part in parts for line in part) == TEXT


def stored_files(storage):
    return [p for p in storage.rglob("*") if p.is_file()]


def eventually_empty(storage, timeout=60):
    deadline = time.monotonic() + timeout
    while stored_files(storage) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stored_files(storage)


def test_shutdown_without_wait_keeps_the_stored_arguments_of_calls_still_to_run(tmp_path):
    storage = tmp_path / "store"
    fexec = FunctionExecutor(max_workers=1, storage_url=f"file://{storage}", storage_threshold=1000)
    futures = fexec.map(lambda data: len(data), [b"x" * 5000] * 3, chunksize=1)
    fexec.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == [5000] * 3
    assert eventually_empty(storage) == []


def test_a_reducer_still_runs_after_shutdown_without_wait(tmp_path):
    fexec = FunctionExecutor(max_workers=2, storage_url=f"file://{tmp_path}")
    reducer = fexec.map_reduce(sleep_for, [0.3, 0.3], sum)
    fexec.shutdown(wait=False)  # the maps are still running: their reducer must launch when they end
    assert fexec.get_result(reducer, timeout=60) == [0.6]


def test_a_reducer_launches_even_if_its_thread_was_closed_by_a_racing_shutdown(tmp_path, gate):
    with FunctionExecutor(max_workers=2, storage_url=f"file://{tmp_path}") as fexec:
        reducer = fexec.map_reduce(wait_for, [(gate, 1), (gate, 2)], sum)
        fexec._reducers.shutdown(wait=False)  # what a shutdown() in another thread at that moment does
        Path(gate).touch()
        assert fexec.get_result(reducer, timeout=60) == [3]


def test_the_stored_result_of_a_cancelled_call_is_removed(tmp_path, gate):
    storage = tmp_path / "store"
    with FunctionExecutor(max_workers=1, storage_url=f"file://{storage}", storage_threshold=1000) as fexec:
        future = fexec.call_async(lambda path: wait_for(path, b"r" * 5000), gate)
        assert discard(future)  # cancelled while it runs, as Pool.terminate() does
        Path(gate).touch()  # the call runs on and stores its result, which nobody will read
        assert eventually_empty(storage) == []


def test_reducer_one_per_object_with_plain_values_runs_nothing(sfexec):
    before = len(sfexec.futures)
    with pytest.raises(ValueError, match="reducer_one_per_object"):
        sfexec.map_reduce(abs, [1, 2], sum, reducer_one_per_object=True)
    assert len(sfexec.futures) == before


def test_large_arguments_and_results_through_s3_with_credentials_from_extra_env(s3_url):
    with FunctionExecutor(max_workers=2, storage_url=s3_url, storage_threshold=1000) as fexec:
        futures = fexec.map(lambda data: data * 2, [b"a" * 3000, b"b"], extra_env=aws_env())
        assert fexec.get_result(futures) == [b"a" * 6000, b"bb"]
