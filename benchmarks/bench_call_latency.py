"""Benchmark 2: latency of one ``call_async`` + ``get_result`` on a warm executor (local backend).

200 round trips (target: median <= 5 ms), interleaved with the same number of
``concurrent.futures.ProcessPoolExecutor`` ``submit(...).result()`` round trips measured in the same
run as the baseline.

    python benchmarks/bench_call_latency.py
"""

from __future__ import annotations

import concurrent.futures
import os

from _util import header, median, ms, percentile, timed, verdict

REPS = 200
WARMUP = 10
TARGET_MEDIAN = 0.005


def noop(x):
    return x


def main() -> None:
    import cloudbutton

    header(f"benchmark 2: one call_async + get_result on a warm executor, {REPS} round trips")
    fexec = cloudbutton.FunctionExecutor()
    ppe = concurrent.futures.ProcessPoolExecutor(os.cpu_count())
    try:

        def run_cb():
            assert fexec.get_result(fexec.call_async(noop, 7), show_progressbar=False) == 7
            fexec.clean()

        def run_ppe():
            assert ppe.submit(noop, 7).result() == 7

        for _ in range(WARMUP):
            run_cb()
            run_ppe()
        cb, base = [], []
        for _ in range(REPS):  # interleaved, so drifts in machine load hit both alike
            cb.append(timed(run_cb))
            base.append(timed(run_ppe))
    finally:
        ppe.shutdown()
        fexec.shutdown()

    def row(label: str, values: list[float]) -> None:
        print(
            f"   {label:<34}: median {ms(median(values))}  p90 {ms(percentile(values, 90))}"
            f"  (min {ms(min(values))}, max {ms(max(values))}, n={len(values)})"
        )

    print(
        f"\n{fexec.backend.workers} local workers, ProcessPoolExecutor({os.cpu_count()}), {WARMUP} warm-up round trips"
    )
    row("cloudbutton call_async+get_result", cb)
    row("ProcessPoolExecutor submit+result", base)
    ratio = median(cb) / median(base)
    print(f"   {'ratio of medians':<34}: {ratio:.1f}x")
    ok = median(cb) <= TARGET_MEDIAN
    print(
        f"\nsummary: median {ms(median(cb))}, p90 {ms(percentile(cb, 90))}"
        f" (target median <= {ms(TARGET_MEDIAN)}: {verdict(ok)}); ProcessPoolExecutor median {ms(median(base))}"
        f" -> {ratio:.1f}x"
    )


if __name__ == "__main__":
    main()
