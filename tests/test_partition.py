"""The storage partitioner: every line seen by exactly one partition, planning reads no object."""

import functools
import http.server
import pickle
import socket
import threading
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudbutton import FunctionExecutor
from cloudbutton import partition as partition_module
from cloudbutton.errors import StorageError
from cloudbutton.partition import Partition, plan_partitions


class CountingFS(MemoryFileSystem):
    """A real in-memory filesystem (own store) that counts how often objects are opened."""

    protocol = "countmem"
    store: dict = {}
    pseudo_dirs = [""]
    opens = 0

    def _open(self, path, mode="rb", **kwargs):
        type(self).opens += 1
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("countmem", CountingFS, clobber=True)


def _write(url: str, data: bytes) -> None:
    options = {"auto_mkdir": True} if url.startswith("file://") else {}
    with fsspec.open(url, "wb", **options) as f:
        f.write(data)


def _read_all(partitions: list[Partition]) -> bytes:
    return b"".join(pickle.loads(pickle.dumps(p)).data_stream.read() for p in partitions)


lines = st.lists(
    st.tuples(
        st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x").replace(b"\r", b"y")),
        st.sampled_from([b"\n", b"\r\n"]),
    ),
    max_size=12,
)


@st.composite
def text_objects(draw):
    body = b"".join(text + end for text, end in draw(lines))
    if body and draw(st.booleans()):
        body = body.rstrip(b"\n").rstrip(b"\r")  # no final newline
    return body


