"""``multiprocessing.Pipe`` over the state store: each direction of a pipe is a queue on the server.

A message is a bytes string (``send`` pickles the object with cloudpickle, ``recv`` unpickles it), so
``send``/``recv_bytes`` and ``send_bytes``/``recv`` mix as in the standard library.

End of file works as with the standard library's descriptors: every handle of an end (the one ``Pipe()``
made, and each copy pickled from a handle, e.g. passed to a Process or put in a Queue) holds the end open
until it is closed or garbage-collected; a Process's handles are closed when its ``run()`` returns or its
worker dies. When the last holder lets go, an end-of-file marker follows the messages: the peer's ``recv``
then raises ``EOFError`` (and so does every later ``recv``, in any process). The holders of an end are a
set of tokens in the store, one per pickled copy (added when it is pickled, as the standard library
duplicates the descriptor then).
Lifetime: each end made by ``Pipe()`` owns the queue it reads from and the holders of the other end (see
:mod:`cloudbutton.multiprocessing.synchronize`).
"""

from __future__ import annotations

import os
import pickle
import queue
import selectors
import threading
import time
import uuid
import weakref
from typing import Any

import cloudpickle

from .. import state
from ..errors import StateError
from .synchronize import _name, _Shared

__all__ = ["Connection", "Pipe", "wait"]

_EOF = None  # what the last holder's close() puts in the peer's queue; every message is bytes
_WAKE = False  # what wait() puts in a queue to stop its reader; skipped by everyone else
_OWNER = "owner"  # the holder token of the handle Pipe() made


def _release(outbox: state.Queue, holders: state.SharedDict, token: str) -> None:
    """A handle of the end writing to ``outbox`` lets go; the last one sends the end-of-file marker."""
    try:
        if holders.pop(token, None) is not None and len(holders) == 0:
            outbox.put(_EOF)
    except StateError:  # the store is gone, and the pipe with it
        pass


class Connection(_Shared):
    """One end of a ``Pipe``: ``send``/``recv``, ``send_bytes``/``recv_bytes``/``recv_bytes_into``,
    ``poll(timeout)`` and ``close``. Use each end from one process at a time, as with the standard library
    (a message ``poll()`` found is held by the handle that polled, not by copies pickled after it)."""

    def __init__(self, inbox: state.Queue | None, outbox: state.Queue | None, holders: state.SharedDict | None):
        self._inbox, self._outbox, self._holders = inbox, outbox, holders
        self._pending: list[bytes] = []  # a message taken by poll() and not yet received
        self._closed = self._eof = False
        self._token = _OWNER
        self._copy_token: str | None = None  # of the copy last pickled from this handle
        self._hold()

    def _hold(self) -> None:
        """Closing this handle, or collecting it, releases its hold on the end."""
        self._closer = None
        if self._outbox is not None:
            self._closer = weakref.finalize(self, _release, self._outbox, self._holders, self._token)
            self._closer.atexit = False  # at exit the owners delete the pipe

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

    def _take(self, timeout: float | None, wakeable: bool = False) -> bytes | None:
        """The next message, waiting up to ``timeout`` (None: forever); None if none came in time (or,
        ``wakeable``, once ``wait()`` stops it). Raises EOFError once every holder of the peer's end let
        go and everything before was read."""
        self._check(readable=True)
        if self._pending:
            return self._pending[0]
        if self._eof:
            raise EOFError
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                message = self._inbox.get(timeout=None if end is None else max(end - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if message is not _WAKE:
                break
            if wakeable:
                return None
        if message is _EOF:
            self._eof = True
            self._inbox.put(_EOF)  # for the other handles of this end
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
        self._closed = True
        if self._closer is not None:
            self._closer()  # once

    def fileno(self) -> int:
        raise NotImplementedError("a cloudbutton Pipe has no file descriptor: its messages go through the state store")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        if self._closed:
            raise OSError("handle is closed")
        state = super().__getstate__()
        del state["_closer"]
        token = None
        if self._outbox is not None:  # the copy holds the end open from now on, until it lets go
            token = self._copy_token = uuid.uuid4().hex
            self._holders[token] = True
        return {**state, "_pending": [], "_eof": False, "_token": token, "_copy_token": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._hold()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} readable={self.readable} writable={self.writable} closed={self._closed}>"


def _copies_holds(conns: list[Connection]) -> list[tuple]:
    """The holds of the copies last pickled from ``conns``; ``_release(*hold)`` lets go of one (for the
    copies a Process took to a worker that died, as a dead child's descriptors close)."""
    return [(c._outbox, c._holders, c._copy_token) for c in conns if c._outbox is not None and c._copy_token]


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - the standard library's name
    """Two connected ends ``(conn1, conn2)``; with ``duplex=False`` conn1 only receives and conn2 only sends."""
    forward, forward_holders = _direction()  # conn2 -> conn1
    backward, backward_holders = _direction() if duplex else (None, None)  # conn1 -> conn2
    conn1, conn2 = Connection(forward, backward, backward_holders), Connection(backward, forward, forward_holders)
    conn1._own(forward, forward_holders)
    if backward is not None:
        conn2._own(backward, backward_holders)
    return conn1, conn2


def _direction() -> tuple[state.Queue, state.SharedDict]:
    """A queue, and the holders of the end writing to it (so far the handle ``Pipe()`` makes)."""
    name = _name("Pipe")
    holders = state.SharedDict(f"{name}:holders")
    holders[_OWNER] = True
    return state.Queue(name), holders


def wait(object_list: list, timeout: float | None = None) -> list:
    """``multiprocessing.connection.wait``: wait until one of ``object_list`` is ready, at most ``timeout``
    seconds (None: forever); return those ready (an empty list at the timeout). They may be Connections of
    a ``Pipe`` (ready: a message or the end of file is there to read), ``Process.sentinel``s, sockets and
    other objects with a file descriptor. A message found is held by its Connection, as with ``poll()``."""
    conns = [o for o in object_list if isinstance(o, Connection)]
    others = [o for o in object_list if not isinstance(o, Connection)]
    ready = _ready(conns, others)
    if ready or (timeout is not None and timeout <= 0):
        return ready
    wake_r, wake_w = os.pipe()  # a Connection's reader thread writes to it when a message comes
    stop = threading.Event()

    def read(conn: Connection) -> None:
        while not stop.is_set():
            try:
                if conn._take(None, wakeable=True) is None:
                    continue  # woken: stop, or a marker left by an earlier wait()
            except (EOFError, OSError, StateError):
                pass  # ready: recv() raises it
            os.write(wake_w, b"x")
            return

    readers = [threading.Thread(target=read, args=(c,), name="cloudbutton-wait", daemon=True) for c in conns]
    try:
        for reader in readers:
            reader.start()
        _ready_fds([*others, wake_r], timeout)
    finally:
        stop.set()
        for conn, reader in zip(conns, readers, strict=True):
            if reader.is_alive():
                conn._inbox.put(_WAKE)  # it may be done by now: the marker is then skipped later
            reader.join()
        os.close(wake_r)
        os.close(wake_w)
    return _ready(conns, others)


def _ready(conns: list[Connection], others: list) -> list:
    return [c for c in conns if c.poll(0)] + _ready_fds(others, 0)


def _ready_fds(objects: list, timeout: float | None) -> list:
    """Those of ``objects`` (file descriptors, or objects with ``fileno()``) readable within ``timeout``."""
    with selectors.DefaultSelector() as selector:
        for obj in objects:
            selector.register(obj, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout)]
