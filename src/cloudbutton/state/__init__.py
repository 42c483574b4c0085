"""Shared mutable state for stateless functions, kept in a Redis-protocol server.

With no ``state_url`` configured, an embedded Valkey server is started on a private unix socket.
"""

from .classes import SharedClassObject, shared
from .objects import AtomicFloat, AtomicInt, AtomicReference, SharedDict, SharedList, SharedObject
from .server import state_url, stop_server
from .sync import Barrier, CountDownLatch, Future, Lock, Queue, Semaphore

__all__ = ["AtomicInt", "AtomicFloat", "AtomicReference", "SharedDict", "SharedList", "SharedObject",
           "SharedClassObject", "shared", "state_url", "stop_server",
           "Barrier", "CountDownLatch", "Future", "Lock", "Queue", "Semaphore"]
