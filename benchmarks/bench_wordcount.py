"""Benchmark 1: word count with ``map_reduce`` over a ~200 MB text file in local storage, 16 MiB chunks.

Baselines in the same run, over the same newline-aligned byte ranges: a hand-written
``multiprocessing.Pool(os.cpu_count())`` (each task reads its range and counts its words; the parent
merges) and a single process. All three counts must be equal. Throughput (MB/s) is the file size over
the wall time of the whole job, reduce included; medians over a few interleaved repeats on warm workers.
Target: cloudbutton >= 0.9x the Pool. The generated file is deleted at the end.

    python benchmarks/bench_wordcount.py [MB] [REPEATS]      (defaults: 200 MB, 3 repeats)
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter

from _util import header, median, verdict

MB = float(sys.argv[1]) if len(sys.argv) > 1 else 200
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
CHUNK = 16 * 2**20
TARGET = 0.9


def make_text(path: str, size: int) -> None:
    """``size`` bytes of lines of 12 words (30,000 made-up words, Zipf frequencies), written as a random
    sequence of 8 distinct ~2 MB blocks so that generating it takes seconds, not minutes."""
    rng = random.Random(0)
    syllables = "ka lo mi ne ru ta sho ven dar bel qui xo pa te gu ri".split()
    words: set[str] = set()
    while len(words) < 30_000:
        words.add("".join(rng.choices(syllables, k=rng.randint(1, 4))))
    vocabulary = sorted(words)
    weights = [1 / rank for rank in range(1, len(vocabulary) + 1)]
    blocks = []
    for _ in range(8):
        rng.shuffle(vocabulary)
        batch = rng.choices(vocabulary, weights, k=300_000)
        blocks.append("".join(" ".join(batch[i : i + 12]) + "\n" for i in range(0, len(batch), 12)).encode())
    with open(path, "wb") as f:
        written = 0
        while written < size:
            block = rng.choice(blocks)
            block = block[: block.rfind(b"\n", 0, size - written) + 1]  # whole lines
            if not block:
                break
            f.write(block)
            written += len(block)


def aligned_ranges(path: str, chunk: int) -> list[tuple[int, int]]:
    """Byte ranges of ``chunk`` bytes moved forward to just after a newline: the same rule as cloudbutton's
    partitions (a boundary is just past the first newline that ends at or after the nominal offset)."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        for nominal in range(chunk, size, chunk):
            f.seek(nominal - 1)
            pos = nominal - 1
            while (block := f.read(1 << 16)) and (i := block.find(b"\n")) < 0:
                pos += len(block)
            bounds.append(min(size, pos + i + 1) if block else size)
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def count_range(path: str, start: int, end: int) -> Counter:
    with open(path, "rb") as f:
        f.seek(start)
        return Counter(f.read(end - start).split())


def count_words(obj) -> Counter:
    return Counter(obj.data_stream.read().split())


def merge(results) -> Counter:
    total = Counter()
    for counts in results:
        total.update(counts)
    return total


def single_process(path: str, ranges) -> tuple[Counter, list[float]]:
    """The whole count in this process; also the seconds each range took."""
    total, times = Counter(), []
    for start, end in ranges:
        t = time.perf_counter()
        total.update(count_range(path, start, end))
        times.append(time.perf_counter() - t)
    return total, times


