"""The joblib backend "cloudbutton" with real local workers: results, errors, shared arguments, nesting."""

import os
import threading
import time

import joblib
import numpy as np
import pytest
from calls import exit_on
from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.svm import SVC

import cloudbutton.joblib
from cloudbutton import CallTimeoutError, ConfigError, SerializationError, WorkerLostError
from cloudbutton.errors import StorageError
from cloudbutton.joblib import CloudbuttonBackend
from cloudbutton.storage import Storage


class TaskError(Exception):
    pass


def square(i):
    return i * i


def fail_on(i, bad, data=None):
    if i == bad:
        raise TaskError(f"task {i} failed")
    return i



def where_and_sum(X, i):
    return os.getpid(), float(X.sum()) + i


def bump(X, i):
    """Counts in X[0] the tasks that were given this X object (in this worker process)."""
    X[0] += 1
    return os.getpid(), int(X[0]), float(X[1:].sum()) + i


def nested(i, backend=None):
    """A task that runs a Parallel of its own; returns its results and where each inner task ran."""
    def inner(j):
        return os.getpid(), i * 10 + j

    if backend is None:
        out = Parallel(n_jobs=2)(delayed(inner)(j) for j in range(3))
    else:
        with parallel_config(backend=backend):
            out = Parallel(n_jobs=2)(delayed(inner)(j) for j in range(3))
    return os.getpid(), out


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """Every Parallel call ends its backend: no executor's callback thread outlives a test."""
    yield
    assert not [t for t in threading.enumerate() if t.name == "cloudbutton-joblib-callbacks"]


@pytest.fixture
def storage_url(tmp_path):
    return (tmp_path / "storage").as_uri()


@pytest.fixture
def cloudbutton_backend(storage_url):
    """The backend on 2 workers, storing shared arguments in a temporary directory."""
    with parallel_config(backend="cloudbutton", max_workers=2, storage_url=storage_url):
        yield


def test_import_registers_the_backend_and_register_is_idempotent():
    cloudbutton.joblib.register()
    assert joblib.parallel.BACKENDS["cloudbutton"] is CloudbuttonBackend


def test_results_come_back_in_input_order_with_auto_batching(cloudbutton_backend):
    parallel = Parallel()
    assert parallel(delayed(square)(i) for i in range(1000)) == [i * i for i in range(1000)]
    assert isinstance(parallel._backend, CloudbuttonBackend)
    assert parallel.n_dispatched_tasks == 1000
    assert parallel.n_dispatched_batches < 1000  # quick tasks were grouped into batches


def test_tasks_run_on_the_workers_not_in_the_caller(cloudbutton_backend):
    pids = Parallel(batch_size=1)(delayed(os.getpid)() for _ in range(20))
    assert os.getpid() not in pids


def _started_threads(before: set) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before
            and t.name in ("cloudbutton-joblib-callbacks", "cloudbutton-local-pool")]


def test_effective_n_jobs_is_the_executors_workers_and_starts_nothing(storage_url):
    before = set(threading.enumerate())
    backend = CloudbuttonBackend(max_workers=3, storage_url=storage_url)
    assert backend.effective_n_jobs(-1) == 3
    assert backend.effective_n_jobs(None) == 3
    assert backend.effective_n_jobs(-2) == 2
    assert backend.effective_n_jobs(8) == 3
    assert backend.effective_n_jobs(1) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)
    with parallel_config(backend="cloudbutton", max_workers=3, storage_url=storage_url):
        assert joblib.effective_n_jobs() == 3  # as scikit-learn asks it, outside any Parallel
    assert _started_threads(before) == []
    try:
        assert backend._started().backend.workers == 3  # what a started executor runs at once
        assert backend.effective_n_jobs(-1) == 3
    finally:
        backend.terminate()


