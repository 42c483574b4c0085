"""Benchmark 2: partition planning of many objects under a prefix, and the storage requests it makes.

``plan_partitions(prefix)`` over 10,000 objects in a local folder (``file://``), and over fewer
objects on a real S3 server (``moto_server`` started on 127.0.0.1 by this script). Printed next to
a baseline measured in the same run: the bare fsspec listing of the same prefix (``fs.find``),
which planning cannot beat. Storage requests are counted on the filesystem instance itself
(local: the ``ls``/``info``/``open`` primitives, where a detailed ``ls`` stats every entry, one
``info`` each; S3: every S3 API call s3fs sends); planning must make listing requests only, never a read.

    python benchmarks/bench_partition_planning.py [--files 10000] [--s3-objects 2000] [--reps 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import fsspec
from _util import describe, header, median, timed

from cloudbutton.partition import plan_partitions
from cloudbutton.storage import filesystem

LOCAL_PRIMITIVES = ("ls", "info", "_open", "cat_file", "cat")
READS = {"_open", "cat_file", "cat", "get_object", "head_object"}


class Counter:
    """Counts calls of methods of one fsspec filesystem instance (wrapped on the instance only)."""

    def __init__(self, fs, names):
        self.calls = collections.Counter()
        for name in names:
            setattr(fs, name, self._wrap(name, getattr(fs, name)))

    def _wrap(self, name, method):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted

    def take(self) -> dict:
        calls, self.calls = dict(self.calls), collections.Counter()
        return calls


class S3Counter(Counter):
    """Counts the S3 API calls s3fs sends (its one ``_call_s3`` coroutine), by operation name."""

    def __init__(self, fs):
        self.calls = collections.Counter()
        call = fs._call_s3

        async def counted(method, *args, **kwargs):
            self.calls[method if isinstance(method, str) else method.__name__] += 1
            return await call(method, *args, **kwargs)

        fs._call_s3 = counted


def measure(label: str, url: str, fs, counter: Counter, reps: int, storage_options: dict) -> None:
    path = fs._strip_protocol(url)
    plan_times, list_times = [], []
    for _ in range(reps):  # interleaved; no listing cache carried from one run to the next
        fs.invalidate_cache()
        list_times.append(timed(lambda: fs.find(path, detail=True)))
        fs.invalidate_cache()
        plan_times.append(timed(lambda: plan_partitions(url, storage_options=storage_options)))
    counter.take()
    fs.invalidate_cache()
    listed = fs.find(path, detail=True)
    list_calls = counter.take()
    fs.invalidate_cache()
    parts = plan_partitions(url, storage_options=storage_options)
    plan_calls = counter.take()
    assert len(parts) == len(listed), (len(parts), len(listed))
    reads = sum(n for name, n in plan_calls.items() if name in READS)
    n = len(parts)
    print(f"-- {label}: {n} objects under {url}")
    print(f"   plan_partitions:      {describe(plan_times)}  ({median(plan_times) / n * 1e6:.1f} us per object)")
    print(f"   baseline fs.find:     {describe(list_times)}  ({median(list_times) / n * 1e6:.1f} us per object)")
    print(f"   ratio plan / listing: {median(plan_times) / median(list_times):.2f}x")
    print(f"   storage requests, plan_partitions: {sum(plan_calls.values())} {plan_calls}")
    print(f"   storage requests, bare listing:    {sum(list_calls.values())} {list_calls}")
    print(f"   object reads while planning: {reads} ({'none, as required' if reads == 0 else 'NOT MET'})")


def local(files: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "data")
        os.mkdir(folder)
        for i in range(files):
            with open(os.path.join(folder, f"part-{i:05d}.csv"), "wb") as f:
                f.write(b"x,y\n" * (1 + i % 50))
        fs, _ = filesystem(f"file://{folder}")  # the instance plan_partitions uses (fsspec caches it)
        measure("local folder", f"file://{folder}/", fs, Counter(fs, LOCAL_PRIMITIVES), reps, {})


def s3(objects: int, reps: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"  # with region_name moto refuses the bucket
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        fs = fsspec.filesystem("s3", **options)
        fs.mkdir(bucket)
        t = time.perf_counter()
        fs.pipe({f"{bucket}/data/part-{i:05d}.csv": b"x,y\n" * (1 + i % 50) for i in range(objects)})
        print(f"   (uploaded {objects} objects to moto in {time.perf_counter() - t:.1f} s)")
        measure("S3 (moto_server)", f"s3://{bucket}/data/", fs, S3Counter(fs), reps, options)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="objects in the local folder")
    parser.add_argument("--s3-objects", type=int, default=2_000, help="objects on moto (0: skip S3)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    header(f"partition planning of a prefix: {args.files} local objects, {args.s3_objects} on S3 (moto)")
    local(args.files, args.reps)
    if args.s3_objects:
        s3(args.s3_objects, args.reps)


if __name__ == "__main__":
    main()
