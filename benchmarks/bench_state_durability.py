"""Benchmark: the cost of durability. ``AtomicInt.increment`` ops/s from one client on a state server kept
in memory (the baseline, as the embedded default) vs one with the append-only log fsynced before every
acknowledgement (``cloudbutton state serve --dir DIR --appendonly``), both started in the same run,
interleaved, median of several repetitions.

    python benchmarks/bench_state_durability.py [--ops 2000] [--reps 5] [--dir DIR]

``--dir`` picks the file system to measure (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

from _util import header, median

from cloudbutton.state import AtomicInt
from cloudbutton.state.server import StateServer


def ops_per_s(counter: AtomicInt, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        counter.increment()
    return ops / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as data_dir:
        header(f"AtomicInt.increment: in memory vs append-only log fsynced per write in {data_dir}, "
               f"{args.ops} ops x {args.reps} reps")
        memory = StateServer()
        durable = StateServer(data_dir=data_dir, appendonly=True)
        try:
            counters = {"memory": AtomicInt(f"bench-{uuid.uuid4().hex}", url=memory.url),
                        "durable": AtomicInt(f"bench-{uuid.uuid4().hex}", url=durable.url)}
            rates: dict[str, list[float]] = {name: [] for name in counters}
            for counter in counters.values():
                ops_per_s(counter, 100)  # warm up
            for _ in range(args.reps):
                for name, counter in counters.items():
                    rates[name].append(ops_per_s(counter, args.ops))
            for counter in counters.values():
                assert counter.get() == 100 + args.ops * args.reps
            mem, dur = median(rates["memory"]), median(rates["durable"])
            print(f"in memory (baseline)           {mem:9.0f} ops/s  ({1e6 / mem:6.1f} us per write)")
            print(f"appendonly + fsync per write   {dur:9.0f} ops/s  ({1e6 / dur:6.1f} us per write)"
                  f"   {dur / mem:.2f}x the baseline")
        finally:
            memory.stop()
            durable.stop()


if __name__ == "__main__":
    main()