def test_one_job_runs_in_the_calling_process(storage_url):
    with parallel_config(backend="cloudbutton", max_workers=1, storage_url=storage_url):
        assert Parallel()(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3


def test_bad_backend_arguments_are_refused_at_once():
    with pytest.raises(ConfigError, match="no_such_key"):
        parallel_config(backend="cloudbutton", no_such_key=1)
    with pytest.raises(ValueError, match="upload_threshold"):
        parallel_config(backend="cloudbutton", upload_threshold=-5)


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_return_as_generator(cloudbutton_backend, return_as):
    out = Parallel(return_as=return_as)(delayed(square)(i) for i in range(50))
    assert not isinstance(out, list)
    results = list(out)
    if return_as == "generator":
        assert results == [i * i for i in range(50)]
    else:
        assert sorted(results) == [i * i for i in range(50)]


# --- errors ----------------------------------------------------------------------------------------


def test_a_task_exception_is_raised_in_the_caller_with_its_type(cloudbutton_backend, storage_url):
    X = np.ones(100_000)
    with pytest.raises(TaskError, match="task 7 failed") as info:
        Parallel(batch_size=1)(delayed(fail_on)(i, 7, X) for i in range(20))
    assert any("Remote traceback" in note for note in getattr(info.value, "__notes__", []))
    assert Storage(storage_url).list_keys("joblib/") == []  # the shared X was deleted all the same
    with Parallel(batch_size=1) as parallel:  # one backend for several calls: it works again after an error
        for _ in range(5):  # and no batch the failed call had prepared ends up in the next one (a joblib bug)
            with pytest.raises(TaskError):
                parallel(delayed(fail_on)(i, 2, X) for i in range(6))
            assert parallel(delayed(fail_on)(i, -1, X) for i in range(6)) == list(range(6))
    # the backend still works afterwards
    assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def fail_or_write_late(i, path):
    if i == 1:
        time.sleep(0.2)
        raise TaskError(f"task {i} failed")
    time.sleep(1.0)
    open(path, "w").close()


def test_a_task_exception_stops_the_tasks_still_running(cloudbutton_backend, tmp_path):
    late = tmp_path / "late"
    with pytest.raises(TaskError, match="task 1 failed"):
        Parallel(batch_size=1)(delayed(fail_or_write_late)(i, str(late)) for i in range(2))
    time.sleep(1.5)
    assert not late.exists()  # its worker was stopped, as loky stops its workers
    assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_a_lost_worker_is_a_worker_lost_error(cloudbutton_backend):
    with pytest.raises(WorkerLostError):
        Parallel(batch_size=1)(delayed(exit_on)(i, 3) for i in range(6))
    assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_a_call_beyond_the_timeout_is_a_call_timeout_error(storage_url):
    with parallel_config(backend="cloudbutton", max_workers=2, storage_url=storage_url, timeout=1):
        with pytest.raises(CallTimeoutError):
            Parallel(batch_size=1)(delayed(time.sleep)(s) for s in [0, 60, 0])
    with parallel_config(backend="cloudbutton", max_workers=2, storage_url=storage_url):
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]  # on a new worker


@pytest.mark.parametrize("position", [0, 15])  # in the first batches (sent by the caller) or a later one
def test_an_unpicklable_argument_is_a_serialization_error(cloudbutton_backend, position):
    args = [threading.Lock() if i == position else i for i in range(20)]
    with pytest.raises(SerializationError, match="cannot pickle"):
        Parallel(batch_size=1)(delayed(square)(a) for a in args)


def test_storage_that_cannot_be_written_is_a_storage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    X = np.ones(100_000)
    with parallel_config(backend="cloudbutton", max_workers=2, storage_url=(blocker / "storage").as_uri()):
        with pytest.raises(StorageError, match="cannot write"):
            Parallel()(delayed(where_and_sum)(X, i) for i in range(4))


# --- shared arguments ------------------------------------------------------------------------------


def test_a_shared_array_is_uploaded_once_and_loaded_once_per_worker(storage_url):
    X = np.zeros(200_000)  # 1.6 MB
    storage = Storage(storage_url)
    backend = CloudbuttonBackend(max_workers=2, storage_url=storage_url)
    with parallel_config(backend=backend), Parallel(batch_size=1) as parallel:  # terminates at the end
        first = parallel(delayed(bump)(X, i) for i in range(40))
        second = parallel(delayed(bump)(X.copy(), i) for i in range(10))  # same content, another object
        keys = storage.list_keys("joblib/")
    assert [value for _, _, value in first + second] == list(range(40)) + list(range(10))
    assert backend.uploads == 1 and len(keys) == 1  # 50 tasks in 50 calls, one upload
    # Each task bumped X[0] of the X it was given: on each worker the counts go 1, 2, 3, ..., so every
    # task on a worker got the same X object, loaded once (also in the second run: same content hash).
    counts = {}
    for pid, count, _ in first + second:
        counts.setdefault(pid, []).append(count)
    assert os.getpid() not in counts
    assert all(sorted(c) == list(range(1, len(c) + 1)) for c in counts.values()), counts
    assert storage.list_keys("joblib/") == []  # deleted when the backend terminated
    assert not X.any()  # the caller's array is untouched


def total(data, i):
    return float(np.asarray(data.sum()).sum()) + i


@pytest.mark.parametrize("kind", ["bytes", "DataFrame", "sparse"])
def test_other_large_arguments_are_uploaded_once_too(storage_url, kind):
    values = np.arange(20_000, dtype=np.float64)
    if kind == "bytes":
        data, expected = values.tobytes(), None
    elif kind == "DataFrame":
        data = pytest.importorskip("pandas").DataFrame({"a": values, "b": values})
        expected = 2 * float(values.sum())
    else:
        data = pytest.importorskip("scipy.sparse").csr_matrix(values.reshape(100, 200))
        expected = float(values.sum())
    func = (lambda d, i: len(d) + i) if kind == "bytes" else total
    backend = CloudbuttonBackend(max_workers=2, storage_url=storage_url)
    with parallel_config(backend=backend):
        out = Parallel(batch_size=1)(delayed(func)(data, i) for i in range(8))
    assert out == [(len(data) if expected is None else expected) + i for i in range(8)]
    assert backend.uploads == 1


