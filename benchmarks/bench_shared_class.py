"""Benchmark: a ``@shared`` class's method call vs a hand-written redis-py WATCH/MULTI transaction doing the
same read-modify-write of a pickled dict, on the same server, in the same run.

1. one client: ops/s of ``Counter.add(1)`` vs the WATCH/MULTI baseline (and ``AtomicInt.increment``,
   a single server-side command, as the upper bound);
2. contention: WORKERS worker processes each doing OPS calls on one object at once, total ops/s, same
   comparison. Medians of several repetitions; every run checks the final count is exact.

    python benchmarks/bench_shared_class.py [--ops 2000] [--reps 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import pickle
import time
import uuid

from _util import header, median

from cloudbutton import FunctionExecutor
from cloudbutton.state import AtomicInt, shared, state_url, stop_server


@shared
class Counter:
    def __init__(self):
        self.n = 0
        self.label = "a small state, like a few counters or centroids"

    def add(self, k):
        self.n += k
        return self.n


def watch_multi_add(url: str, key: str, times: int) -> None:
    """The baseline: the same pickled read-modify-write with redis-py's WATCH/MULTI/EXEC retry loop."""
    import redis

    r = redis.Redis.from_url(url)

    def add(pipe):
        state = pickle.loads(pipe.get(key))
        state["n"] += 1
        pipe.multi()
        pipe.set(key, pickle.dumps(state))

    for _ in range(times):
        r.transaction(add, key)
    r.close()


def shared_add(counter, times: int) -> None:
    for _ in range(times):
        counter.add(1)


def atomic_add(counter, times: int) -> None:
    for _ in range(times):
        counter.increment()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import redis

    url = state_url()
    header(f"@shared method call vs redis-py WATCH/MULTI, {args.ops} ops x {args.reps} reps, {url}")
    raw = redis.Redis.from_url(url)
    try:
        for label, parallel in (("one client", 1), (f"{args.workers} workers at once", args.workers)):
            rates: dict[str, list[float]] = {"watch": [], "shared": [], "atomic": []}
            with FunctionExecutor(max_workers=parallel) as fexec:
                for _ in range(args.reps):
                    counter = Counter(f"bench-{uuid.uuid4().hex}")
                    atomic = AtomicInt(f"bench-{uuid.uuid4().hex}")
                    key = f"bench-raw-{uuid.uuid4().hex}"
                    raw.set(key, pickle.dumps({"n": 0, "label": "a small state, like a few counters or centroids"}))
                    runs = {
                        "watch": (watch_multi_add, (url, key, args.ops)),
                        "shared": (shared_add, (counter, args.ops)),
                        "atomic": (atomic_add, (atomic, args.ops)),
                    }
                    for name, (fn, fn_args) in runs.items():
                        start = time.perf_counter()
                        if parallel == 1:
                            fn(*fn_args)
                        else:
                            fexec.get_result(fexec.map(fn, [fn_args] * parallel))
                        rates[name].append(parallel * args.ops / (time.perf_counter() - start))
                    expected = parallel * args.ops
                    assert pickle.loads(raw.get(key))["n"] == expected and counter.add(0) == expected
                    assert atomic.get() == expected
                    raw.delete(key)
                    counter.delete()
                    atomic.delete()
            watch, ours, atom = (median(rates[n]) for n in ("watch", "shared", "atomic"))
            print(f"{label}:")
            print(f"  redis-py WATCH/MULTI (baseline) {watch:9.0f} ops/s")
            print(f"  @shared Counter.add             {ours:9.0f} ops/s   {ours / watch:.2f}x the baseline")
            print(f"  AtomicInt.increment (1 command) {atom:9.0f} ops/s   {atom / watch:.2f}x the baseline")
    finally:
        raw.close()
        stop_server()


if __name__ == "__main__":
    main()
