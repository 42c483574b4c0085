"""Benchmark: shared state objects and primitives against raw redis-py on the same server.

All sections run in one process against one server (the embedded Valkey on a unix socket unless
``--url`` is given), each next to its baseline, median of ``--reps`` repetitions:

1. ``AtomicInt.increment`` from one client vs raw redis-py ``INCR`` (target: ratio >= 0.8).
2. 2 worker processes x 10,000 ``AtomicInt.increment`` each (total checked to be exactly 20,000) vs
   the same workers doing raw ``INCR``; ops/s summed over both workers, timed inside them from a
   common start (a shared ``Barrier``) to the last one's end.
3. ``Barrier.wait`` round latency with 2 and 8 parties, each party a worker process, next to one
   redis-py ``PING`` round trip from the client (the ratio is the round's cost in round trips).
4. ``SharedDict`` set / get ops/s from one client vs raw redis-py ``HSET`` / ``HGET`` of the same bytes.

    python benchmarks/bench_state.py [--ops 5000] [--reps 7] [--rounds 200] [--url redis://...]
"""

from __future__ import annotations

import argparse
import time
import uuid

from _util import header, median, us

TARGET_RATIO = 0.8
WORKER_OPS = 10_000


def ops_per_s(fn, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return ops / (time.perf_counter() - start)


def ratio_line(label: str, ours: float, theirs: float) -> None:
    print(f"{label:<34}{ours / theirs:10.2f}x")


# --- 1. one client ------------------------------------------------------------------------------------

def bench_increment(url: str, ops: int, reps: int) -> None:
    import redis

    from cloudbutton.state import AtomicInt

    print(f"-- 1. AtomicInt.increment vs raw INCR, one client, {ops} ops x {reps} reps")
    counter = AtomicInt(f"bench-{uuid.uuid4().hex}", url=url)
    raw = redis.Redis.from_url(url)
    raw_key = f"bench-raw-{uuid.uuid4().hex}"
    try:
        for _ in range(200):  # warm up both paths
            counter.increment()
            raw.incr(raw_key)
        ours, theirs = [], []
        for _ in range(reps):
            theirs.append(ops_per_s(lambda: raw.incr(raw_key), ops))
            ours.append(ops_per_s(counter.increment, ops))
        assert counter.get() == 200 + ops * reps
        print(f"raw redis-py INCR:                 {median(theirs):10.0f} ops/s")
        print(f"AtomicInt.increment:               {median(ours):10.0f} ops/s")
        ratio = median(ours) / median(theirs)
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        print(f"ratio:                             {ratio:10.2f}x  (target >= {TARGET_RATIO}x: {verdict})")
    finally:
        counter.delete()
        raw.delete(raw_key)
        raw.close()


# --- 2. two worker processes ----------------------------------------------------------------------------

def count_in_worker(kind: str, name: str, url: str, start_barrier, ops: int) -> tuple[float, float]:
    """``ops`` increments of the counter ``name``; returns (start, end) wall-clock times."""
    if kind == "raw":
        import redis

        client = redis.Redis.from_url(url)
        bump = lambda: client.incr(name)  # noqa: E731
    else:
        from cloudbutton.state import AtomicInt

        bump = AtomicInt(name, url=url).increment
    bump()  # connect before the common start
    start_barrier.wait(timeout=60)
    start = time.time()
    for _ in range(ops - 1):
        bump()
    return start, time.time()


def bench_workers(fexec, url: str, reps: int) -> None:
    import redis

    from cloudbutton.state import AtomicInt, Barrier

    print(f"-- 2. 2 worker processes x {WORKER_OPS} increments each, {reps} reps")
    raw = redis.Redis.from_url(url)
    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    try:
        for _ in range(reps):
            for kind in ("raw", "ours"):
                name = f"bench-{kind}-{uuid.uuid4().hex}"
                start_barrier = Barrier(f"bench-start-{uuid.uuid4().hex}", 2, url=url)
                spans = fexec.get_result(fexec.map(count_in_worker, [(kind, name, url, start_barrier, WORKER_OPS)] * 2,
                                                   chunksize=1))
                start_barrier.delete()
                if kind == "raw":
                    total = int(raw.get(name))
                    raw.delete(name)
                else:
                    counter = AtomicInt(name, url=url)
                    total = counter.get()
                    counter.delete()
                assert total == 2 * WORKER_OPS, f"{kind}: counted {total}, not {2 * WORKER_OPS}"
                rates[kind].append(2 * WORKER_OPS / (max(e for _, e in spans) - min(s for s, _ in spans)))
        print(f"totals checked:                    {2 * WORKER_OPS:10d} each run")
        print(f"raw redis-py INCR, 2 processes:    {median(rates['raw']):10.0f} ops/s")
        print(f"AtomicInt.increment, 2 processes:  {median(rates['ours']):10.0f} ops/s")
        ratio_line("ratio:", median(rates["ours"]), median(rates["raw"]))
    finally:
        raw.close()


# --- 3. barrier rounds ----------------------------------------------------------------------------------

def barrier_rounds(barrier, rounds: int) -> tuple[float, float]:
    barrier.wait(timeout=60)  # connect and line up before timing
    start = time.time()
    for _ in range(rounds):
        barrier.wait(timeout=60)
    return start, time.time()


def bench_barrier(fexec, url: str, reps: int, rounds: int) -> None:
    import redis

    from cloudbutton.state import Barrier

    print(f"-- 3. Barrier round latency, parties are worker processes, {rounds} rounds x {reps} reps")
    raw = redis.Redis.from_url(url)
    raw.ping()
    rtt = median([1 / ops_per_s(raw.ping, 2000) for _ in range(reps)])
    raw.close()
    print(f"redis-py PING round trip:          {us(rtt):>13}")
    for parties in (2, 8):
        latencies = []
        for _ in range(reps):
            barrier = Barrier(f"bench-barrier-{uuid.uuid4().hex}", parties, url=url)
            spans = fexec.get_result(fexec.map(barrier_rounds, [(barrier, rounds)] * parties, chunksize=1))
            latencies.append((max(e for _, e in spans) - min(s for s, _ in spans)) / rounds)
            barrier.delete()
        print(f"Barrier round, {parties} parties:          {us(median(latencies)):>13}"
              f"  = {median(latencies) / rtt:6.1f}x a PING round trip")


# --- 4. SharedDict --------------------------------------------------------------------------------------

def bench_dict(url: str, ops: int, reps: int) -> None:
    import pickle

    import redis

    from cloudbutton.state import SharedDict

    print(f"-- 4. SharedDict set/get vs raw HSET/HGET, one client, {ops} ops x {reps} reps")
    d = SharedDict(f"bench-{uuid.uuid4().hex}", url=url)
    raw = redis.Redis.from_url(url)
    raw_key = f"bench-raw-{uuid.uuid4().hex}"
    value = {"x": 1.5, "tags": ["a", "b"]}
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        d["k"] = value
        raw.hset(raw_key, "k", data)
        rates: dict[str, list[float]] = {"raw set": [], "set": [], "raw get": [], "get": []}
        for _ in range(reps):
            rates["raw set"].append(ops_per_s(lambda: raw.hset(raw_key, "k", data), ops))
            rates["set"].append(ops_per_s(lambda: d.__setitem__("k", value), ops))
            rates["raw get"].append(ops_per_s(lambda: pickle.loads(raw.hget(raw_key, "k")), ops))
            rates["get"].append(ops_per_s(lambda: d["k"], ops))
        assert d["k"] == value
        for op in ("set", "get"):
            print(f"raw redis-py H{op.upper()}:                 {median(rates['raw ' + op]):10.0f} ops/s")
            print(f"SharedDict {op}:                    {median(rates[op]):10.0f} ops/s")
            ratio_line("ratio:", median(rates[op]), median(rates["raw " + op]))
    finally:
        d.delete()
        raw.delete(raw_key)
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    from cloudbutton import FunctionExecutor
    from cloudbutton.state import state_url, stop_server

    url = args.url or state_url()
    header(f"shared state vs raw redis-py, {url}")
    try:
        bench_increment(url, args.ops, args.reps)
        with FunctionExecutor(max_workers=8) as fexec:
            bench_workers(fexec, url, args.reps)
            bench_barrier(fexec, url, args.reps, args.rounds)
        bench_dict(url, args.ops, args.reps)
    finally:
        stop_server()


if __name__ == "__main__":
    main()
