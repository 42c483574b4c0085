"""cloudbutton.lithops: Lithops' public API over cloudbutton, on real local workers and real files."""

import os
import pickle
import warnings
from pathlib import Path

import pytest

import cloudbutton
import cloudbutton.lithops as lithops
from cloudbutton.lithops.config import default_config, extract_storage_config, load_yaml_config, translate
from cloudbutton.lithops.storage.utils import CloudObject, StorageNoSuchKeyError
from cloudbutton.lithops.wait import ALL_COMPLETED, ALWAYS, ANY_COMPLETED

LOCAL = {"lithops": {"backend": "localhost", "storage": "localhost"}, "localhost": {"worker_processes": 2}}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home of the test's own (no ~/.lithops/config), file storage in the test's folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_URL", f"file://{tmp_path / 'store'}")
    for key in ("LITHOPS_CONFIG_FILE", "LITHOPS_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fexec(home):
    with lithops.FunctionExecutor(config=LOCAL) as executor:
        yield executor


def add(x, y):
    return x + y


def inc(x):
    return x + 1


def total(results):
    return sum(results)


# --- the module layout ----------------------------------------------------------------------------


def test_lithops_names_are_importable_where_lithops_has_them():
    from cloudbutton.lithops.multiprocessing.managers import SyncManager

    import cloudbutton.multiprocessing as mp
    import cloudbutton.multiprocessing.managers as managers
    from cloudbutton.lithops import RetryingFunctionExecutor, Storage
    from cloudbutton.lithops.executors import LocalhostExecutor, ServerlessExecutor
    from cloudbutton.lithops.future import ResponseFuture
    from cloudbutton.lithops.multiprocessing import Pool, Queue
    from cloudbutton.lithops.retries import RetryingFunctionExecutor as Retrying
    from cloudbutton.lithops.util.joblib import register_lithops
    from cloudbutton.lithops.utils import FuturesList, setup_lithops_logger

    assert Retrying is RetryingFunctionExecutor and ResponseFuture is cloudbutton.ResponseFuture
    assert Pool is mp.Pool and Queue is mp.Queue
    assert SyncManager is managers.SyncManager  # the one module, not a copy
    assert issubclass(LocalhostExecutor, cloudbutton.FunctionExecutor)
    assert issubclass(ServerlessExecutor, lithops.FunctionExecutor) and issubclass(Storage, cloudbutton.storage.Storage)
    assert callable(register_lithops) and callable(setup_lithops_logger) and issubclass(FuturesList, list)
    assert lithops.__version__ == cloudbutton.__version__


# --- configuration --------------------------------------------------------------------------------


def test_no_config_is_localhost(home):
    config = default_config()
    assert config["lithops"]["backend"] == "localhost" and config["lithops"]["storage"] == "localhost"
    assert extract_storage_config(config)["backend"] == "localhost"
    with lithops.FunctionExecutor() as fexec:
        assert fexec.config.backend == "local"
        assert fexec.storage_url == f"file://{home / 'store'}"
        assert fexec.storage.backend == "localhost" and fexec.storage.bucket == "storage"


def test_yaml_config_from_lithops_config_file_and_home(home, monkeypatch):
    text = "lithops:\n  backend: localhost\n  storage: localhost\nlocalhost:\n  worker_processes: 3\n"
    (home / "lithops.yaml").write_text(text)
    monkeypatch.setenv("LITHOPS_CONFIG_FILE", str(home / "lithops.yaml"))
    assert load_yaml_config(str(home / "lithops.yaml"))["localhost"] == {"worker_processes": 3}
    with lithops.FunctionExecutor() as fexec:
        assert fexec.config.max_workers == 3
    monkeypatch.delenv("LITHOPS_CONFIG_FILE")
    (home / "home" / ".lithops").mkdir(parents=True)
    (home / "home" / ".lithops" / "config").write_text(text.replace("3", "1"))
    with lithops.FunctionExecutor() as fexec:
        assert fexec.config.max_workers == 1
        assert fexec.get_result(fexec.map(inc, [1, 2])) == [2, 3]
    with lithops.FunctionExecutor(max_workers=2) as fexec:  # keyword arguments are the backend's settings
        assert fexec.config.max_workers == 2


def test_what_cannot_be_used_is_ignored_with_one_warning(home):
    config = {
        "lithops": {"backend": "aws_lambda", "storage": "localhost", "monitoring": "rabbitmq", "weird": 1},
        "aws_lambda": {"runtime_memory": 512, "execution_role": "arn:..."},
        "my_section": {"x": 1},
        "ibm_cf": {"endpoint": "https://example"},  # a Lithops section it does not use: silent
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lithops.FunctionExecutor(config=config) as fexec:
            assert fexec.config.backend == "local" and fexec.config.runtime_memory == 512
            assert fexec.get_result(fexec.call_async(inc, 1)) == 2
    messages = [str(w.message) for w in caught if "cloudbutton.lithops" in str(w.message)]
    assert len(messages) == 1
    for name in ("'aws_lambda'", "lithops.weird", "aws_lambda.execution_role", "'my_section'"):
        assert name in messages[0]
    assert "ibm_cf" not in messages[0] and "monitoring" not in messages[0]


def test_odd_configs_do_not_crash_and_bad_values_are_config_errors(home):
    for config in ({"lithops": None}, {"lithops": {"mode": "serverless"}}, {"lithops": {}, "localhost": None}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert translate(default_config(config_data=config)).settings["backend"] == "local"
    for config, message in (([1], "mapping of sections"), ({"lithops": "x"}, "'lithops'"),
                            ({"localhost": {"worker_processes": "many"}}, "localhost.worker_processes")):
        with pytest.raises(cloudbutton.ConfigError, match=message):
            lithops.FunctionExecutor(config=config)


def test_s3_storage_sections_map_to_s3_urls_with_endpoint_and_credentials():
    config = default_config(config_data={
        "lithops": {"backend": "localhost", "storage": "minio"},
        "minio": {"endpoint": "127.0.0.1:9000", "access_key_id": "AK", "secret_access_key": "SK",
                  "storage_bucket": "data"},
    })
    t = translate(config)
    assert t.settings["storage_url"] == "s3://data" and t.storage.bucket == "data"
    assert t.storage.options == {"key": "AK", "secret": "SK", "endpoint_url": "https://127.0.0.1:9000"}
    assert t.storage.env["AWS_ACCESS_KEY_ID"] == "AK" and t.storage.env["AWS_ENDPOINT_URL"] == "https://127.0.0.1:9000"
    cos = translate(default_config(config_data={
        "lithops": {"storage": "ibm_cos"}, "ibm_cos": {"region": "eu-de", "storage_bucket": "b", "api_key": "x"}}))
    assert cos.storage.options["endpoint_url"] == "https://s3.eu-de.cloud-object-storage.appdomain.cloud"
    assert "ibm_cos.api_key" in cos.ignored
    aws = translate(default_config(config_data={
        "lithops": {"storage": "aws_s3"}, "aws": {"region": "us-east-1", "access_key_id": "A",
                                                  "secret_access_key": "S"}, "aws_s3": {"storage_bucket": "b"}}))
    assert aws.storage.env == {
        "AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_DEFAULT_REGION": "us-east-1"}


# --- result shapes --------------------------------------------------------------------------------


def test_result_shapes_are_lithops(fexec):
    fexec.map(inc, [1])
    assert fexec.get_result() == [2]  # a map gives a list, also of one
    fexec.call_async(inc, 1)
    assert fexec.get_result() == 2
    futures = fexec.map(inc, [5])
    assert isinstance(futures, lithops.utils.FuturesList)
    assert fexec.get_result(futures) == [6] and fexec.get_result(futures[0]) == 6
    fexec.map_reduce(inc, [1, 2, 3], total)
    assert fexec.get_result() == 9  # the reducer's value
    assert lithops.get_result(futures) == [6] and lithops.get_result(futures[0]) == 6


def scaled_total(results, scale, offset=0):
    return sum(results) * scale + offset


def test_map_and_map_reduce_take_lithops_parameters_in_lithops_order(fexec):
    assert fexec.map(inc, [1, 2, 3], 2).get_result() == [2, 3, 4]  # the third parameter is chunksize
    futures = fexec.map_reduce(inc, [1, 2, 3], scaled_total, None, None, (10,))  # extra_args_reduce
    assert len(futures) == 4  # the maps' futures, then the reducer's
    assert fexec.get_result(futures) == 90 and [f.result() for f in futures[:3]] == [2, 3, 4]
    fexec.map_reduce(inc, [1], scaled_total, extra_args_reduce={"scale": 1, "offset": 5})
    assert fexec.get_result() == 7
    assert fexec.get_result(fexec.futures) == [2, 3, 4, 90, 7]  # the maps of a map_reduce give none


def test_call_async_spreads_a_tuple_and_passes_a_list_whole(fexec):
    assert fexec.get_result(fexec.call_async(add, (4, 6))) == 10
    assert fexec.get_result(fexec.call_async(lambda x: " ".join(x), ["a", "b"])) == "a b"
    assert fexec.get_result(fexec.call_async(add, {"x": 2, "y": 8})) == 12 - 2


# --- futures are values ---------------------------------------------------------------------------


def starts_a_map(n):
    inner = lithops.FunctionExecutor(config=LOCAL)
    return inner.map(inc, range(n))


def starts_one(n):
    return lithops.FunctionExecutor(config=LOCAL).call_async(inc, n)


def test_a_future_pickles_as_its_outcome(fexec):
    future = fexec.call_async(inc, 1)
    copy = pickle.loads(pickle.dumps(future))
    assert copy.result() == 2 and copy.done() and copy.ready and copy.success
    assert copy.executor_id == fexec.executor_id and copy.job_id.startswith("M") and copy.call_id == "00000"
    failing = fexec.call_async(add, (1, "x"))
    copy = pickle.loads(pickle.dumps(failing))
    with pytest.raises(TypeError):
        copy.result()
    assert copy.error and copy.result(throw_except=False) is None


def test_get_result_follows_futures_a_call_returns(fexec):
    fexec.call_async(starts_a_map, 3)
    assert fexec.get_result() == [1, 2, 3]
    fexec.call_async(starts_one, 8)
    assert fexec.get_result() == 9


def test_futures_lists_chain_stages(fexec):
    assert fexec.map(inc, [1, 2, 3]).map(inc).map(add, extra_args=(10,)).get_result() == [13, 14, 15]
    futures = fexec.map(inc, range(4))
    assert futures.map_reduce(inc, total).get_result() == [1 + 2 + 3 + 4 + 4]
    done, not_done = futures.wait()
    assert len(done) == 5 and not not_done  # the maps and the reducer
    assert fexec.map(inc, fexec.map(inc, [0, 10])).get_result() == [2, 12]


# --- waiting --------------------------------------------------------------------------------------


def sleep_then(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_wait_takes_lithops_return_when_and_percentages(fexec):
    futures = fexec.map(sleep_then, [0, 0, 0, 1.5])
    done, not_done = fexec.wait(futures, return_when=ALWAYS)
    assert len(done) + len(not_done) == 4
    done, _ = fexec.wait(futures, return_when=ANY_COMPLETED)
    assert len(done) >= 1
    done, not_done = fexec.wait(futures, return_when=75)
    assert len(done) >= 3
    done, not_done = lithops.wait(futures, return_when=ALL_COMPLETED)
    assert len(done) == 4 and not not_done
    with pytest.raises(ValueError, match="percentage"):
        fexec.wait(futures, return_when=150)


# --- retries --------------------------------------------------------------------------------------


def fails_first(path, times):
    count = int(Path(path).read_text()) if Path(path).exists() else 0
    Path(path).write_text(str(count + 1))
    if count < times:
        raise RuntimeError(f"attempt {count + 1} fails")
    return count + 1


def test_retrying_executor_runs_failed_calls_again_and_delivers_once(home):
    with lithops.RetryingFunctionExecutor(lithops.FunctionExecutor(config=LOCAL)) as executor:
        paths = [str(home / f"count{i}") for i in range(3)]
        futures = executor.map(fails_first, [(paths[0], 0), (paths[1], 1), (paths[2], 3)], retries=2)
        done, pending = executor.wait(futures, throw_except=False)
        assert len(done) == 3 and not pending
        assert [f.result() for f in futures[:2]] == [1, 2]
        with pytest.raises(RuntimeError, match="attempt 3 fails"):
            futures[2].result()
        assert [Path(p).read_text() for p in paths] == ["1", "2", "3"]
        assert [f.attempts for f in futures] == [1, 2, 3]


# --- storage --------------------------------------------------------------------------------------


def count_words(obj, id):
    return id, len(obj.data_stream.read().split())


def test_storage_has_lithops_semantics(home):
    storage = lithops.Storage(config=LOCAL)
    bucket = storage.bucket
    for key in ("t/foo/baz", "t/foo/bar/baz", "t/foo_bar/baz", "t/foo_baz", "t/bar"):
        storage.put_object(bucket, key, key.encode())
    assert storage.list_keys(bucket, "t/foo") == ["t/foo/bar/baz", "t/foo/baz", "t/foo_bar/baz", "t/foo_baz"]
    assert storage.list_keys(bucket, "t/foo/") == ["t/foo/bar/baz", "t/foo/baz"]
    assert set(storage.list_keys(bucket)) >= {"t/bar"} and storage.list_keys(bucket, "t/nothing") == []
    assert storage.list_objects(bucket, prefix="t/bar")[0] == {"Key": "t/bar", "Size": 5}
    assert storage.head_object(bucket, "t/bar")["content-length"] == "5"
    with pytest.raises(StorageNoSuchKeyError):
        storage.head_object(bucket, "t/missing")
    with pytest.raises(cloudbutton.StorageError):  # StorageNoSuchKeyError is a StorageError
        storage.get_object(bucket, "t/missing")
    assert storage.head_bucket(bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert storage.get_object(bucket, "t/bar", extra_get_args={"Range": "bytes=1-2"}) == b"/b"
    storage.delete_cloudobjects([CloudObject("localhost", bucket, "t/foo_baz"), CloudObject("localhost", bucket, "x")])
    storage.delete_objects(bucket, ["t/foo/baz"])
    assert "t/foo_baz" not in storage.list_keys(bucket, "t/") and "t/foo/baz" not in storage.list_keys(bucket)
    cobj = storage.put_cloudobject(b"value")
    assert isinstance(cobj, CloudObject) and storage.get_cloudobject(cobj) == b"value"
    assert (home / "store" / "storage" / "t" / "bar").read_bytes() == b"t/bar"  # the bucket is a folder


def puts(x, storage):
    return storage.put_cloudobject(pickle.dumps(x * 10))


def gets(cobjs, storage):
    return sum(pickle.loads(storage.get_cloudobject(c)) for c in cobjs)


def test_cloudobjects_travel_between_calls_and_clean_removes_them(fexec):
    fexec.map(puts, [1, 2, 3])
    cobjs = fexec.get_result()
    assert fexec.get_result(fexec.call_async(gets, cobjs)) == 60
    storage = fexec.storage
    fexec.clean(cs=cobjs[:1], clean_cloudobjects=False)
    with pytest.raises(StorageNoSuchKeyError):
        storage.get_cloudobject(cobjs[0])
    assert storage.get_cloudobject(cobjs[1])
    fexec.clean()  # the executor's cloud objects go too
    assert storage.list_keys(storage.bucket, storage.cloudobject_prefix) == []


def test_object_references_in_lithops_forms(fexec):
    storage = fexec.storage
    storage.put_object(storage.bucket, "data/a.txt", b"one two\nthree\n")
    storage.put_object(storage.bucket, "data/b.txt", b"four\n")
    for ref in ("localhost://storage/data/", "storage/data/"):
        assert fexec.get_result(fexec.map(count_words, ref)) == [(0, 3), (1, 1)]
    fexec.map_reduce(lambda obj: len(obj.data_stream.read().split()), "localhost://storage/data/", total,
                     obj_chunk_number=2)
    assert fexec.get_result() == 4
    fexec.map_reduce(lambda obj: len(obj.data_stream.read().split()), ["storage/data/a.txt", "storage/data/b.txt"],
                     total, obj_reduce_by_key=True)
    assert fexec.get_result() == [3, 1]  # one reducer per object: a list


def test_lithops_joblib_backend(fexec):
    import joblib

    from cloudbutton.lithops.util.joblib import register_lithops

    register_lithops()
    with joblib.parallel_backend("lithops", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(inc)(i) for i in range(4)) == [1, 2, 3, 4]


# --- S3 through a Lithops config (a real moto server) ---------------------------------------------


def test_aws_s3_config_reaches_s3_with_its_endpoint_and_credentials(s3, home, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, os.environ[key])  # restored at the end: the executor sets them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")  # the config's credentials win
    config = {
        "lithops": {"backend": "localhost", "storage": "aws_s3"},
        "aws_s3": {"region": "us-east-1", "storage_bucket": s3.bucket, "endpoint": s3.endpoint_url,
                   "access_key_id": "testing", "secret_access_key": "testing"},
    }
    with lithops.FunctionExecutor(config=config) as fexec:
        assert fexec.storage_url == s3.url
        storage = fexec.storage
        storage.put_object(s3.bucket, "lithops/a.txt", b"alpha beta\ngamma\n")
        assert storage.list_keys(s3.bucket, "lithops/") == ["lithops/a.txt"]
        assert storage.head_bucket(s3.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
        with pytest.raises(StorageNoSuchKeyError):
            storage.head_object(s3.bucket, "lithops/missing")
        for ref in (f"aws_s3://{s3.bucket}/lithops/", f"{s3.bucket}/lithops/a.txt"):
            assert fexec.get_result(fexec.map(count_words, ref)) == [(0, 3)]
        fexec.map(puts, [4])
        cobj = fexec.get_result()[0]
        assert cobj.bucket == s3.bucket and pickle.loads(storage.get_cloudobject(cobj)) == 40
        fexec.clean()
        storage.delete_object(s3.bucket, "lithops/a.txt")
        assert storage.list_keys(s3.bucket, "lithops/") == []
