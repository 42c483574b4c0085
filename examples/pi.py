"""Estimate pi by Monte Carlo: each call throws random points at the unit square and counts those
inside the quarter circle; the client adds up the counts.

Run it as ``python examples/pi.py [CALLS] [POINTS_PER_CALL]`` (defaults: 64 calls of 100,000 points).
"""

import math
import random
import sys
import time

import cloudbutton

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 64
points = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000


def count_inside(seed, n):
    rng = random.Random(seed)  # each call its own stream, reproducible from its seed
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


start = time.perf_counter()
with cloudbutton.FunctionExecutor() as fexec:
    counts = fexec.get_result(fexec.map(count_inside, [(seed, points) for seed in range(calls)]))
    backend, workers = fexec.config.backend, fexec.backend.workers
elapsed = time.perf_counter() - start

estimate = 4 * sum(counts) / (calls * points)
print(f"pi is about {estimate:.6f} (error {abs(estimate - math.pi):.6f})")
print(f"{calls * points:,} points in {calls} calls on backend {backend!r} ({workers} workers): {elapsed:.2f} s")
