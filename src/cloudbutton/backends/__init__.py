"""The backend registry: name -> class, imported only when used.

A backend starts workers and moves call batches to them and results back; it never interprets a
call (the worker runtime does). Other packages add backends through the ``cloudbutton.backends``
entry-point group, e.g. in their pyproject.toml::

    [project.entry-points."cloudbutton.backends"]
    knative = "mypackage.knative:KnativeBackend"
"""

from __future__ import annotations

import abc
import functools
import importlib
from typing import TYPE_CHECKING, Protocol

from ..errors import BackendError, CallError, ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from ..job import JobSpec
    from ..worker import Results

ENTRY_POINT_GROUP = "cloudbutton.backends"

known_backends = {
    "local": "cloudbutton.backends.local:LocalBackend",
    "dask": "cloudbutton.backends.dask:DaskBackend",
}


class ResultSink(Protocol):
    """Where a backend delivers the outcome of each call it was given (from any thread)."""

    def on_results(self, job: JobSpec, results: Results | list[tuple[int, bool, bytes, tuple]]) -> None:
        """Calls ran: each result is what ``Runtime.run_call`` returned, ``(index, ok, payload,
        stats)``, or the results come as columns (:class:`~cloudbutton.worker.Results`). Deliver them
        in groups when they arrive together: settling many calls at once costs less than one at a time."""

    def on_lost(self, job: JobSpec, index: int, error: CallError) -> None:
        """A call did not finish: its worker died or it exceeded its timeout."""

    def on_started(self, job: JobSpec, indices: list[int]) -> list[int]:
        """Optional, called before calls go to a worker: returns those of ``indices`` still wanted (not
        cancelled), which from now on count as running (they can no longer be cancelled)."""


class Backend(abc.ABC):
    """Runs batches of calls. Subclasses implement ``submit`` and usually ``close``."""

    shares_host = False
    """Whether workers see the caller's files, ``sys.path`` and working directory (and import its modules)."""
    recycles_workers = False
    """Whether a worker is replaced after a call that asked for it (``worker.retire()``: ``maxtasksperchild``)."""

    def __init__(self, config: Config):
        self.config = config

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many calls can run at once (used to size batches and pick defaults)."""

    @abc.abstractmethod
    def submit(self, job: JobSpec, calls: list[tuple[int, bytes]], sink: ResultSink) -> None:
        """Queue ``calls`` (index, pickled arguments) of ``job`` and return at once; every call must
        later reach ``sink.on_results`` or ``sink.on_lost`` exactly once."""

    def close(self) -> None:  # noqa: B027 - optional for backends that start nothing
        """Stop what this backend started."""

    def cancel(self) -> list[tuple[JobSpec, int]]:
        """Drop the calls given to this backend that have not started; return them ``(job, index)``."""
        return []

    def abort(self) -> None:  # noqa: B027 - optional: a backend that cannot stop calls lets them run
        """Stop the calls of this backend that are running (``Pool.terminate()``)."""

    def reserve(self, calls: int) -> None:  # noqa: B027 - optional: most backends need not reserve
        """Let ``calls`` calls run at once whatever ``max_workers`` says (each running
        ``multiprocessing.Process`` may wait for another); called before anything is submitted."""


@functools.cache
def _plugins() -> dict:
    from importlib.metadata import entry_points  # slow to import; needed only for names beyond ours

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_names() -> list[str]:
    return sorted(set(known_backends) | set(_plugins()))


def get_backend_class(name: str) -> type[Backend]:
    if name in known_backends:
        module_name, _, class_name = known_backends[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            if (e.name or "").startswith("cloudbutton"):
                raise
            raise BackendError(
                f"backend {name!r} needs a package that is not installed ({e.name}); "
                f"install it with: pip install 'cloudbutton[{name}]'"
            ) from e
        return getattr(module, class_name)
    if name in _plugins():
        return _plugins()[name].load()
    raise ConfigError(f"backend = {name!r} is unknown; allowed: {', '.join(backend_names())}")
