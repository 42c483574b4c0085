"""Lithops' public API over cloudbutton: ``import cloudbutton.lithops as lithops`` (and
``from cloudbutton.lithops.X import Y`` for ``from lithops.X import Y``) ports Lithops code.

Names and configuration translation only: every executor, future and storage here is cloudbutton's
own (see :mod:`cloudbutton.lithops.config` for how a Lithops config maps onto cloudbutton's)."""

from .. import __version__
from ..executor import RetryingFunctionExecutor
from .executors import FunctionExecutor, LocalhostExecutor, ServerlessExecutor, StandaloneExecutor
from .storage import Storage
from .wait import get_result, wait

__all__ = [
    "FunctionExecutor", "LocalhostExecutor", "RetryingFunctionExecutor", "ServerlessExecutor", "StandaloneExecutor",
    "Storage", "__version__", "get_result", "wait",
]
