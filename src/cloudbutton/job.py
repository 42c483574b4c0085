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

SPECIAL_PARAMETERS = ("id", "storage")
"""Parameters filled by name in every call, as in Lithops: ``id`` (the call's index in its job) and
``storage`` (a ready :class:`~cloudbutton.storage.Storage` on the executor's storage)."""

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclasses.dataclass(frozen=True)
class Binder:
    """How the iterdata items of one function become its calls' ``(args, kwargs)`` (Lithops' rule)."""

    names: tuple[str, ...] | None  # positional parameters, special ones left out; None: signature unknown
    required: int  # how many of ``names`` have no default
    var_args: str | None  # the names of *args and **kwargs, if the function has them
    var_kwargs: str | None
    specials: dict[str, int | None]  # the special parameters the function takes: their positions (None: keyword-only)
    by_name: bool  # a special parameter comes before a positional one: bind positional items by name
    positional: int = 0  # how many positional parameters, special ones included
    required_all: int = 0  # how many of those have no default

    @classmethod
    def of(cls, func) -> Binder:
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # e.g. some builtins have no signature: spread tuples and lists
            return cls(None, 0, None, None, {}, False)
        positional = [p for p in params if p.kind in _POSITIONAL]
        specials = {p.name: (positional.index(p) if p in positional else None) for p in params
                    if p.name in SPECIAL_PARAMETERS and p.kind in (*_POSITIONAL, inspect.Parameter.KEYWORD_ONLY)}
        first_special = min((i for i in specials.values() if i is not None), default=len(positional))
        kinds = {p.kind: p.name for p in params}
        return cls(
            names=tuple(p.name for p in positional if p.name not in specials),
            required=sum(p.default is p.empty for p in positional if p.name not in specials),
            var_args=kinds.get(inspect.Parameter.VAR_POSITIONAL),
            var_kwargs=kinds.get(inspect.Parameter.VAR_KEYWORD),
            specials=specials,
            by_name=any(p.name not in specials for p in positional[first_special:]),
            positional=len(positional),
            required_all=sum(p.default is p.empty for p in positional),
        )

    def spreads(self, n: int) -> bool:
        """Whether ``n`` positional arguments fit the function's parameters (special ones left out), so
        that a tuple or list of ``n`` items is spread over them (else it is the single argument)."""
        if self.names is None:
            return True
        return self.required <= n and (n <= len(self.names) or self.var_args is not None)

    def arguments(self, item: Any, extra_args: Any = None) -> tuple[tuple, dict]:
        """One iterdata item as (args, kwargs): a dict binds its keys to parameter names (a key named
        like the function's ``*args``/``**kwargs`` feeds them); a tuple or list is spread over the
        positional parameters when its length (with ``extra_args``) fits them, else it is the single
        argument, as is anything else. A tuple/list ``extra_args`` is appended, a dict merged.

        A tuple that fits only with the special parameters counted gives them too, by position."""
        extra, extra_kwargs = (), None
        if extra_args is not None:
            if isinstance(extra_args, Mapping):
                extra_kwargs = extra_args
            elif isinstance(extra_args, (tuple, list)):
                extra = tuple(extra_args)
            else:
                raise TypeError(f"extra_args must be a tuple, list or dict, not {type(extra_args).__name__}")
        if type(item) in _SCALARS:  # the common case, without the slow abstract-class check of Mapping
            args, kwargs = (item, *extra), {}
        elif isinstance(item, Mapping):
            kwargs = dict(item)
            args = extra
            if self.var_args and isinstance(kwargs.get(self.var_args), (tuple, list)):
                args = (*kwargs.pop(self.var_args), *extra)
            if self.var_kwargs and isinstance(kwargs.get(self.var_kwargs), Mapping):
                kwargs = {**kwargs.pop(self.var_kwargs), **kwargs}
        elif isinstance(item, (tuple, list)) and self.spreads(len(item) + len(extra)):
            args, kwargs = (*item, *extra), {}
        elif type(item) is tuple and self.specials and self.required_all <= len(item) + len(extra) <= self.positional:
            return (*item, *extra), dict(extra_kwargs or {})  # e.g. (storage, key) for f(storage, key)
        else:
            args, kwargs = (item, *extra), {}
        if extra_kwargs:
            kwargs.update(extra_kwargs)
        if self.by_name and args and len(args) <= len(self.names):
            kwargs = {**dict(zip(self.names, args, strict=False)), **kwargs}
            args = ()
        return args, kwargs

    def fill(self, index: int, args: tuple, kwargs: dict, storage) -> None:
        """Fill in the special parameters of call ``index`` that its item did not give."""
        for name, position in self.specials.items():
            if name in kwargs or position is not None and position < len(args):
                continue
            if name == "id":
                kwargs["id"] = index
            elif storage is not None:
                kwargs["storage"] = storage


def plan_calls(func, iterdata: Iterable, extra_args: Any = None, storage=None) -> list[tuple[tuple, dict]]:
    """The calls of ``func`` over ``iterdata``; the special parameters ``func`` takes are filled in
    where the items do not give them (``storage()`` gives the Storage a ``storage`` parameter receives)."""
    if isinstance(iterdata, (str, bytes)) or not isinstance(iterdata, Iterable):
        raise TypeError(
            f"map_iterdata must be an iterable of call arguments, not {type(iterdata).__name__};"
            " wrap a single item in a list"
        )
    binder = Binder.of(func)
    if extra_args is None and not binder.by_name:  # the common case, with scalars' calls made here
        arguments, scalars = binder.arguments, _SCALARS
        calls = [((item,), {}) if type(item) in scalars else arguments(item) for item in iterdata]
    else:
        calls = [binder.arguments(item, extra_args) for item in iterdata]
    if binder.specials:
        ready = storage() if "storage" in binder.specials and storage is not None else None
        for index, (args, kwargs) in enumerate(calls):
            binder.fill(index, args, kwargs, ready)
    return calls


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
    func, iterdata: Iterable, resolve, chunk_size=None, chunk_number=None, newline="\n"
) -> tuple[list, list[str | None]]:
    """If ``func`` has a parameter named ``obj``, replace each object reference given for it (a URL,
    prefix or glob; ``resolve(ref)`` gives the URL it names) by the partitions of the objects it names,
    one call each, with the item's other arguments repeated. Returns the new iterdata and, per item,
    the URL of the object it reads (None for items that read none)."""
    params = parameter_names(func)
    if "obj" not in params:
        if chunk_size is not None or chunk_number is not None:
            raise ValueError("obj_chunk_size and obj_chunk_number need a map function with a parameter named 'obj'")
        return iterdata, []
    from .partition import plan_partitions

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
        for part in plan_partitions(resolve(ref), chunk_size, chunk_number, newline):
            items.append(rebuild(part))
            objects.append(part.url)
    return items, objects
