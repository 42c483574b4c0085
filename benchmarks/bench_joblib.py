"""Benchmark: scikit-learn's GridSearchCV on load_digits through the joblib backend "cloudbutton".

SVC, 6 candidates x 3 folds (18 fits), on 2 workers; compared in the same run with joblib's default
``loky`` backend with ``n_jobs=2`` (and, for scale, the sequential run, and cloudbutton without
sharing X through storage: ``upload_threshold=None``). Each configuration runs
once to warm up (loky's reusable workers, cloudbutton's local workers), then REPS times,
interleaved; medians are reported. The cross-validation results of every run must equal the
sequential ones.

A second part measures what sharing a large argument through storage buys: TASKS tasks that each
read a few values of one SHARED_MB MB array, cloudbutton as is (the array is uploaded once and
loaded once per worker) vs cloudbutton with ``upload_threshold=None`` (the array travels with every
task) vs loky (which memory-maps large arrays into its workers).

    python benchmarks/bench_joblib.py
"""

from __future__ import annotations

from _util import header, median, timed

WORKERS = 2
REPS = 7
GRID = {"C": [1, 10, 100], "gamma": [0.001, 0.0001]}
FOLDS = 3
SHARED_MB = 20
TASKS = 50
SHARED_REPS = 3


def peek(X, i):
    return float(X[i :: 100_000].sum())


def main() -> None:
    import numpy as np
    from joblib import parallel_config
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    import cloudbutton.joblib  # noqa: F401 - registers the backend

    X, y = load_digits(return_X_y=True)
    n_candidates = len(GRID["C"]) * len(GRID["gamma"])
    header(
        f"GridSearchCV(SVC) on load_digits {X.shape} ({X.nbytes / 1e3:.0f} KB): {n_candidates} candidates x {FOLDS}"
        f" folds on {WORKERS} workers, cloudbutton vs loky"
    )

    def search(**config):
        with parallel_config(**config):
            return GridSearchCV(SVC(), GRID, cv=FOLDS).fit(X, y).cv_results_["mean_test_score"]

    expected = search(backend="sequential")
    runs = {
        "sequential": dict(backend="sequential"),
        "loky": dict(backend="loky", n_jobs=WORKERS),
        "cloudbutton": dict(backend="cloudbutton", max_workers=WORKERS),
        "cloudbutton, X sent with every task": dict(backend="cloudbutton", max_workers=WORKERS, upload_threshold=None),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(REPS + 1):
        for name, config in runs.items():
            scores = []
            seconds = timed(lambda config=config, scores=scores: scores.append(search(**config)))
            np.testing.assert_array_equal(scores[0], expected)
            if rep:  # the first round warms up the workers
                times[name].append(seconds)

    print(f"\n{REPS} runs each, interleaved, after a warm-up round; cv results equal the sequential ones")
    for name, values in times.items():
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"   {name:<36}: median {median(values):.3f} s  (runs: {each} s)")
    cb, loky, seq = (median(times[n]) for n in ("cloudbutton", "loky", "sequential"))
    print(
        f"\nsummary: cloudbutton {cb:.3f} s vs loky {loky:.3f} s -> ratio {cb / loky:.2f}x;"
        f" speed-up over sequential: cloudbutton {seq / cb:.2f}x, loky {seq / loky:.2f}x"
    )
    shared_argument()


def shared_argument() -> None:
    import numpy as np
    from joblib import Parallel, delayed, parallel_config

    X = np.random.default_rng(0).random(SHARED_MB * 2**20 // 8)
    expected = [peek(X, i) for i in range(TASKS)]
    header(f"{TASKS} tasks reading one {SHARED_MB} MB array, batch_size=1, on {WORKERS} workers")
    runs = {
        "cloudbutton (uploaded once)": dict(backend="cloudbutton", max_workers=WORKERS),
        "cloudbutton, X sent with every task": dict(backend="cloudbutton", max_workers=WORKERS, upload_threshold=None),
        "loky (memory-mapped)": dict(backend="loky", n_jobs=WORKERS),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(SHARED_REPS + 1):
        for name, config in runs.items():
            def run(config=config):
                with parallel_config(**config):
                    assert Parallel(batch_size=1)(delayed(peek)(X, i) for i in range(TASKS)) == expected

            seconds = timed(run)
            if rep:
                times[name].append(seconds)
    print(f"\n{SHARED_REPS} runs each, interleaved, after a warm-up round")
    for name, values in times.items():
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"   {name:<36}: median {median(values):.3f} s  (runs: {each} s)")
    once, each, loky = (median(v) for v in times.values())
    print(f"\nsummary: uploaded once {once:.3f} s vs sent with every task {each:.3f} s -> ratio {once / each:.2f}x;"
          f" vs loky {loky:.3f} s -> ratio {once / loky:.2f}x")


if __name__ == "__main__":
    main()
