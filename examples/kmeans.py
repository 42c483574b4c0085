"""k-means clustering with shared state: each function owns a slice of the points; they share the
centroids through a user-defined shared object and meet at a barrier once per round.

In each round a function assigns its points to the nearest centroid, adds its per-cluster sums and
counts to the shared ``Centroids`` object, and waits at the ``Barrier``; the round's last contribution
computes the new centroids inside the same atomic call. The result is checked against a sequential
numpy k-means started from the same centroids.

Run it as ``python examples/kmeans.py [FUNCTIONS] [POINTS] [K]`` (defaults: 4 functions, 20,000 points,
k = 4). All functions must run at once (they wait for each other), so the executor gets one worker each.
"""

import sys
import time
import uuid

import numpy as np

import cloudbutton
from cloudbutton.state import Barrier, shared

functions = int(sys.argv[1]) if len(sys.argv) > 1 else 4
n_points = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
k = int(sys.argv[3]) if len(sys.argv) > 3 else 4
MAX_ROUNDS = 100
TOLERANCE = 1e-9  # stop when no centroid moves more than this


def partial_sums(points, centroids):
    """Per-cluster sums and counts of ``points``, each assigned to its nearest centroid."""
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    labels = distances.argmin(axis=1)
    sums = np.stack([np.bincount(labels, weights=points[:, j], minlength=len(centroids))
                     for j in range(points.shape[1])], axis=1)
    return sums, np.bincount(labels, minlength=len(centroids))


def moved(centroids, sums, counts):
    """The new centroids (an empty cluster keeps its centroid) and how far the farthest one moved."""
    new = centroids.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    return new, float(np.abs(new - centroids).max())


@shared
class Centroids:
    """The current centroids and the sums and counts of the round in progress."""

    def __init__(self, initial, parties):
        self.centroids = initial
        self.parties = parties
        self.round = 0
        self.shift = np.inf
        self._start_round()

    def _start_round(self):
        self.sums = np.zeros_like(self.centroids)
        self.counts = np.zeros(len(self.centroids), dtype=np.int64)
        self.arrived = 0

    def add(self, sums, counts):
        self.sums += sums
        self.counts += counts
        self.arrived += 1
        if self.arrived == self.parties:  # the round's last contribution: move the centroids
            self.centroids, self.shift = moved(self.centroids, self.sums, self.counts)
            self.round += 1
            self._start_round()

    def current(self):
        return self.round, self.centroids, self.shift


def kmeans_part(points, shared_centroids, barrier):
    """One function's share of the work: its points, every round until the centroids settle."""
    while True:
        rounds, centroids, shift = shared_centroids.current()  # the same for every function in a round
        if shift <= TOLERANCE or rounds >= MAX_ROUNDS:
            return rounds
        shared_centroids.add(*partial_sums(points, centroids))
        barrier.wait(timeout=120)


def kmeans_sequential(points, centroids):
    """The same algorithm in plain numpy, in one process."""
    rounds, shift = 0, np.inf
    while shift > TOLERANCE and rounds < MAX_ROUNDS:
        centroids, shift = moved(centroids, *partial_sums(points, centroids))
        rounds += 1
    return rounds, centroids


rng = np.random.default_rng(7)
centres = rng.uniform(-10, 10, size=(k, 2))
points = centres[rng.integers(0, k, n_points)] + rng.normal(scale=1.5, size=(n_points, 2))
initial = points[rng.choice(n_points, k, replace=False)]

run = uuid.uuid4().hex[:8]
shared_centroids = Centroids(f"kmeans-{run}-centroids", initial, functions)
barrier = Barrier(f"kmeans-{run}-round", functions)
start = time.perf_counter()
with cloudbutton.FunctionExecutor(max_workers=functions) as fexec:
    slices = np.array_split(points, functions)
    rounds_seen = fexec.get_result(fexec.map(kmeans_part, [(s, shared_centroids, barrier) for s in slices]))
    backend = fexec.config.backend
elapsed = time.perf_counter() - start
rounds, centroids, _ = shared_centroids.current()
shared_centroids.delete()
barrier.delete()

expected_rounds, expected = kmeans_sequential(points, initial)
assert rounds_seen == [rounds] * functions, rounds_seen
assert rounds == expected_rounds, (rounds, expected_rounds)
assert np.allclose(centroids, expected, rtol=1e-9, atol=1e-9), (centroids, expected)

print(f"k-means of {n_points:,} points, k={k}: {rounds} rounds in {functions} functions on backend "
      f"{backend!r}: {elapsed:.2f} s")
for i, c in enumerate(centroids[np.lexsort(centroids.T[::-1])]):
    print(f"  centroid {i}: ({c[0]:8.4f}, {c[1]:8.4f})")
print(f"same as sequential numpy k-means from the same start: max difference {np.abs(centroids - expected).max():.1e}")
