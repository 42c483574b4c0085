"""``multiprocessing.queues`` over the state store: Queue, SimpleQueue and JoinableQueue.

Items are pickled (with cloudpickle) into a list on the state server; ``put`` has returned once the item
is there (there is no feeder thread), and every item is delivered to exactly one ``get``. Waiting blocks
on the server. Lifetime: see :mod:`cloudbutton.multiprocessing.synchronize`.
"""

from __future__ import annotations

from typing import Any

from .. import state
from ..state.objects import _state_op, run_script
from ..state.sync import _Deadline, _SyncObject, _wait_broadcast
from .synchronize import _name, _Shared

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]


class Queue(_Shared):
    """``multiprocessing.Queue``: ``put``/``get`` raise ``queue.Full``/``queue.Empty`` when they cannot
    complete in time; ``maxsize <= 0`` means unbounded. ``close()`` ends this handle only (``put``/``get``
    on it then raise ``ValueError``); other processes' handles keep working."""

    def __init__(self, maxsize: int = 0):
        self._maxsize = max(maxsize, 0)
        self._queue = state.Queue(_name(type(self).__name__), self._maxsize)
        self._closed = False
        self._own(self._queue)

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_closed()
        self._queue.put(obj, block, None if timeout is None else max(timeout, 0.0))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._check_closed()
        return self._queue.get(block, None if timeout is None else max(timeout, 0.0))

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def full(self) -> bool:
        return self._queue.full()

    def close(self) -> None:
        self._closed = True

    def join_thread(self) -> None:
        """Nothing to wait for (``put`` is synchronous); like the standard library, only after ``close()``."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: an item is in the store once ``put`` has returned."""

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_closed": False}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._queue.name!r}, maxsize={self._maxsize})>"


_UNFINISHED_ADD = """
redis.call('INCR', KEYS[1])
redis.call('DEL', KEYS[2])
return 1
"""

_UNFINISHED_DONE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count <= 0 then return -1 end
count = redis.call('DECR', KEYS[1])
if count == 0 and redis.call('EXISTS', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[2], '1') end
return count
"""


class _Unfinished(_SyncObject):
    """A JoinableQueue's count of items not yet marked done, and a list that holds one element while the
    count is 0: ``join`` blocks on it as :class:`cloudbutton.state.CountDownLatch` does, so the last
    ``task_done`` wakes every joiner. Each operation is one round trip."""

    _type_name = "JoinableQueueUnfinished"
    _aux_kinds = ("done",)

    def __init__(self, name: str, url: str | None = None):
        super().__init__(name, url)
        self._open()

    @_state_op
    def _open(self) -> None:
        self._r.rpush(self._aux("done"), b"1")  # nothing unfinished yet

    @_state_op
    def add(self) -> None:
        run_script(self._r, _UNFINISHED_ADD, [self._key, self._aux("done")], [])

    @_state_op
    def done(self) -> bool:
        """Count one item done; False if none was unfinished."""
        return run_script(self._r, _UNFINISHED_DONE, [self._key, self._aux("done")], []) >= 0

    @_state_op
    def wait(self, timeout: float | None = None) -> bool:
        return _wait_broadcast(self._waiter, self._aux("done"), _Deadline(timeout)) is not None


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: ``join()`` blocks until every item put has been marked done
    with ``task_done()``; one ``task_done()`` too many raises ``ValueError``."""

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        self._unfinished = _Unfinished(_name("JoinableQueueUnfinished"))
        self._own(self._unfinished)

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_closed()
        self._unfinished.add()  # counted before the item is visible, so its task_done always finds it
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._unfinished.done()
            raise

    def task_done(self) -> None:
        if not self._unfinished.done():
            raise ValueError("task_done() called too many times")

    def join(self) -> None:
        self._unfinished.wait()


class SimpleQueue(_Shared):
    """``multiprocessing.SimpleQueue``: an unbounded queue with ``put``, ``get``, ``empty`` and ``close``
    (after which this handle raises ``OSError``, as the standard library's closed pipe does)."""

    def __init__(self):
        self._queue = state.Queue(_name(type(self).__name__))
        self._closed = False
        self._own(self._queue)

    def _check_closed(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: Any) -> None:
        self._check_closed()
        self._queue.put(obj)

    def get(self) -> Any:
        self._check_closed()
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def close(self) -> None:
        self._closed = True

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_closed": False}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._queue.name!r})>"
