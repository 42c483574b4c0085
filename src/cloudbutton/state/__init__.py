"""Shared mutable state for stateless functions, kept in a Redis-protocol server.

With no ``state_url`` configured, an embedded Valkey server is started on a private unix socket.
"""

from .objects import AtomicInt, SharedDict, SharedObject
from .server import state_url, stop_server

__all__ = ["AtomicInt", "SharedDict", "SharedObject", "state_url", "stop_server"]