def main() -> None:
    import cloudbutton
    from cloudbutton.partition import plan_partitions

    workers = os.cpu_count()
    header(f"benchmark 1: word count over {MB:g} MB in {CHUNK >> 20} MiB chunks on {workers} workers")
    tmp = tempfile.mkdtemp(prefix="bench-wordcount-")
    pool = fexec = None
    try:
        path = os.path.join(tmp, "text.txt")
        t = time.perf_counter()
        make_text(path, int(MB * 1e6))
        size = os.path.getsize(path)
        ranges = aligned_ranges(path, CHUNK)
        partitions = plan_partitions(f"file://{path}", chunk_size=CHUNK)
        assert len(ranges) == len(partitions)
        print(f"   generated {size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s: {len(ranges)} ranges")

        fexec = cloudbutton.FunctionExecutor(max_workers=workers, storage_url=f"file://{tmp}/storage")
        pool = multiprocessing.Pool(workers)
        fexec.get_result(fexec.map(abs, range(workers)), show_progressbar=False)  # start the workers
        pool.map(abs, range(workers))
        fexec.clean()

        times: dict[str, list[float]] = {"cb": [], "pool": [], "single": []}
        phases: dict[str, list[float]] = {}
        expected, chunk_times = single_process(path, ranges)
        read_times = read_costs(path, partitions[len(ranges) // 2], ranges[len(ranges) // 2])
        for _ in range(REPS):
            t = time.perf_counter()
            counts, chunk_times = single_process(path, ranges)
            times["single"].append(time.perf_counter() - t)
            assert counts == expected

            t = time.perf_counter()
            counts = merge(pool.starmap(count_range, [(path, a, b) for a, b in ranges], chunksize=1))
            times["pool"].append(time.perf_counter() - t)
            assert counts == expected

            t, wall = time.perf_counter(), time.time()
            futures = fexec.map_reduce(count_words, f"file://{path}", merge, obj_chunk_size=CHUNK)
            counts = fexec.get_result(futures, show_progressbar=False)[0]
            times["cb"].append(time.perf_counter() - t)
            assert counts == expected
            for name, value in breakdown(fexec, wall).items():
                phases.setdefault(name, []).append(value)
            fexec.clean()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if fexec is not None:
            fexec.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def row(label: str, values: list[float]) -> float:
        rate = size / 1e6 / median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"   {label:<42}: {rate:7.1f} MB/s  (median {median(values):.3f} s; runs: {runs} s)")
        return rate

    print(f"\n{REPS} runs each, interleaved; {sum(expected.values()):,} words, {len(expected):,} distinct")
    cb = row(f"cloudbutton map_reduce ({workers} workers)", times["cb"])
    pool_rate = row(f"multiprocessing.Pool({workers}).starmap + merge", times["pool"])
    single = row("single process", times["single"])
    print("\n   where cloudbutton's time goes (medians, s): "
          + ", ".join(f"{name} {median(values):.3f}" for name, values in phases.items()))
    print(f"   single process per {CHUNK >> 20} MiB range: {median(chunk_times):.3f} s; reading one range: "
          f"Partition.data_stream.read() {read_times['data_stream']:.4f} s, open/seek/read {read_times['plain']:.4f} s")
    print(f"\nsummary: cloudbutton {cb:.1f} MB/s, Pool {pool_rate:.1f} MB/s, single process {single:.1f} MB/s;"
          f" cloudbutton/Pool {cb / pool_rate:.2f}x (target >= {TARGET}x: {verdict(cb / pool_rate >= TARGET)}),"
          f" cloudbutton/single {cb / single:.2f}x")


def read_costs(path: str, partition, byte_range: tuple[int, int]) -> dict[str, float]:
    """Median seconds to read one range through a partition's ``data_stream`` and with a plain file read."""
    plain, stream = [], []
    for _ in range(5):
        t = time.perf_counter()
        with open(path, "rb") as f:
            f.seek(byte_range[0])
            f.read(byte_range[1] - byte_range[0])
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with partition.open() as f:
            assert len(f.read()) == byte_range[1] - byte_range[0]
        stream.append(time.perf_counter() - t)
    return {"data_stream": median(stream), "plain": median(plain)}


def breakdown(fexec, start: float) -> dict[str, float]:
    """Phases of the last map_reduce from the calls' records: planning and submitting, the map calls
    (their median duration and result size), the hand-off to the reducer, the reduce and its return."""
    rows = fexec.stats()
    maps = [r for r in rows if "/M" in r["job"]]
    reducer = next(r for r in rows if "/R" in r["job"])
    first_submit = min(r["submitted"] for r in maps)
    return {
        "plan+submit": first_submit - start,
        "maps": max(r["received"] for r in maps) - first_submit,
        "map call": median([r["duration"] for r in maps]),
        "map result MB": median([r["result_bytes"] for r in maps]) / 1e6,
        "to reducer": reducer["started"] - max(r["received"] for r in maps),
        "reduce": reducer["duration"],
        "reduced back": reducer["received"] - reducer["finished"],
    }


if __name__ == "__main__":
    main()
