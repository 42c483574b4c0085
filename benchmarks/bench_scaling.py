"""Benchmark 4: 10,000 and 100,000 no-op calls: wall time and the client's peak RSS.

Wall time should grow linearly (the time per call is printed for both sizes) and the client's
memory stay bounded (the growth of its peak RSS per call is printed). Every measurement runs in a
fresh interpreter, so one size cannot pollute the other's peak RSS (``ru_maxrss`` only grows); the
workers' memory is not the client's and is not counted. Baseline in the same run:
``multiprocessing.Pool(os.cpu_count()).map`` over the same sizes.

    python benchmarks/bench_scaling.py
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time

from _util import emit, header, median, run_fresh, verdict

SIZES = (10_000, 100_000)
REPS = 3
WARMUP_CALLS = 100


def noop(x):
    return x


def _peak_rss() -> int:
    """Peak RSS of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind: str, n: int) -> None:
    expected = list(range(n))
    if kind == "cloudbutton":
        import cloudbutton

        fexec = cloudbutton.FunctionExecutor()
        fexec.get_result(fexec.map(noop, range(WARMUP_CALLS)), show_progressbar=False)
        fexec.clean()
        before = _peak_rss()
        t0 = time.perf_counter()
        futures = fexec.map(noop, range(n))
        t1 = time.perf_counter()
        results = fexec.get_result(futures, show_progressbar=False)
        t2 = time.perf_counter()
        after = _peak_rss()
        fexec.shutdown()
    else:
        pool = multiprocessing.Pool(os.cpu_count())
        pool.map(noop, range(WARMUP_CALLS))
        before = _peak_rss()
        t0 = t1 = time.perf_counter()
        results = pool.map(noop, range(n))
        t2 = time.perf_counter()
        after = _peak_rss()
        pool.close()
        pool.join()
    assert results == expected
    emit({"wall": t2 - t0, "submit": t1 - t0, "rss_before": before, "rss_peak": after})


def main() -> None:
    header(f"benchmark 4: scaling to {', '.join(f'{n:,}' for n in SIZES)} no-op calls (local backend vs Pool)")
    script = os.path.abspath(__file__)
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(REPS):  # interleaved, each in a fresh interpreter
        for n in SIZES:
            for kind in ("cloudbutton", "pool"):
                runs.setdefault((kind, n), []).append(run_fresh(script, "--child", kind, str(n)))

    mib = 2**20
    print(f"\nmedians of {REPS} fresh interpreters per cell; RSS is the client's (ru_maxrss), growth = peak - before")
    print(
        f"   {'':<12}{'calls':>9} {'wall s':>8} {'us/call':>8} {'submit s':>9}"
        f" {'RSS before':>11} {'peak RSS':>10} {'growth':>9} {'B/call':>8}"
    )
    per_call: dict[tuple[str, int], float] = {}
    growth: dict[tuple[str, int], float] = {}
    for kind in ("cloudbutton", "pool"):
        for n in SIZES:
            rs = runs[(kind, n)]
            wall = median([r["wall"] for r in rs])
            before = median([r["rss_before"] for r in rs])
            peak = median([r["rss_peak"] for r in rs])
            grow = median([r["rss_peak"] - r["rss_before"] for r in rs])
            per_call[(kind, n)] = wall / n
            growth[(kind, n)] = grow / n
            print(
                f"   {kind:<12}{n:>9,} {wall:>8.3f} {wall / n * 1e6:>8.2f} {median([r['submit'] for r in rs]):>9.3f}"
                f" {before / mib:>8.1f} MiB {peak / mib:>6.1f} MiB {grow / mib:>5.1f} MiB {grow / n:>8.0f}"
            )
    small, big = SIZES
    print()
    for kind in ("cloudbutton", "pool"):
        lin = per_call[(kind, big)] / per_call[(kind, small)]
        print(
            f"   {kind:<12} time per call at {big:,} / at {small:,}: {lin:.2f}  (1.00 = linear);"
            f" RSS growth per call {growth[(kind, small)]:.0f} B and {growth[(kind, big)]:.0f} B"
        )
    for n in SIZES:
        ratio = per_call[("cloudbutton", n)] / per_call[("pool", n)]
        print(f"   ratio cloudbutton / Pool at {n:>7,} calls: wall {ratio:.1f}x")
    lin = per_call[("cloudbutton", big)] / per_call[("cloudbutton", small)]
    print(
        f"\nsummary: cloudbutton {per_call[('cloudbutton', small)] * 1e6:.1f} us/call at {small:,},"
        f" {per_call[('cloudbutton', big)] * 1e6:.1f} us/call at {big:,} (x{lin:.2f}; linear within 25%:"
        f" {verdict(lin <= 1.25)}); client RSS grows {growth[('cloudbutton', big)]:.0f} B per call"
        f" (Pool: {growth[('pool', big)]:.0f} B)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
