"""The exception hierarchy: every error cloudbutton raises on its own account is a CloudbuttonError.

Exceptions raised by a user's function are re-raised in the caller with their own type (the remote
traceback text is attached as a note), so they are not part of this hierarchy.
"""

import concurrent.futures
import threading


class CloudbuttonError(Exception):
    """Base class of every error raised by cloudbutton itself."""


class ConfigError(CloudbuttonError, ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


class SerializationError(CloudbuttonError, TypeError):
    """A function or an argument could not be pickled (raised at submit time, before anything runs)."""


class BackendError(CloudbuttonError):
    """A backend could not start, or failed in a way that is not tied to one call."""


class CallError(CloudbuttonError):
    """Base of the errors that concern one call; ``call`` names it (e.g. ``"M000/00017 (inc)"``)."""

    def __init__(self, message: str, call: str = ""):
        super().__init__(message)
        self.call = call

    def __reduce__(self):
        return type(self), (str(self), self.call), self.__dict__


class WorkerLostError(CallError):
    """The worker running a call died (crash, ``os._exit``, kill -9, segfault). ``exitcode`` is the
    worker's exit code when the backend knows it (``-N`` if signal N killed it), else None."""

    def __init__(self, message: str, call: str = "", exitcode: int | None = None):
        super().__init__(message, call)
        self.exitcode = exitcode


class MemoryLimitError(WorkerLostError, MemoryError):
    """A call tried to use more memory than its ``runtime_memory``; its worker was replaced."""


class CallTimeoutError(CallError, TimeoutError):
    """A call ran longer than its ``timeout``; its worker was killed and replaced."""


class WaitTimeoutError(CloudbuttonError, TimeoutError):
    """``wait``/``get_result`` ran out of time; the calls keep running and can be collected later."""


class RemoteError(CallError):
    """A call raised an exception that could not be sent back as itself (e.g. it was unpicklable)."""


class StateError(CloudbuttonError):
    """The state server is unreachable or misused (e.g. a name reused with another type); names the URL or key."""


class BrokenBarrierError(StateError, threading.BrokenBarrierError):
    """A shared ``Barrier`` was broken (a waiter timed out, or it was aborted or reset) while waiting at it."""


class LockNotHeldError(StateError, RuntimeError):
    """A shared ``Lock`` was released by a handle that does not hold it (never acquired, or its lease expired)."""


class InvalidStateError(StateError, concurrent.futures.InvalidStateError):
    """A shared ``Future`` was given a result or an exception after it already had one."""


class StorageError(CloudbuttonError):
    """An object or prefix is missing, or storage could not be reached or used; the message names the URL."""
