"""Benchmark 1: ``map`` of 1000 no-op calls + ``get_result`` on the local backend.

Compared, in the same run, with ``multiprocessing.Pool(os.cpu_count()).map`` over the same no-op.
Warm: an executor (and a pool) that already ran a job, median of several repetitions (target:
<= 3x Pool's wall time). Cold: the first ``FunctionExecutor()`` + map + get_result in a fresh
interpreter (workers not started yet), next to a fresh ``Pool`` created + map.

    python benchmarks/bench_map_noop.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from _util import describe, emit, header, median, ms, run_fresh, timed, us, verdict

CALLS = 1000
WARMUP = 3
WARM_REPS = 20
COLD_REPS = 5
TARGET = 3.0


def noop(x):
    return x


def child_cold_cloudbutton() -> None:
    t0 = time.perf_counter()
    import cloudbutton

    t1 = time.perf_counter()
    fexec = cloudbutton.FunctionExecutor()
    results = fexec.get_result(fexec.map(noop, range(CALLS)), show_progressbar=False)
    t2 = time.perf_counter()
    assert results == list(range(CALLS))
    second = timed(lambda: fexec.get_result(fexec.map(noop, range(CALLS)), show_progressbar=False))
    fexec.shutdown()
    emit({"import": t1 - t0, "first": t2 - t1, "second": second})


def child_cold_pool(method: str) -> None:
    t0 = time.perf_counter()
    pool = multiprocessing.get_context(method).Pool(os.cpu_count())
    results = pool.map(noop, range(CALLS))
    t1 = time.perf_counter()
    assert results == list(range(CALLS))
    pool.close()
    pool.join()
    emit({"first": t1 - t0, "with_close": time.perf_counter() - t0})


def main() -> None:
    import cloudbutton

    header(f"benchmark 1: map of {CALLS} no-op calls + get_result, local backend vs multiprocessing.Pool")
    script = os.path.abspath(__file__)

    cold_cb = [run_fresh(script, "--cold-cloudbutton") for _ in range(COLD_REPS)]
    default_method = multiprocessing.get_start_method()
    cold_pool = [run_fresh(script, "--cold-pool", default_method) for _ in range(COLD_REPS)]
    cold_spawn = [run_fresh(script, "--cold-pool", "spawn") for _ in range(COLD_REPS)]

    fexec = cloudbutton.FunctionExecutor()
    pool = multiprocessing.Pool(os.cpu_count())
    try:
        expected = list(range(CALLS))

        def run_cb():
            assert fexec.get_result(fexec.map(noop, range(CALLS)), show_progressbar=False) == expected
            fexec.clean()  # drop finished futures so repetitions do not accumulate them

        def run_pool():
            assert pool.map(noop, range(CALLS)) == expected

        for _ in range(WARMUP):
            run_cb()
            run_pool()
        warm_cb, warm_pool = [], []
        for _ in range(WARM_REPS):  # interleaved, so drifts in machine load hit both alike
            warm_cb.append(timed(run_cb))
            warm_pool.append(timed(run_pool))
    finally:
        pool.close()
        pool.join()
        fexec.shutdown()

    def row(label: str, text: str) -> None:
        print(f"   {label:<46}: {text}")

    workers, cpus = fexec.backend.workers, os.cpu_count()
    print(f"\nwarm ({WARM_REPS} repetitions after {WARMUP} warm-up runs; {workers} local workers, Pool({cpus}))")
    row("cloudbutton FunctionExecutor", describe(warm_cb))
    row("multiprocessing.Pool.map", describe(warm_pool))
    ratio = median(warm_cb) / median(warm_pool)
    row("ratio cloudbutton / Pool", f"{ratio:.1f}x   (target <= {TARGET:.0f}x: {verdict(ratio <= TARGET)})")
    row("per call", f"cloudbutton {us(median(warm_cb) / CALLS)}, Pool {us(median(warm_pool) / CALLS)}")

    first_cb = [r["first"] for r in cold_cb]
    first_pool = [r["first"] for r in cold_pool]
    print(f"\ncold (first run in a fresh interpreter, {COLD_REPS} interpreters each)")
    row("import cloudbutton", describe([r["import"] for r in cold_cb]))
    row("FunctionExecutor() + map + get_result", describe(first_cb))
    row("... its second run in the same interpreter", describe([r["second"] for r in cold_cb]))
    row(f"Pool() + map ({default_method})", describe(first_pool))
    row(f"Pool() + map + close + join ({default_method})", describe([r["with_close"] for r in cold_pool]))
    row("Pool() + map (spawn, for reference)", describe([r["first"] for r in cold_spawn]))
    row("ratio cold cloudbutton / cold Pool", f"{median(first_cb) / median(first_pool):.1f}x")
    row("ratio warm cloudbutton / cold Pool", f"{median(warm_cb) / median(first_pool):.2f}x  (Pool start-up included)")
    print(
        f"\nsummary: warm {ms(median(warm_cb))} vs Pool {ms(median(warm_pool))} = {ratio:.1f}x"
        f" (target <= {TARGET:.0f}x: {verdict(ratio <= TARGET)}); cold {ms(median(first_cb))}"
        f" vs Pool {ms(median(first_pool))}"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--cold-cloudbutton"]:
        child_cold_cloudbutton()
    elif sys.argv[1:2] == ["--cold-pool"]:
        child_cold_pool(sys.argv[2])
    else:
        main()
