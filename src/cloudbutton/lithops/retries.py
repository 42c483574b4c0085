"""``lithops.retries``: cloudbutton's :class:`~cloudbutton.executor.RetryingFunctionExecutor`."""

from ..executor import RetryingFunctionExecutor

__all__ = ["RetryingFunctionExecutor"]
