"""The storage partitioner: every line seen by exactly one partition, planning reads no object."""

import pickle
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
    monkeypatch.setattr(partition_module, "_BLOCK", block)  # separators straddling read blocks
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


def test_an_object_that_changed_size_is_detected(tmp_path):
    path = tmp_path / "grows.txt"
    path.write_bytes(b"a\nb\n")
    (part,) = plan_partitions(str(path))
    path.write_bytes(b"a\nb\nc\n")
    with pytest.raises(StorageError, match="changed size"):
        part.data_stream.read()


def test_lines_longer_than_a_chunk_and_empty_objects(tmp_path):
    data = b"a" * 50 + b"\n" + b"b\n" + b"c" * 30
    (tmp_path / "long.txt").write_bytes(data)
    (tmp_path / "empty.txt").write_bytes(b"")
    parts = plan_partitions(f"file://{tmp_path}/long.txt", chunk_size=4)
    pieces = [p.data_stream.read() for p in parts]
    assert [x for x in pieces if x] == [b"a" * 50 + b"\n", b"b\n", b"c" * 30]
    empty = plan_partitions(str(tmp_path / "empty.txt"), chunk_size=4)
    assert len(empty) == 1 and empty[0].size == 0 and empty[0].data_stream.read() == b""


def test_partition_attributes(tmp_path):
    (tmp_path / "d.txt").write_bytes(b"0123456789")
    parts = plan_partitions(f"file://{tmp_path}/d.txt", chunk_size=4, newline=None)
    assert [p.data_byte_range for p in parts] == [(0, 4), (4, 8), (8, 10)]
    assert all(p.chunk_size == 4 and p.size == 10 and p.key.endswith("d.txt") for p in parts)
    assert parts[0].url == f"file://{tmp_path}/d.txt"
    assert [p.data_byte_range for p in plan_partitions(str(tmp_path), chunk_number=2, newline=None)] == [
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


def test_missing_objects_are_storage_errors_naming_the_url(tmp_path):
    for url in [f"file://{tmp_path}/nope.txt", f"file://{tmp_path}/*.csv", "memory://no/such/prefix/"]:
        with pytest.raises(StorageError, match=url.replace("*", r"\*")):
            plan_partitions(url)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(StorageError, match="empty_dir"):
        plan_partitions(f"file://{tmp_path}/empty_dir")


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


def test_glob_and_prefix_select_the_right_objects(tmp_path):
    for name in ["a.csv", "b.csv", "c.txt", "sub/d.csv"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"1\n2\n")
    keys = lambda parts: sorted({p.key.removeprefix(str(tmp_path) + "/") for p in parts})  # noqa: E731
    assert keys(plan_partitions(f"file://{tmp_path}/*.csv")) == ["a.csv", "b.csv"]
    assert keys(plan_partitions(f"file://{tmp_path}/**/*.csv")) == ["a.csv", "b.csv", "sub/d.csv"]
    assert keys(plan_partitions(f"file://{tmp_path}/sub/")) == ["sub/d.csv"]
    assert keys(plan_partitions(f"file://{tmp_path}")) == ["a.csv", "b.csv", "c.txt", "sub/d.csv"]
    assert keys(plan_partitions([f"file://{tmp_path}/c.txt", f"file://{tmp_path}/sub"])) == ["c.txt", "sub/d.csv"]


def count_lines(obj):
    return obj.data_stream.read().count(b"\n")


def test_map_over_partitions_counts_every_line_once(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"".join(b"row %d %s\r\n" % (i, b"x" * (i % 37)) for i in range(20000)))
    partitions = plan_partitions(f"file://{path}", chunk_size=10_000)
    assert len(partitions) > 10
    with FunctionExecutor(max_workers=2) as fexec:
        fexec.map(count_lines, [{"obj": p} for p in partitions])
        assert sum(fexec.get_result()) == 20000
