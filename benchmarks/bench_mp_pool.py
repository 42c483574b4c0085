"""Benchmark: ``cloudbutton.multiprocessing.Pool.map`` over 100 and 10,000 small tasks, next to the
standard library's ``multiprocessing.Pool.map`` with the same number of processes, in the same run.

Both pools are created once and warmed up; the figures are medians over repetitions, interleaved so
that drifts in machine load hit both alike (target: <= 2x the standard Pool's wall time).

    python benchmarks/bench_mp_pool.py
"""

from __future__ import annotations

import multiprocessing
import os

from _util import describe, header, median, timed, us, verdict

SIZES = (100, 10_000)
WARMUP = 3
REPS = 20
TARGET = 2.0


def small(x):
    return x * x


def main() -> None:
    from cloudbutton import multiprocessing as cmp

    processes = os.cpu_count()
    header(f"Pool.map of small tasks: cloudbutton.multiprocessing.Pool({processes}) vs the standard library's")
    ours, stdlib = cmp.Pool(processes), multiprocessing.Pool(processes)
    summary = []
    try:
        for n in SIZES:
            expected = [small(x) for x in range(n)]

            def run_ours(n=n, expected=expected):
                assert ours.map(small, range(n)) == expected

            def run_stdlib(n=n, expected=expected):
                assert stdlib.map(small, range(n)) == expected

            for _ in range(WARMUP):
                run_ours()
                run_stdlib()
            t_ours, t_stdlib = [], []
            for _ in range(REPS):
                t_ours.append(timed(run_ours))
                t_stdlib.append(timed(run_stdlib))
            ratio = median(t_ours) / median(t_stdlib)
            print(f"\n{n} tasks ({REPS} repetitions after {WARMUP} warm-up runs)")
            print(f"   {'cloudbutton Pool.map':<32}: {describe(t_ours)}")
            print(f"   {'multiprocessing Pool.map':<32}: {describe(t_stdlib)}")
            met = verdict(ratio <= TARGET)
            print(f"   {'ratio cloudbutton / stdlib':<32}: {ratio:.2f}x   (target <= {TARGET:.0f}x: {met})")
            print(f"   {'per task':<32}: cloudbutton {us(median(t_ours) / n)}, stdlib {us(median(t_stdlib) / n)}")
            summary.append(f"{n} tasks {ratio:.2f}x")
    finally:
        ours.close()
        ours.join()
        stdlib.close()
        stdlib.join()
    print(f"\nsummary: cloudbutton / stdlib Pool.map: {', '.join(summary)} (target <= {TARGET:.0f}x)")


if __name__ == "__main__":
    main()
