"""The Storage facade over fsspec, on real local files and fsspec's in-memory filesystem."""

import io
import pickle
import uuid

import pytest

from cloudbutton.errors import CloudbuttonError, StorageError
from cloudbutton.storage import Storage, default_storage_url


@pytest.fixture(params=["file", "memory"])
def storage(request, tmp_path):
    if request.param == "file":
        return Storage(f"file://{tmp_path}/store")
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
    assert url.startswith(("file://", "memory://"))
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
