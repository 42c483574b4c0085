"""Benchmark: ``AtomicInt.increment`` ops/s from one client vs raw redis-py ``INCR`` on the same server.

Both run in the same process against the same server (the embedded Valkey on a unix socket unless
``--url`` is given), interleaved, median of several repetitions. Target: ratio >= 0.8.

    python benchmarks/bench_state.py [--ops 5000] [--reps 7] [--url redis://...]
"""

from __future__ import annotations

import argparse
import time
import uuid

from _util import header, median

TARGET_RATIO = 0.8


def ops_per_s(fn, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return ops / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    import redis

    from cloudbutton.state import AtomicInt, state_url, stop_server

    url = args.url or state_url()
    header(f"AtomicInt.increment vs raw redis-py INCR, {args.ops} ops x {args.reps} reps, {url}")
    counter = AtomicInt(f"bench-{uuid.uuid4().hex}", url=url)
    raw = redis.Redis.from_url(url)
    raw_key = f"bench-raw-{uuid.uuid4().hex}"
    try:
        for _ in range(200):  # warm up both paths
            counter.increment()
            raw.incr(raw_key)
        ours, theirs = [], []
        for _ in range(args.reps):
            theirs.append(ops_per_s(lambda: raw.incr(raw_key), args.ops))
            ours.append(ops_per_s(counter.increment, args.ops))
        assert counter.get() == 200 + args.ops * args.reps
        ratio = median(ours) / median(theirs)
        print(f"raw redis-py INCR:     {median(theirs):10.0f} ops/s (median of {args.reps})")
        print(f"AtomicInt.increment:   {median(ours):10.0f} ops/s (median of {args.reps})")
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        print(f"ratio:                 {ratio:10.2f}x  (target >= {TARGET_RATIO}x: {verdict})")
    finally:
        counter.delete()
        raw.delete(raw_key)
        raw.close()
        stop_server()


if __name__ == "__main__":
    main()
