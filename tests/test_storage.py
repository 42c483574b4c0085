"""The Storage facade over fsspec, on real local files, fsspec's in-memory filesystem and a real S3
server (moto_server on 127.0.0.1), and its failures: missing objects and buckets, refused credentials,
an unreachable endpoint."""

import io
import pickle
import socket
import uuid

import pytest

from cloudbutton import FunctionExecutor
from cloudbutton.errors import CloudbuttonError, StorageError
from cloudbutton.storage import CloudObject, Storage, default_storage_url


@pytest.fixture(params=["file", "memory", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        return Storage(f"file://{tmp_path}/store")
    if request.param == "s3":
        return Storage(request.getfixturevalue("s3_url"))
    return Storage(f"memory://test-{uuid.uuid4().hex}")


def test_put_get_head(storage):
    storage.put_object("a/b.txt", b"hello world")
    storage.put_object("s.txt", "text is utf-8")
    storage.put_object("f.bin", io.BytesIO(b"\x00" * 3_000_000))
    assert storage.get_object("a/b.txt") == b"hello world"
    assert storage.get_object("s.txt") == b"text is utf-8"
    assert len(storage.get_object("f.bin")) == 3_000_000
    head = storage.head_object("a/b.txt")
    assert head["content-length"] == "11" and head["size"] == 11 and head["url"].endswith("/a/b.txt")
    storage.put_object("a/b.txt", b"replaced")
    assert storage.get_object("a/b.txt") == b"replaced"


def test_ranges_and_streams(storage):
    storage.put_object("r.bin", b"0123456789")
    assert storage.get_object("r.bin", extra_get_args={"Range": "bytes=2-5"}) == b"2345"  # HTTP: end included
    assert storage.get_object("r.bin", extra_get_args={"Range": "bytes=7-"}) == b"789"
    assert storage.get_object("r.bin", byte_range=(2, 5)) == b"234"  # Python slice: end excluded
    assert storage.get_object("r.bin", byte_range=(8, None)) == b"89"
    with storage.get_object("r.bin", stream=True) as f:
        assert f.read(3) == b"012" and f.read() == b"3456789"
    assert storage.get_object("r.bin", stream=True, byte_range=(1, 3)).read() == b"12"
    with pytest.raises(ValueError):
        storage.get_object("r.bin", extra_get_args={"Range": "bytes=oops"})
    with pytest.raises(ValueError):
        storage.get_object("r.bin", byte_range=(5, 2))


def test_listing_by_prefix(storage):
    for key in ["logs/2024/a.log", "logs/2024/b.log", "logs/2025/c.log", "logsheet.csv", "data/x.bin"]:
        storage.put_object(key, key.encode())
    assert storage.list_keys() == sorted(
        ["logs/2024/a.log", "logs/2024/b.log", "logs/2025/c.log", "logsheet.csv", "data/x.bin"]
    )
    assert storage.list_keys("logs/") == ["logs/2024/a.log", "logs/2024/b.log", "logs/2025/c.log"]
    assert storage.list_keys("logs") == ["logs/2024/a.log", "logs/2024/b.log", "logs/2025/c.log", "logsheet.csv"]
    assert storage.list_keys("logs/2024/b") == ["logs/2024/b.log"]
    assert storage.list_keys("nothing/here/") == [] and storage.list_keys("zzz") == []
    objects = storage.list_objects("data/")
    assert objects == [{"Key": "data/x.bin", "Size": len(b"data/x.bin")}]


def test_lithops_bucket_forms(storage):
    storage.put_object("bucket1", "k.txt", b"in a bucket")  # Lithops: put_object(bucket, key, body)
    assert storage.get_object("bucket1", "k.txt") == b"in a bucket"
    assert storage.get_object("bucket1/k.txt") == b"in a bucket"  # a bucket is a sub-folder
    assert storage.get_object("k.txt", bucket="bucket1") == b"in a bucket"
    assert storage.head_object("bucket1", "k.txt")["content-length"] == "11"
    assert storage.list_keys("bucket1", "") == ["k.txt"]
    assert storage.list_keys(bucket="bucket1") == ["k.txt"]
    assert storage.list_objects("bucket1", "k") == [{"Key": "k.txt", "Size": 11}]
    storage.delete_objects("bucket1", ["k.txt"])
    assert storage.list_keys(bucket="bucket1") == []


def test_deletes(storage):
    for key in ["d/1", "d/2", "d/3", "keep"]:
        storage.put_object(key, b"x")
    storage.delete_object("d/1")
    assert storage.list_keys() == ["d/2", "d/3", "keep"]
    storage.delete_objects(["d/2", "d/3", "d/never-existed"])
    assert storage.list_keys() == ["keep"]
    with pytest.raises(StorageError, match="d/1"):
        storage.delete_object("d/1")
    with pytest.raises(TypeError):
        storage.delete_objects("keep")


def test_missing_objects_are_storage_errors_naming_the_url(storage):
    storage.put_object("folder/inner", b"x")
    url = storage.object_url("missing.txt")
    assert url.startswith(("file://", "memory://", "s3://"))
    for call in [
        lambda: storage.get_object("missing.txt"),
        lambda: storage.get_object("missing.txt", stream=True),
        lambda: storage.get_object("missing.txt", byte_range=(0, 2)),
        lambda: storage.head_object("missing.txt"),
        lambda: storage.delete_object("missing.txt"),
    ]:
        with pytest.raises(StorageError, match="missing.txt") as info:
            call()
        assert url in str(info.value) and isinstance(info.value, CloudbuttonError)
    with pytest.raises(StorageError, match="folder"):
        storage.head_object("folder")  # a prefix is not an object
    with pytest.raises(StorageError, match="folder"):
        storage.get_object("folder")


def test_default_storage_is_a_local_directory(monkeypatch, tmp_path):
    assert default_storage_url().startswith("file://")
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_URL", f"file://{tmp_path}/env-store")
    s = Storage()
    s.put_object("k", b"v")
    assert (tmp_path / "env-store" / "k").read_bytes() == b"v"
    assert repr(s) == f"Storage('file://{tmp_path}/env-store')"


def test_bad_urls_and_keys(tmp_path):
    with pytest.raises(StorageError, match="nosuchproto"):
        Storage("nosuchproto://x")
    with pytest.raises(ValueError):
        Storage(f"file://{tmp_path}").put_object("", b"x")


def test_storage_is_picklable(tmp_path):
    s = pickle.loads(pickle.dumps(Storage(f"file://{tmp_path}")))
    s.put_object("p", b"1")
    assert s.get_object("p") == b"1"


# --- cloud objects ---------------------------------------------------------------------------------


def test_cloudobjects_round_trip(storage):
    cobj = storage.put_cloudobject(b"some bytes")
    assert isinstance(cobj, CloudObject) and cobj.key.startswith("cloudobjects/")
    assert cobj.url == storage.object_url(cobj.key)
    assert storage.get_cloudobject(pickle.loads(pickle.dumps(cobj))) == b"some bytes"
    named = storage.put_cloudobject(io.BytesIO(b"streamed"), key="results/r1")
    assert named.key == "results/r1" and storage.get_object("results/r1") == b"streamed"
    with storage.get_cloudobject(named, stream=True) as f:
        assert f.read() == b"streamed"
    assert storage.put_cloudobject("text").key != cobj.key  # unique keys
    storage.delete_cloudobject(cobj)
    for call in [lambda: storage.get_cloudobject(cobj), lambda: storage.delete_cloudobject(cobj)]:
        with pytest.raises(StorageError, match="no object at") as info:
            call()
        assert cobj.url in str(info.value)


def read_cloudobject(storage, cobj):
    return storage.get_cloudobject(cobj).upper()


def write_cloudobject(storage, i):
    return storage.put_cloudobject(b"from call %d" % i)


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_cloudobjects_travel_between_calls_on_workers(request, tmp_path, scheme):
    if scheme == "s3":
        s3 = request.getfixturevalue("s3")  # explicit options: workers may predate the AWS_* environment
        storage = Storage(request.getfixturevalue("s3_url"), **s3.storage_options)
    else:
        storage = Storage(f"file://{tmp_path}/store")
    cobjs = [storage.put_cloudobject(b"value %d" % i) for i in range(3)]
    with FunctionExecutor(max_workers=2) as fexec:
        assert fexec.get_result(fexec.map(read_cloudobject, [(storage, c) for c in cobjs])) == [
            b"VALUE 0", b"VALUE 1", b"VALUE 2"
        ]
        written = fexec.get_result(fexec.map(write_cloudobject, [(storage, i) for i in range(2)]))
    assert [storage.get_cloudobject(c) for c in written] == [b"from call 0", b"from call 1"]


# --- failures on a real S3 server ------------------------------------------------------------------


def test_missing_bucket_is_a_storage_error_naming_the_url(s3):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    storage = Storage(f"s3://{bucket}/data")
    for call, url in [
        (lambda: storage.get_object("k"), f"s3://{bucket}/data/k"),
        (lambda: storage.head_object("k"), f"s3://{bucket}/data/k"),
        (lambda: storage.put_object("k", b"x"), f"s3://{bucket}/data/k"),
        (lambda: storage.list_keys(), f"s3://{bucket}/data"),
        (lambda: storage.delete_object("k"), f"s3://{bucket}/data/k"),
    ]:
        with pytest.raises(StorageError) as info:
            call()
        assert url in str(info.value) and "bucket does not exist" in str(info.value)


def test_an_empty_prefix_lists_nothing_and_directory_markers_are_not_objects(s3_url):
    storage = Storage(s3_url)
    assert storage.list_keys() == []
    storage.fs.touch(storage.root + "/folder/")  # a "directory marker", as consoles create
    storage.put_object("folder/a", b"1")
    assert storage.list_keys() == ["folder/a"]
    with pytest.raises(StorageError, match="folder"):
        storage.head_object("folder")


def test_refused_credentials_name_the_url_and_the_providers_message(s3_checking_credentials):
    storage = Storage("s3://bucket/prefix", endpoint_url=s3_checking_credentials, key="AKIAUNKNOWN", secret="nope")
    with pytest.raises(StorageError, match="permission denied") as info:
        storage.list_keys()
    assert "s3://bucket/prefix" in str(info.value) and "Access Key Id you provided does not exist" in str(info.value)
    for call in [lambda: storage.get_object("k"), lambda: storage.put_object("k", b"x")]:
        with pytest.raises(StorageError, match="permission denied") as info:
            call()
        assert "s3://bucket/prefix/k" in str(info.value)


def test_an_unreachable_endpoint_is_a_storage_error_naming_the_url():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    storage = Storage("s3://bucket", endpoint_url=endpoint, key="a", secret="b",
                      config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    for call, verb in [(lambda: storage.get_object("k"), "read"), (lambda: storage.put_object("k", b"x"), "write")]:
        with pytest.raises(StorageError, match=f"cannot {verb} s3://bucket/k") as info:
            call()
        message = str(info.value)  # names the endpoint, says what happened and what to check
        assert f"cannot connect to the endpoint {endpoint} (connection refused)" in message, message
        assert "endpoint_url" in message and "no object at" not in message


# --- writes that fail say they cannot write, never "no object at" -----------------------------------


def test_call_data_that_cannot_be_written_locally_says_so(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with FunctionExecutor(max_workers=1, storage_url=(blocker / "store").as_uri(), storage_threshold=1) as fexec:
        with pytest.raises(StorageError) as info:  # the caller writes the call's arguments to storage
            fexec.get_result(fexec.map(len, [b"x" * 100]))
    message = str(info.value)
    assert message.startswith("cannot write ") and f"to {(blocker / 'store').as_uri()}/" in message, message
    assert "Not a directory" in message and "no object at" not in message


def test_writes_to_a_missing_bucket_say_they_cannot_write(s3):
    bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    with FunctionExecutor(max_workers=1, storage_url=bucket, storage_threshold=1) as fexec:
        with pytest.raises(StorageError) as info:
            fexec.map(len, [b"x" * 100])
    with pytest.raises(StorageError) as put:
        Storage(bucket).put_object("k", b"x")
    for error in (info.value, put.value):
        message = str(error)
        assert message.startswith("cannot write") and f"{bucket}/" in message, message
        assert "the folder or bucket does not exist" in message and "no object at" not in message
