"""Job planning: (function, iterdata) -> a JobSpec and the per-call argument tuples."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run the calls of one job, except their arguments."""

    key: str  # "<executor id>/M000": unique for the process, names the job in errors
    function_name: str
    function_key: str  # a hash of the pickled function: workers cache functions by it
    function_bytes: bytes | None  # None when the worker is known to hold the function already
    extra_env: Mapping[str, str] | None = None
    timeout: float | None = None
    runtime_memory: int | None = None  # MB
    sys_path: tuple[str, ...] | None = None  # the caller's, applied by same-machine workers
    cwd: str | None = None
    chunksize: int | None = None

    def call_name(self, index: int) -> str:
        return f"{self.key}/{index:05d} ({self.function_name})"


_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def call_arguments(item: Any, extra_args: Any = None) -> tuple[tuple, dict]:
    """One iterdata item as (args, kwargs): a dict is keyword arguments, a tuple/list positional
    arguments, anything else the single argument; ``extra_args`` is appended (a tuple/list) or
    merged (a dict)."""
    if type(item) in _SCALARS:  # the common case, without the slow abstract-class check of Mapping
        args, kwargs = (item,), {}
    elif isinstance(item, Mapping):
        args, kwargs = (), dict(item)
    elif isinstance(item, (tuple, list)):
        args, kwargs = tuple(item), {}
    else:
        args, kwargs = (item,), {}
    if extra_args is not None:
        if isinstance(extra_args, Mapping):
            kwargs.update(extra_args)
        elif isinstance(extra_args, (tuple, list)):
            args += tuple(extra_args)
        else:
            raise TypeError(f"extra_args must be a tuple, list or dict, not {type(extra_args).__name__}")
    return args, kwargs


def plan_calls(iterdata: Iterable, extra_args: Any = None) -> list[tuple[tuple, dict]]:
    if isinstance(iterdata, (str, bytes)) or not isinstance(iterdata, Iterable):
        raise TypeError(
            f"map_iterdata must be an iterable of call arguments, not {type(iterdata).__name__};"
            " wrap a single item in a list"
        )
    return [call_arguments(item, extra_args) for item in iterdata]


def next_batch_size(remaining: int, workers: int, chunksize: int | None) -> int:
    """Guided self-scheduling: big batches while much work is queued, single calls at the end,
    so per-call overhead stays low and no worker idles while another holds a long batch."""
    if chunksize:
        return min(chunksize, remaining)
    return max(1, min(remaining // (2 * max(workers, 1)), 256))
