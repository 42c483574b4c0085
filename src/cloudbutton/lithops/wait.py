"""``lithops.wait``: Lithops' ``wait``/``get_result`` over futures of any executors, and its
``return_when`` values (a number between 0 and 100 is a percentage of the futures)."""

from __future__ import annotations

import concurrent.futures as cf

from .. import futures as _futures

ALWAYS = 0
ANY_COMPLETED = -1
ALL_COMPLETED = 100

__all__ = ["ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "get_result", "wait"]


def wait(fs, throw_except=True, return_when=ALL_COMPLETED, download_results=False, timeout=None,
         threadpool_size=None, wait_dur_sec=None, show_progressbar=None):
    """``(done, not_done)`` of ``fs`` (a future or a list) once ``return_when`` holds or ``timeout`` expires."""
    return _futures.wait(_futures.as_list(fs), throw_except, return_when, timeout, show_progressbar)


def get_result(fs, throw_except=True, timeout=None, threadpool_size=None, wait_dur_sec=None, show_progressbar=None):
    """The result of a future, or the results of a list of futures (always a list)."""
    results = _futures.get_result(_futures.as_list(fs), throw_except, timeout, show_progressbar)
    return results[0] if isinstance(fs, cf.Future) and len(results) == 1 else results
