"""``lithops.utils``: the names of Lithops' helpers that user code imports."""

from __future__ import annotations

import logging
import sys

from ..futures import FuturesList

__all__ = ["FuturesList", "is_lithops_worker", "setup_lithops_logger"]


def setup_lithops_logger(log_level=logging.INFO, log_format=None, stream=None, filename=None) -> None:
    """Log cloudbutton's messages at ``log_level`` to ``stream`` (stderr) or ``filename``."""
    if isinstance(log_level, str):
        log_level = logging.getLevelName(log_level.upper())
    handler = logging.FileHandler(filename) if filename else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(log_format or "%(asctime)s [%(levelname)s] %(name)s -- %(message)s"))
    logger = logging.getLogger("cloudbutton")
    logger.handlers = [handler]
    logger.setLevel(log_level)


def is_lithops_worker() -> bool:
    """Whether this code runs in a call (on a worker)."""
    worker = sys.modules.get("cloudbutton.worker")
    return bool(worker and worker.in_call())
