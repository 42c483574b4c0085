"""Benchmark 3: 100 calls that each ``time.sleep(0.1)`` on 2 workers.

The ideal is 100 * 0.1 s / 2 = 5.0 s (target: within 5%). Baseline in the same run:
``multiprocessing.Pool(2).map`` with its default chunksize, and with ``chunksize=1``.
Each configuration runs a few times on warm workers; medians are reported.

    python benchmarks/bench_sleep.py
"""

from __future__ import annotations

import multiprocessing
import time

from _util import header, median, timed, verdict

CALLS = 100
SLEEP = 0.1
WORKERS = 2
REPS = 3
IDEAL = CALLS * SLEEP / WORKERS
TOLERANCE = 0.05


def sleepy(x):
    time.sleep(SLEEP)
    return x


def main() -> None:
    import cloudbutton

    header(f"benchmark 3: {CALLS} calls of time.sleep({SLEEP}) on {WORKERS} workers (ideal {IDEAL:.1f} s)")
    expected = list(range(CALLS))
    fexec = cloudbutton.FunctionExecutor(max_workers=WORKERS)
    pool = multiprocessing.Pool(WORKERS)
    try:

        def run_cb():
            assert fexec.get_result(fexec.map(sleepy, range(CALLS)), show_progressbar=False) == expected
            fexec.clean()

        def run_pool():
            assert pool.map(sleepy, range(CALLS)) == expected

        def run_pool_1():
            assert pool.map(sleepy, range(CALLS), chunksize=1) == expected

        fexec.get_result(fexec.map(sleepy, range(WORKERS)), show_progressbar=False)  # start the workers
        pool.map(sleepy, range(WORKERS))
        times: dict[str, list[float]] = {"cb": [], "pool": [], "pool1": []}
        for _ in range(REPS):
            times["cb"].append(timed(run_cb))
            times["pool"].append(timed(run_pool))
            times["pool1"].append(timed(run_pool_1))
    finally:
        pool.close()
        pool.join()
        fexec.shutdown()

    def row(label: str, values: list[float]) -> float:
        m = median(values)
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"   {label:<40}: median {m:.3f} s = {m / IDEAL:.3f}x ideal  (runs: {each} s)")
        return m

    print(f"\n{REPS} runs each, interleaved, on warm workers")
    cb = row(f"cloudbutton FunctionExecutor({WORKERS})", times["cb"])
    pool_m = row(f"multiprocessing.Pool({WORKERS}).map", times["pool"])
    row(f"multiprocessing.Pool({WORKERS}).map chunksize=1", times["pool1"])
    ok = cb <= IDEAL * (1 + TOLERANCE)
    print(
        f"\nsummary: cloudbutton {cb:.3f} s vs ideal {IDEAL:.1f} s: {100 * (cb / IDEAL - 1):+.1f}%"
        f" (target within {TOLERANCE:.0%}: {verdict(ok)}); Pool {pool_m:.3f} s -> ratio {cb / pool_m:.3f}x"
    )


if __name__ == "__main__":
    main()
