"""Per-call records as rows; progress bars, timelines and summaries are views of these."""

from __future__ import annotations

from collections.abc import Iterable

COLUMNS = (
    "job", "call", "function", "status", "attempts", "worker_id", "cold_start", "submitted",
    "started", "finished", "received", "duration", "peak_rss", "args_bytes", "result_bytes",
)


def _status(f) -> str:
    if f.cancelled():
        return "cancelled"
    if not f.done():
        return "pending"
    return "error" if f.exception() is not None else "ok"


def summary_rows(futures: Iterable) -> list[dict]:
    rows = []
    for f in futures:
        s = f.stats
        row = dict.fromkeys(COLUMNS)
        row.update({k: s.get(k) for k in COLUMNS if k in s})
        row.update(job=f.job_key, call=f.call_id, function=f.function_name, status=_status(f), attempts=f.attempts)
        if s.get("started") is not None and s.get("finished") is not None:
            row["duration"] = s["finished"] - s["started"]
        rows.append(row)
    return rows


def to_dataframe(rows: list[dict]):
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=list(COLUMNS))
