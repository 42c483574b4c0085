"""Job planning: (function, iterdata) -> a JobSpec and the per-call argument tuples."""

from __future__ import annotations

import dataclasses
import inspect
import types
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
    data_url: str | None = None  # where arguments and results above storage_threshold are stored
    storage_threshold: int | None = None

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


BATCH_SECONDS = 0.002
"""How long a batch of quick calls should take: a few round trips to a worker, so that the wait
between batches stays small next to the work, while the imbalance at a job's end stays small too."""


def next_batch_size(
    remaining: int, workers: int, chunksize: int | None, seconds_per_call: float | None = None, in_flight: int = 0
) -> int:
    """How many of a job's ``remaining`` calls (not yet sent) to send to a worker at once.

    Guided self-scheduling: big batches while much of the job is left, single calls at its end, so
    per-call overhead stays low and no worker idles while another holds a long batch. Once the job's
    calls are known to be quick (``seconds_per_call``, measured on those that ran), a batch holds
    ``BATCH_SECONDS`` of them, up to a worker's share of the calls not finished (``remaining`` plus
    the ``in_flight`` ones sent earlier), so that a quick job takes a round trip or two per worker."""
    if chunksize:
        return min(chunksize, remaining)
    workers = max(workers, 1)
    n = max(1, min(remaining // (2 * workers), 256))
    if seconds_per_call is not None:
        share = -(-(remaining + in_flight) // workers)
        n = max(n, min(remaining, share, int(BATCH_SECONDS / max(seconds_per_call, 1e-7)), 1024))
    return n


def parameter_names(func) -> list[str]:
    """Names of ``func``'s parameters; read from its code when it has some (``inspect.signature``
    costs more than a small map)."""
    code, skip = getattr(func, "__code__", None), int(isinstance(func, types.MethodType))
    if code is None and not isinstance(func, type):  # an instance with a __call__ method
        code, skip = getattr(vars(type(func)).get("__call__"), "__code__", None), 1
    if code is not None and not getattr(func, "__wrapped__", None):
        return list(code.co_varnames[skip : code.co_argcount + code.co_kwonlyargcount])
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # e.g. some builtins have no signature
        return []


def expand_objects(
    func, iterdata: Iterable, storage_url: str, chunk_size=None, chunk_number=None, newline="\n"
) -> tuple[list, list[str | None]]:
    """If ``func`` has a parameter named ``obj``, replace each object reference given for it (a URL,
    prefix or glob; a key under ``storage_url``) by the partitions of the objects it names, one call
    each, with the item's other arguments repeated. Returns the new iterdata and, per item, the URL
    of the object it reads (None for items that read none)."""
    params = parameter_names(func)
    if "obj" not in params:
        if chunk_size is not None or chunk_number is not None:
            raise ValueError("obj_chunk_size and obj_chunk_number need a map function with a parameter named 'obj'")
        return iterdata, []
    from .partition import plan_partitions
    from .storage import resolve_url

    position = params.index("obj")
    items, objects = [], []
    for item in [iterdata] if isinstance(iterdata, str) else iterdata:
        if isinstance(item, str):
            ref, rebuild = item, lambda part: {"obj": part}
        elif isinstance(item, Mapping) and isinstance(item.get("obj"), str):
            ref, rebuild = item["obj"], lambda part, item=item: {**item, "obj": part}
        elif isinstance(item, tuple | list) and len(item) > position and isinstance(item[position], str):
            ref = item[position]
            rebuild = lambda part, item=item: (*item[:position], part, *item[position + 1 :])  # noqa: E731
        else:
            items.append(item)
            objects.append(None)
            continue
        for part in plan_partitions(resolve_url(ref, storage_url), chunk_size, chunk_number, newline):
            items.append(rebuild(part))
            objects.append(part.url)
    return items, objects
