"""Benchmark: shared objects of ``cloudbutton.multiprocessing`` next to the standard library's, in the same run.

1. ``Queue`` throughput: one Process puts N items, another gets them; the consumer times the stream from
   its first item to its last.
2. ``Lock``-protected ``Value`` increments: P Processes start together (at a ``Barrier``) and each runs
   ``with v.get_lock(): v.value += 1`` M times; the rate is all increments over the slowest Process's time.
3. Short timed waits that expire (``Event.wait(0)``, ``Event.wait(0.01)``, ``Queue.get(timeout=0.01)``):
   how long each takes, next to the timeout asked for.

Ours go through the state server (embedded Valkey on a unix socket: a few round trips per operation);
the standard library's through pipes and shared memory, so expect ours to be much slower. The figures are
medians over repetitions, interleaved so that drifts in machine load hit both alike.

    python benchmarks/bench_mp_shared.py [N_ITEMS] [M_INCREMENTS]
"""

from __future__ import annotations

import multiprocessing
import sys
import time

from _util import header, median

REPS = 5
PROCESSES = 2


def produce(q, n):
    for i in range(n):
        q.put(i)


def consume(q, n, results):
    first = q.get()
    start = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    results.put((n - 1) / (time.perf_counter() - start))
    del first


def increment(barrier, value, m, results):
    barrier.wait()
    start = time.perf_counter()
    for _ in range(m):
        with value.get_lock():
            value.value += 1
    results.put(time.perf_counter() - start)


def queue_rate(mp, n: int) -> float:
    """Items per second through ``mp.Queue`` from one Process to another."""
    q, results = mp.Queue(), mp.Queue()
    ps = [mp.Process(target=produce, args=(q, n)), mp.Process(target=consume, args=(q, n, results))]
    for p in ps:
        p.start()
    rate = results.get(timeout=600)
    for p in ps:
        p.join()
    return rate


def increment_rate(mp, m: int) -> float:
    """Increments per second of a Value under its lock, by PROCESSES Processes at once (checks the total)."""
    value, barrier, results = mp.Value("i", 0), mp.Barrier(PROCESSES), mp.Queue()
    ps = [mp.Process(target=increment, args=(barrier, value, m, results)) for _ in range(PROCESSES)]
    for p in ps:
        p.start()
    slowest = max(results.get(timeout=600) for _ in ps)
    for p in ps:
        p.join()
    assert value.value == PROCESSES * m, f"lost increments: {value.value} != {PROCESSES * m}"
    return PROCESSES * m / slowest


def timed_waits(mp, repeats: int = 20) -> dict[str, float]:
    """Median seconds of a timed wait that expires, for each kind."""
    event, q = mp.Event(), mp.Queue()

    def get_nothing():
        try:
            q.get(timeout=0.01)
        except Exception:  # queue.Empty
            pass

    waits = {"Event.wait(0)": lambda: event.wait(0), "Event.wait(0.01)": lambda: event.wait(0.01),
             "Queue.get(timeout=0.01)": get_nothing}
    out = {}
    for name, wait in waits.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            wait()
            times.append(time.perf_counter() - start)
        out[name] = median(times)
    return out


def compare_waits() -> str:
    from cloudbutton import multiprocessing as ours_mp

    timed_waits(ours_mp, 2)  # warm-up: the state server and its connections
    ours, stdlib = timed_waits(ours_mp), timed_waits(multiprocessing)
    print("\nShort timed waits that expire (20 each, medians)")
    for name in ours:
        print(f"   {name:<24}: cloudbutton {ours[name] * 1e3:7.2f} ms, stdlib {stdlib[name] * 1e3:7.2f} ms")
    return "timed waits (ms, cloudbutton vs stdlib): " + ", ".join(
        f"{name} {ours[name] * 1e3:.1f} vs {stdlib[name] * 1e3:.1f}" for name in ours
    )


def compare(title: str, measure, arg: int, unit: str) -> str:
    from cloudbutton import multiprocessing as ours_mp

    measure(ours_mp, max(arg // 10, 2))  # warm-up: workers, connections, scripts
    measure(multiprocessing, max(arg // 10, 2))
    ours, stdlib = [], []
    for _ in range(REPS):
        ours.append(measure(ours_mp, arg))
        stdlib.append(measure(multiprocessing, arg))
    ratio = median(ours) / median(stdlib)
    print(f"\n{title} ({REPS} repetitions, medians)")
    print(f"   {'cloudbutton':<12}: {median(ours):>12,.0f} {unit}  (min {min(ours):,.0f}, max {max(ours):,.0f})")
    print(f"   {'stdlib':<12}: {median(stdlib):>12,.0f} {unit}  (min {min(stdlib):,.0f}, max {max(stdlib):,.0f})")
    print(f"   {'ratio':<12}: cloudbutton is {ratio:.3f}x the standard library's rate (1/{1 / ratio:.0f})")
    return f"{title}: {median(ours):,.0f} vs {median(stdlib):,.0f} {unit} ({ratio:.3f}x)"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    header("cloudbutton.multiprocessing shared objects (state store) vs the standard library's")
    summary = [
        compare(f"Queue: {n} items from one Process to another", queue_rate, n, "items/s"),
        compare(f"Value += 1 under get_lock(), {PROCESSES} Processes x {m}", increment_rate, m, "increments/s"),
        compare_waits(),
    ]
    print("\nsummary:\n   " + "\n   ".join(summary))


if __name__ == "__main__":
    main()
