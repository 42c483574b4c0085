"""``lithops.util.joblib``: ``register_lithops()`` registers cloudbutton's joblib backend under the
name ``"lithops"`` too, so ``joblib.parallel_backend("lithops")`` runs on cloudbutton."""

from __future__ import annotations

__all__ = ["register_lithops"]


def register_lithops() -> None:
    """Register cloudbutton's joblib backend as ``"lithops"`` (and ``"cloudbutton"``)."""
    from joblib import register_parallel_backend

    from ....joblib import CloudbuttonBackend, register

    register()
    register_parallel_backend("lithops", CloudbuttonBackend)