def test_an_array_changed_between_calls_is_sent_again(storage_url):
    X = np.zeros(100_000)
    backend = CloudbuttonBackend(max_workers=2, storage_url=storage_url)
    with parallel_config(backend=backend), Parallel() as parallel:
        first = [v for _, v in parallel(delayed(where_and_sum)(X, i) for i in range(4))]
        X += 1
        second = [v for _, v in parallel(delayed(where_and_sum)(X, i) for i in range(4))]
    assert first == [0, 1, 2, 3] and second == [1e5, 1e5 + 1, 1e5 + 2, 1e5 + 3]
    assert backend.uploads == 2


def test_small_arguments_travel_with_the_call(cloudbutton_backend, storage_url):
    with Parallel() as parallel:
        parallel(delayed(where_and_sum)(np.ones(10), i) for i in range(10))
        assert Storage(storage_url).list_keys("joblib/") == []


def test_worker_cache_is_bounded_in_bytes_and_a_missing_object_is_a_storage_error(storage_url):
    storage = Storage(storage_url)
    backend = CloudbuttonBackend(storage_url=storage_url, upload_threshold=1)
    arrays = [np.full(1000, i, dtype=np.float64) for i in range(3)]
    refs = [backend._share(a) for a in arrays]
    cache = cloudbutton.joblib._WorkerCache(max_bytes=2 * refs[0].nbytes)
    try:
        for ref, a in zip(refs, arrays, strict=True):
            assert np.array_equal(cache.load(ref), a)
        storage.delete_objects([r.key for r in refs])
        assert np.array_equal(cache.load(refs[2]), arrays[2])  # still cached: not read again
        with pytest.raises(StorageError, match=refs[0].key):
            cache.load(refs[0])  # the oldest was dropped to stay within max_bytes, and is gone from storage
    finally:
        backend.terminate()


# --- scikit-learn ----------------------------------------------------------------------------------


def test_grid_search_equals_the_sequential_result(storage_url):
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    expected = GridSearchCV(SVC(), grid, cv=5).fit(X, y)
    with joblib.parallel_backend("cloudbutton", max_workers=2, storage_url=storage_url):
        search = GridSearchCV(SVC(), grid, cv=5).fit(X, y)  # n_jobs=None: all the backend's workers
    assert search.best_params_ == expected.best_params_
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"])
    assert Storage(storage_url).list_keys("joblib/") == []


def test_cross_val_score_with_shared_data_equals_the_sequential_result(cloudbutton_backend, storage_url):
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]  # 300 KB: above the upload threshold
    model = SVC(gamma=0.001)
    expected = cross_val_score(model, X, y, cv=4)
    np.testing.assert_array_equal(cross_val_score(model, X, y, cv=4, n_jobs=-1), expected)
    assert Storage(storage_url).list_keys("joblib/") == []


# --- nested Parallel -------------------------------------------------------------------------------


@pytest.mark.parametrize("inner_backend", [None, "cloudbutton"])
def test_nested_parallel_runs_sequentially_inside_the_task(cloudbutton_backend, inner_backend):
    out = Parallel(batch_size=1)(delayed(nested)(i, inner_backend) for i in range(4))
    for i, (outer_pid, inner) in enumerate(out):
        assert outer_pid != os.getpid()
        assert [value for _, value in inner] == [i * 10 + j for j in range(3)]
        assert {pid for pid, _ in inner} == {outer_pid}  # in the worker that ran the task


# --- on another cloudbutton backend ------------------------------------------------------------------


def test_on_the_dask_backend(storage_url, tmp_path):
    """The same backend on a Dask cluster (threads in this process, so nothing to stop but the cluster)."""
    distributed = pytest.importorskip("distributed")
    dask = pytest.importorskip("dask")
    X, y = load_iris(return_X_y=True)
    X, y = np.repeat(X, 20, axis=0), np.repeat(y, 20)  # 96 KB: shared through storage
    grid = {"C": [0.1, 1, 10]}
    expected = GridSearchCV(SVC(), grid, cv=3).fit(X, y).cv_results_["mean_test_score"]
    with dask.config.set({"temporary-directory": str(tmp_path)}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"  # 8787 may be taken
    ) as c:
        settings = {"backend": "dask", "dask_address": c.scheduler_address, "storage_url": storage_url}
        backend = CloudbuttonBackend(config=settings)  # via parallel_config: backend="cloudbutton", config=settings
        with parallel_config(backend=backend):
            scores = GridSearchCV(SVC(), grid, cv=3).fit(X, y).cv_results_["mean_test_score"]
            nested_out = Parallel(batch_size=1)(delayed(nested)(i) for i in range(2))
    np.testing.assert_array_equal(scores, expected)
    assert backend.config.backend == "dask" and backend.uploads == 1
    assert [[v for _, v in inner] for _, inner in nested_out] == [[0, 1, 2], [10, 11, 12]]
    assert Storage(storage_url).list_keys("joblib/") == []
