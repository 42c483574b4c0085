"""``concurrent.futures`` as the CPython test module loaded by ``cpython_concurrent_futures.py`` sees it:
the standard library's names, except ``ProcessPoolExecutor``, which is cloudbutton's ``ServerlessExecutor``.

``ServerlessExecutor`` has no ``mp_context`` (its calls run on the configured backend, not in processes
of a start method), so the one the tests pass is dropped; every other argument goes to it unchanged.
"""

from concurrent.futures import *  # noqa: F403
from concurrent.futures import __all__, _base, process, thread  # noqa: F401

from cloudbutton.concurrent import ServerlessExecutor


class ProcessPoolExecutor(ServerlessExecutor):
    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), **kwargs):
        super().__init__(max_workers, initializer, initargs, **kwargs)
