"""``lithops.future``: cloudbutton's :class:`~cloudbutton.futures.ResponseFuture`."""

from ..futures import ResponseFuture

__all__ = ["ResponseFuture"]
