"""Benchmark: reads/s of ``consistency="eventual"`` vs ``"strong"`` handles of the same objects.

Both handles read the same objects on the same server (the embedded Valkey on a unix socket unless
``--url`` is given) from one client, interleaved, median of several repetitions: ``AtomicInt.get`` and
``SharedList.to_list`` of a 100-item list. Strong reads make one round trip each; eventual reads are
served from the process's cache (kept fresh by server-assisted invalidation). Target: eventual >= 5x.

    python benchmarks/bench_state_consistency.py [--ops 5000] [--reps 7] [--url redis://...]
"""

from __future__ import annotations

import argparse
import time
import uuid

from _util import header, median

TARGET_RATIO = 5.0


def ops_per_s(fn, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return ops / (time.perf_counter() - start)


def compare(label: str, strong, eventual, ops: int, reps: int) -> None:
    for _ in range(200):  # warm up both paths (and fill the cache)
        strong()
        eventual()
    strong_rates, eventual_rates = [], []
    for _ in range(reps):
        strong_rates.append(ops_per_s(strong, ops))
        eventual_rates.append(ops_per_s(eventual, ops))
    ratio = median(eventual_rates) / median(strong_rates)
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"{label}")
    print(f"  strong:   {median(strong_rates):10.0f} reads/s (median of {reps})")
    print(f"  eventual: {median(eventual_rates):10.0f} reads/s (median of {reps})")
    print(f"  ratio:    {ratio:10.1f}x  (target >= {TARGET_RATIO}x: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    from cloudbutton.state import AtomicInt, SharedList, state_url, stop_server

    url = args.url or state_url()
    header(f"eventual vs strong reads, {args.ops} ops x {args.reps} reps, {url}")
    name = f"bench-{uuid.uuid4().hex}"
    counter = AtomicInt(name, initial=42, url=url)
    items = SharedList(name + "-list", url=url)
    items.extend(range(100))
    try:
        eventual_counter = AtomicInt(name, url=url, consistency="eventual")
        compare("AtomicInt.get", counter.get, eventual_counter.get, args.ops, args.reps)
        eventual_items = SharedList(items.name, url=url, consistency="eventual")
        compare("SharedList.to_list (100 items)", items.to_list, eventual_items.to_list, args.ops, args.reps)
        assert eventual_counter.get() == 42 and eventual_items.to_list() == list(range(100))
    finally:
        counter.delete()
        items.delete()
        stop_server()


if __name__ == "__main__":
    main()
