"""Benchmark 5: ``map`` of 1000 no-op calls + ``get_result`` on the ``dask`` backend.

Compared, in the same run and on the same ``LocalCluster`` (2 single-threaded worker processes),
with raw Dask: ``client.gather(client.map(noop, range(1000), pure=False))``. Median of 5
repetitions after a warm-up, interleaved so drifts in machine load hit both alike (target: <= 1.3x
raw Dask's wall time). The backend sends the calls in a few batches, one Dask task each, so it
usually beats one Dask task per call.

    python benchmarks/bench_dask.py
"""

from __future__ import annotations

from _util import describe, header, median, ms, timed, us, verdict

CALLS = 1000
WARMUP = 2
REPS = 5
TARGET = 1.3


def noop(x):
    return x


def noop_batch(xs):
    return [noop(x) for x in xs]


def main() -> None:
    from distributed import Client, LocalCluster

    import cloudbutton

    header(f"benchmark 5: map of {CALLS} no-op calls + get_result, dask backend vs raw client.map")
    expected = list(range(CALLS))
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            with cloudbutton.FunctionExecutor(backend="dask", dask_address=cluster.scheduler_address) as fexec:

                def run_cloudbutton():
                    assert fexec.get_result(fexec.map(noop, range(CALLS)), show_progressbar=False) == expected
                    fexec.clean()  # drop finished futures so repetitions do not accumulate them

                def run_dask():
                    assert client.gather(client.map(noop, range(CALLS), pure=False)) == expected

                # for reference: raw Dask given the same batches as the backend makes
                batches = [[x for x, _ in b] for b in fexec.backend._batches([(i, b"") for i in range(CALLS)], None)]

                def run_dask_batched():
                    results = client.gather(client.map(noop_batch, batches, pure=False))
                    assert [x for r in results for x in r] == expected

                for _ in range(WARMUP):
                    run_cloudbutton()
                    run_dask()
                    run_dask_batched()
                times_cb, times_dask, times_batched = [], [], []
                for _ in range(REPS):
                    times_cb.append(timed(run_cloudbutton))
                    times_dask.append(timed(run_dask))
                    times_batched.append(timed(run_dask_batched))

    def row(label: str, text: str) -> None:
        print(f"   {label:<42}: {text}")

    print(f"\n{REPS} repetitions after {WARMUP} warm-up runs; LocalCluster of 2 workers x 1 thread")
    row(f"cloudbutton FunctionExecutor ({len(batches)} tasks)", describe(times_cb))
    row(f"raw client.map + gather ({CALLS} tasks)", describe(times_dask))
    ratio = median(times_cb) / median(times_dask)
    row("ratio cloudbutton / raw dask", f"{ratio:.2f}x   (target <= {TARGET}x: {verdict(ratio <= TARGET)})")
    row(f"raw dask, same {len(batches)} batches (reference)", describe(times_batched))
    row("ratio cloudbutton / raw dask batched", f"{median(times_cb) / median(times_batched):.2f}x")
    row("per call", f"cloudbutton {us(median(times_cb) / CALLS)}, raw dask {us(median(times_dask) / CALLS)}")
    print(
        f"\nsummary: dask backend {ms(median(times_cb))} vs raw client.map {ms(median(times_dask))} = {ratio:.2f}x"
        f" (target <= {TARGET}x: {verdict(ratio <= TARGET)})"
    )


if __name__ == "__main__":
    main()