@pytest.mark.parametrize("scheme", ["file", "memory"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(text_objects(), st.binary(max_size=60)),
    chunk=st.integers(1, 70),
    by_number=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n", None]),
    block=st.sampled_from([1, 2, 3, 1 << 16]),
)
def test_partitions_reassemble_the_object_exactly(
    tmp_path, monkeypatch, scheme, data, chunk, by_number, newline, block
):
    monkeypatch.setattr(partition_module, "_PROBE", block)  # separators straddling read blocks
    base = f"file://{tmp_path}" if scheme == "file" else f"memory://{uuid.uuid4().hex}"
    url = f"{base}/obj-{uuid.uuid4().hex}.txt"
    _write(url, data)
    options = {"chunk_number": chunk} if by_number else {"chunk_size": chunk}
    parts = plan_partitions(url, newline=newline, **options)
    assert _read_all(parts) == data
    assert [p.part for p in parts] == list(range(len(parts)))
    if newline is None:  # binary: exact, contiguous ranges
        assert parts[0].data_byte_range[0] == 0 and parts[-1].data_byte_range[1] == len(data)
        for p in parts:
            s, e = p.data_byte_range
            assert p.open().read() == data[s:e]
    else:  # every partition boundary is a line boundary: no line split
        sep, boundaries, i = newline.encode(), {0, len(data)}, data.find(newline.encode())
        while i >= 0:
            boundaries.add(i + len(sep))
            i = data.find(sep, i + len(sep))
        offset = 0
        for p in parts:
            offset += len(p.open().read())
            assert offset in boundaries


@settings(max_examples=50, deadline=None)
@given(objects=st.lists(text_objects(), min_size=1, max_size=4), chunk=st.integers(1, 20))
def test_every_object_under_a_prefix_is_reassembled(objects, chunk):
    prefix = f"memory://prefix-{uuid.uuid4().hex}/"
    for i, data in enumerate(objects):
        _write(f"{prefix}obj-{i}.txt", data)
    parts = plan_partitions(prefix, chunk_size=chunk)
    by_url = {}
    for p in parts:
        by_url.setdefault(p.url, []).append(p)
    assert [_read_all(by_url[f"{prefix.replace('://', ':///')}obj-{i}.txt"]) for i in range(len(objects))] == objects


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    """A folder URL with nothing in it yet: a local directory, or a fresh prefix on a real S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    return f"file://{tmp_path}"


def _write_elsewhere(url: str, data: bytes) -> None:
    """Write as another client would: through a filesystem instance of its own (no shared caches)."""
    options = {"auto_mkdir": True} if url.startswith("file://") else {}
    with fsspec.open(url, "wb", skip_instance_cache=True, **options) as f:
        f.write(data)


def test_an_object_that_changed_size_is_detected(base):
    _write(f"{base}/grows.txt", b"a\nb\n")
    _write(f"{base}/other.txt", b"x\n")
    parts = plan_partitions(base)  # a prefix: sizes come from one listing
    _write_elsewhere(f"{base}/grows.txt", b"a\nb\nc\n")
    with pytest.raises(StorageError, match="changed size") as info:
        parts[0].data_stream.read()
    assert f"{base}/grows.txt" in str(info.value) and "4 -> 6 bytes" in str(info.value)
    assert parts[1].data_stream.read() == b"x\n"


def test_lines_longer_than_a_chunk_and_empty_objects(base):
    data = b"a" * 50 + b"\n" + b"b\n" + b"c" * 30
    _write(f"{base}/long.txt", data)
    _write(f"{base}/empty.txt", b"")
    parts = plan_partitions(f"{base}/long.txt", chunk_size=4)
    pieces = [p.data_stream.read() for p in parts]
    assert [x for x in pieces if x] == [b"a" * 50 + b"\n", b"b\n", b"c" * 30]
    empty = plan_partitions(f"{base}/empty.txt", chunk_size=4)
    assert len(empty) == 1 and empty[0].size == 0 and empty[0].data_stream.read() == b""


@pytest.mark.parametrize("newline", ["\n", "\r\n", None])
def test_partitions_reassemble_exactly(base, newline):
    """A few fixed cases of the property test above, on every storage (range reads are slow on moto)."""
    data = b"".join(b"%d %s\r\n" % (i, b"x" * (i % 5)) for i in range(12)) + b"no newline at the end"
    _write(f"{base}/obj.txt", data)
    for options in [{"chunk_size": 4}, {"chunk_size": 40}, {"chunk_number": 3}]:
        parts = plan_partitions(f"{base}/obj.txt", newline=newline, **options)
        assert _read_all(parts) == data, options


def test_partition_attributes(base):
    _write(f"{base}/d.txt", b"0123456789")
    parts = plan_partitions(f"{base}/d.txt", chunk_size=4, newline=None)
    assert [p.data_byte_range for p in parts] == [(0, 4), (4, 8), (8, 10)]
    assert all(p.chunk_size == 4 and p.size == 10 and p.key.endswith("d.txt") for p in parts)
    assert parts[0].url == f"{base}/d.txt"
    assert [p.data_byte_range for p in plan_partitions(base, chunk_number=2, newline=None)] == [
        (0, 5),
        (5, 10),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": -5},
        {"chunk_number": 0},
        {"chunk_size": 4, "chunk_number": 2},
        {"chunk_size": 1.5},
        {"newline": ""},
    ],
)
def test_bad_arguments_are_value_errors(tmp_path, kwargs):
    (tmp_path / "d.txt").write_bytes(b"x\n")
    with pytest.raises(ValueError):
        plan_partitions(str(tmp_path / "d.txt"), **kwargs)


def test_missing_objects_are_storage_errors_naming_the_url(base):
    _write(f"{base}/present.txt", b"x\n")
    for url in [f"{base}/nope.txt", f"{base}/*.csv", f"{base}/no/such/prefix/", "memory://no/such/prefix/"]:
        with pytest.raises(StorageError, match="no objects at " + url.replace("*", r"\*")):
            plan_partitions(url)


def test_an_empty_folder_has_no_objects(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(StorageError, match="empty_dir"):
        plan_partitions(f"file://{tmp_path}/empty_dir")


def test_a_missing_bucket_is_a_storage_error_naming_the_url(s3):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/data/"
    with pytest.raises(StorageError, match="bucket does not exist") as info:
        plan_partitions(url)
    assert url in str(info.value)


def test_refused_credentials_when_planning_and_when_reading(s3, s3_url, s3_checking_credentials):
    refused = {"endpoint_url": s3_checking_credentials, "key": "AKIAUNKNOWN", "secret": "nope"}
    with pytest.raises(StorageError, match="permission denied") as info:
        plan_partitions(f"{s3_url}/", storage_options=refused)
    assert s3_url in str(info.value) and "Access Key Id you provided does not exist" in str(info.value)
    _write(f"{s3_url}/d.txt", b"1\n2\n")
    (part,) = plan_partitions(f"{s3_url}/d.txt", storage_options=s3.storage_options)
    part.storage_options = refused  # as on a worker whose credentials are refused
    with pytest.raises(StorageError, match="permission denied") as info:
        part.data_stream.read()
    assert f"{s3_url}/d.txt" in str(info.value)


def test_a_deleted_object_is_a_storage_error_when_read(base):
    _write(f"{base}/gone.txt", b"1\n2\n")
    (part,) = plan_partitions(f"{base}/gone.txt")
    fsspec.open(f"{base}/gone.txt").fs.rm(part.key)
    with pytest.raises(StorageError, match="no object at") as info:
        part.data_stream.read()
    assert "gone.txt" in str(info.value)


def test_planning_reads_no_object_and_workers_read_their_own_range():
    CountingFS.opens = 0
    for i in range(5):
        _write(f"countmem://data/part-{i}.txt", b"line\n" * 1000)
    CountingFS.opens = 0
    parts = plan_partitions("countmem://data/", chunk_size=100)
    assert len(parts) == 5 * 50
    assert CountingFS.opens == 0
    assert parts[7].data_stream.read().count(b"\n") >= 1
    assert CountingFS.opens == 1


def test_glob_and_prefix_select_the_right_objects(base):
    for name in ["a.csv", "b.csv", "c.txt", "sub/d.csv"]:
        _write(f"{base}/{name}", b"1\n2\n")
    root = fsspec.core.url_to_fs(base)[1]
    keys = lambda parts: sorted({p.key.removeprefix(root + "/") for p in parts})  # noqa: E731
    assert keys(plan_partitions(f"{base}/*.csv")) == ["a.csv", "b.csv"]
    assert keys(plan_partitions(f"{base}/**/*.csv")) == ["a.csv", "b.csv", "sub/d.csv"]
    assert keys(plan_partitions(f"{base}/sub/")) == ["sub/d.csv"]
    assert keys(plan_partitions(base)) == ["a.csv", "b.csv", "c.txt", "sub/d.csv"]
    assert keys(plan_partitions([f"{base}/c.txt", f"{base}/sub"])) == ["c.txt", "sub/d.csv"]


def count_lines(obj):
    return obj.data_stream.read().count(b"\n")


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_map_over_partitions_counts_every_line_once(request, tmp_path, scheme):
    data = b"".join(b"row %d %s\r\n" % (i, b"x" * (i % 37)) for i in range(20000))
    options = {}
    if scheme == "s3":  # the partitions carry the options: workers may predate the AWS_* environment
        url, options = f"{request.getfixturevalue('s3_url')}/big.txt", request.getfixturevalue("s3").storage_options
    else:
        url = f"file://{tmp_path}/big.txt"
    _write(url, data)
    partitions = plan_partitions(url, chunk_size=10_000, storage_options=options)
    assert len(partitions) > 10
    with FunctionExecutor(max_workers=2) as fexec:
        fexec.map(count_lines, [{"obj": p} for p in partitions])
        assert sum(fexec.get_result()) == 20000


# --- HTTP(S) -------------------------------------------------------------------------------------


def test_partitions_read_over_http_with_byte_ranges(http_server):
    name = f"h-{uuid.uuid4().hex}.txt"
    data = b"".join(b"%d,%s\n" % (i, b"y" * (i % 11)) for i in range(3000))
    with open(f"{http_server.directory}/{name}", "wb") as f:
        f.write(data)
    url = f"{http_server.url}/{name}"
    parts = plan_partitions(url, chunk_size=1000)
    assert len(parts) > 10 and all(p.url == url and p.size == len(data) for p in parts)
    pieces = [pickle.loads(pickle.dumps(p)).data_stream.read() for p in parts]
    assert b"".join(pieces) == data and all(not x or x.endswith(b"\n") for x in pieces)
    with FunctionExecutor(max_workers=2) as fexec:
        assert sum(fexec.get_result(fexec.map(count_lines, [{"obj": p} for p in parts]))) == 3000


def test_http_failures_name_the_url(http_server):
    missing = f"{http_server.url}/no-such-{uuid.uuid4().hex}.txt"
    with pytest.raises(StorageError, match="no objects at " + missing):
        plan_partitions(missing)
    name = f"h-{uuid.uuid4().hex}.txt"
    with open(f"{http_server.directory}/{name}", "wb") as f:
        f.write(b"a\nb\n")
    (part,) = plan_partitions(f"{http_server.url}/{name}")
    with open(f"{http_server.directory}/{name}", "ab") as f:
        f.write(b"c\n")
    with pytest.raises(StorageError, match="changed size"):
        part.data_stream.read()


def test_a_refused_connection_names_the_endpoint_not_a_missing_object():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(StorageError) as info:
        plan_partitions(f"{endpoint}/data.txt")
    message = str(info.value)
    assert message.startswith(f"cannot list {endpoint}/data.txt: cannot connect to the endpoint {endpoint} "
                              "(connection refused); check that the server is running"), message
    assert "no objects at" not in message


def test_partitions_on_s3_read_their_own_bytes_and_little_more(s3, s3_url):
    """Each partition fetches its own range (s3fs would otherwise read ahead 50 MB past its end)."""
    data = b"".join(b"%06d,%s\n" % (i, b"v" * (i % 23)) for i in range(20000))
    _write(f"{s3_url}/ranges.csv", data)
    parts = plan_partitions(f"{s3_url}/ranges.csv", chunk_size=64 * 1024, storage_options=s3.storage_options)
    fs = fsspec.filesystem("s3", **s3.storage_options)  # the instance the partitions use (fsspec caches it)
    fetched, call = [], fs._call_s3

    async def counting(method, *args, **kwargs):  # counts what the real server sends back
        response = await call(method, *args, **kwargs)
        if method == "get_object":
            fetched.append(response["ContentLength"])
        return response

    fs._call_s3 = counting
    try:
        assert b"".join(p.data_stream.read() for p in parts) == data
    finally:
        del fs._call_s3
    assert len(parts) > 5 and len(data) <= sum(fetched) < 1.2 * len(data)


def test_directory_markers_are_not_objects(s3_url):
    fs = fsspec.filesystem("s3")
    fs.touch(fs._strip_protocol(s3_url) + "/folder/")  # an empty "folder/" key, as S3 consoles create
    _write(f"{s3_url}/folder/data.txt", b"1\n")
    assert [p.url for p in plan_partitions(f"{s3_url}/")] == [f"{s3_url}/folder/data.txt"]
    assert [p.url for p in plan_partitions(f"{s3_url}/folder")] == [f"{s3_url}/folder/data.txt"]


def test_a_server_without_byte_ranges_is_a_storage_error(tmp_path):
    """The stdlib's plain handler ignores Range: a partition past the start cannot be read from it."""
    (tmp_path / "d.txt").write_bytes(b"line\n" * 100)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/d.txt"
        parts = plan_partitions(url, chunk_size=100)
        assert parts[0].data_stream.read(5) == b"line\n"  # from the start: fine
        with pytest.raises(StorageError, match="range requests") as info:
            parts[2].data_stream.read()
        assert url in str(info.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_partition_names_the_bucket_of_object_store_urls():
    def part(url):
        return Partition(url, "k", 0, (0, 1), 1, 1)

    assert part("s3://my-bucket/books/a.txt").bucket == "my-bucket"
    assert part("gs://other/x").bucket == "other"
    assert part("file:///tmp/a.txt").bucket is None
    assert part("https://host/a.txt").bucket is None
