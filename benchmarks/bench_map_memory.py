"""Benchmark: client memory per call of a ``map`` of 100,000 no-op calls held until ``get_result``.

In a fresh interpreter, after a warm-up job: the Python memory (tracemalloc) the executor holds
for the calls once they are all done, before ``get_result`` collects them (futures, outcomes,
stats), per call, next to a baseline of a plain list of the 100,000 results. Also the growth of
the resident size (RSS) over the same span. Target: <= 200 bytes per call.

    python benchmarks/bench_map_memory.py
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc

from _util import emit, header, run_fresh, verdict

CALLS = 100_000
TARGET = 200  # bytes per call


def noop(x):
    return x


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child() -> None:
    import cloudbutton

    fexec = cloudbutton.FunctionExecutor()
    fexec.get_result(fexec.map(noop, range(1000)))
    fexec.clean()
    gc.collect()
    tracemalloc.start()
    rss0, (traced0, _) = _rss(), tracemalloc.get_traced_memory()
    futures = fexec.map(noop, range(CALLS))
    fexec.wait(futures, show_progressbar=False)
    gc.collect()
    traced1, peak = tracemalloc.get_traced_memory()
    rss1 = _rss()
    results = fexec.get_result(futures)
    assert results == list(range(CALLS))
    del results
    fexec.shutdown()
    tracemalloc.stop()

    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    baseline = [noop(i) for i in range(CALLS)]
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del baseline
    emit({"held": traced1 - traced0, "peak": peak - traced0, "rss": rss1 - rss0, "baseline": after - before})


def main() -> None:
    header(f"benchmark: client memory of a map of {CALLS:,} no-op calls held as futures until get_result")
    r = run_fresh(os.path.abspath(__file__), "--child")
    per_call = r["held"] / CALLS
    print(f"   held by the executor (tracemalloc)  : {per_call:.0f} B per call ({r['held'] / 2**20:.1f} MiB)")
    print(f"   peak during map + wait (tracemalloc) : {r['peak'] / CALLS:.0f} B per call")
    print(f"   RSS growth over map + wait           : {r['rss'] / CALLS:.0f} B per call")
    print(f"   baseline: a list of the results      : {r['baseline'] / CALLS:.0f} B per call")
    print(f"   ratio held / baseline                : {r['held'] / max(r['baseline'], 1):.1f}x")
    print(f"\nsummary: {per_call:.0f} B per call (target <= {TARGET} B: {verdict(per_call <= TARGET)})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        main()
