"""``multiprocessing.Pipe`` over the state store: each direction of a pipe is a queue on the server.

A message is a bytes string (``send`` pickles the object with cloudpickle, ``recv`` unpickles it), so
``send``/``recv_bytes`` and ``send_bytes``/``recv`` mix as in the standard library. ``close()`` sends an
end-of-file marker: once the peer has read everything before it, its ``recv`` raises ``EOFError``. A handle
that was pickled (e.g. passed to a Process) has handed its end to the copies: closing it only closes this
handle, and a copy's ``close()`` sends the marker, so the standard library's idiom (the parent closes its copy
of the child's end after ``p.start()``, then receives) works.
Lifetime: each end made by ``Pipe()`` owns the queue it reads from (see
:mod:`cloudbutton.multiprocessing.synchronize`).
"""

from __future__ import annotations

import pickle
import queue
from typing import Any

import cloudpickle

from .. import state
from .synchronize import _name, _Shared

__all__ = ["Connection", "Pipe"]

_EOF = None  # what close() puts in the peer's queue; every message is bytes


class Connection(_Shared):
    """One end of a ``Pipe``: ``send``/``recv``, ``send_bytes``/``recv_bytes``/``recv_bytes_into``,
    ``poll(timeout)`` and ``close``. Use each end from one process at a time, as with the standard library
    (a message ``poll()`` found is held by the handle that polled, not by copies pickled after it)."""

    def __init__(self, inbox: state.Queue | None, outbox: state.Queue | None):
        self._inbox, self._outbox = inbox, outbox
        self._pending: list[bytes] = []  # a message taken by poll() and not yet received
        self._closed = self._eof = False
        self._handed_off = False  # pickled: the copies use this end, and send the end-of-file marker

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readable(self) -> bool:
        return self._inbox is not None

    @property
    def writable(self) -> bool:
        return self._outbox is not None

    def _check(self, readable: bool = False, writable: bool = False) -> None:
        if self._closed:
            raise OSError("handle is closed")
        if readable and self._inbox is None:
            raise OSError("connection is write-only")
        if writable and self._outbox is None:
            raise OSError("connection is read-only")

    def send_bytes(self, buf, offset: int = 0, size: int | None = None) -> None:
        self._check(writable=True)
        view = memoryview(buf).cast("B")
        if offset < 0 or offset > len(view):
            raise ValueError("offset is negative or beyond the buffer")
        size = len(view) - offset if size is None else size
        if size < 0 or offset + size > len(view):
            raise ValueError("size is negative or buffer too short")
        self._outbox.put(bytes(view[offset:offset + size]))

    def send(self, obj: Any) -> None:
        self.send_bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def _take(self, timeout: float | None) -> bytes | None:
        """The next message, waiting up to ``timeout`` (None: forever); None if none came in time.
        Raises EOFError once the peer closed and everything before was read."""
        self._check(readable=True)
        if self._pending:
            return self._pending[0]
        if self._eof:
            raise EOFError
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if message is _EOF:
            self._eof = True
            raise EOFError
        self._pending.append(message)
        return message

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        message = self._take(None)
        if maxlength is not None and len(message) > maxlength:
            self._pending.pop()
            raise OSError("bad message length")
        return self._pending.pop()

    def recv_bytes_into(self, buf, offset: int = 0) -> int:
        """Copy the next message into ``buf`` at ``offset``; return its size (BufferTooShort if it does not fit)."""
        view = memoryview(buf).cast("B")
        if offset < 0 or offset > len(view):
            raise ValueError("negative offset or offset beyond the buffer")
        message = self.recv_bytes()
        if offset + len(message) > len(view):
            from multiprocessing import BufferTooShort

            raise BufferTooShort(message)
        view[offset:offset + len(message)] = message
        return len(message)

    def recv(self) -> Any:
        return pickle.loads(self.recv_bytes())

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or the end of the pipe) is there to read, waiting up to ``timeout`` (None: forever)."""
        try:
            return self._take(None if timeout is None else max(timeout, 0.0)) is not None
        except EOFError:
            return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._outbox is not None and not self._handed_off:
            self._outbox.put(_EOF)

    def fileno(self) -> int:
        raise NotImplementedError("a cloudbutton Pipe has no file descriptor: its messages go through the state store")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        if self._closed:
            raise OSError("handle is closed")
        self._handed_off = True
        return {**super().__getstate__(), "_pending": [], "_eof": False, "_handed_off": False}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} readable={self.readable} writable={self.writable} closed={self._closed}>"


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - the standard library's name
    """Two connected ends ``(conn1, conn2)``; with ``duplex=False`` conn1 only receives and conn2 only sends."""
    forward = state.Queue(_name("Pipe"))  # conn2 -> conn1
    backward = state.Queue(_name("Pipe")) if duplex else None  # conn1 -> conn2
    conn1, conn2 = Connection(forward, backward), Connection(backward, forward)
    conn1._own(forward)
    if backward is not None:
        conn2._own(backward)
    return conn1, conn2

