"""Small helpers shared by the benchmark scripts: timing, percentiles, fresh-process runs, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} us"


def describe(values: Sequence[float], unit: Callable[[float], str] = ms) -> str:
    """``median (min .. max, n=N)`` of timings in seconds."""
    return f"median {unit(median(values))}  (min {unit(min(values))}, max {unit(max(values))}, n={len(values)})"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def header(title: str) -> None:
    print(f"== {title}")
    print(
        f"   python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()},"
        f" multiprocessing start method: {_start_method()}"
    )


def _start_method() -> str:
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=False)


def run_fresh(script: str, *args: str, timeout: float = 300) -> dict:
    """Run ``python script *args`` in a fresh interpreter; it must print one JSON object as its last
    line of stdout, which is returned. Each measurement that needs a clean process (cold starts,
    peak RSS) goes through here so one measurement cannot pollute the next."""
    proc = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.getcwd(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed with code {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """The child side of ``run_fresh``."""
    print(json.dumps(result), flush=True)
