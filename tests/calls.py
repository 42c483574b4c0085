"""Functions the tests run as calls, and small helpers, shared by the test files."""

import enum
import os
import time
import uuid


class CustomError(Exception):
    pass


def inc(x):
    return x + 1


def fail_on(x, bad):
    if x == bad:
        raise CustomError(f"bad value {x}")
    return x


def exit_on(x, bad):
    if x == bad:
        os._exit(3)
    return x


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def wait_for(path, value=None):
    """Blocks until ``path`` exists (the test's gate, see the ``gate`` fixture), at most 60 s; returns ``value``."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate {path} was never opened")
        time.sleep(0.005)
    return value


def start_child_then(pid_file, action="hang"):
    """Starts a child process, records its pid in ``pid_file``, then hangs, or crashes its worker."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    if action == "crash":
        os._exit(7)
    time.sleep(60)


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (or is a zombie nobody reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def unique(prefix: str) -> str:
    """A name no other test uses (shared state outlives a test)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def until(condition, what: str = "a condition", timeout: float = 30.0):
    """Poll ``condition()`` until it is truthy and return it; fail the test naming ``what`` after ``timeout``
    seconds (a bound against hanging, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Color(enum.Enum):
    """An Enum importable by workers (SharedDict keys)."""

    RED = 1
    GREEN = 2


class Perm(enum.Flag):
    R = 1
    W = 2


class Tag(bytes, enum.Enum):
    X = b"x"


Odd = enum.Enum("Odd", {"a:b": 1})  # a member name with a colon in it
