import atexit
import functools
import http.server
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import psutil
import pytest

from cloudbutton import FunctionExecutor


@pytest.fixture(autouse=True)
def _no_cloudbutton_env(monkeypatch):
    """Tests see only the configuration they set themselves."""
    for key in list(os.environ):
        if key.startswith("CLOUDBUTTON_"):
            monkeypatch.delenv(key)


# Everything the suite and the processes it starts put in the temporary directory goes to one of
# its own, which must hold nothing but pytest's own folders at the end.
SUITE_TMP = tempfile.mkdtemp(prefix="cloudbutton-tests-")
os.environ["TMPDIR"] = SUITE_TMP
tempfile.tempdir = None
atexit.register(shutil.rmtree, SUITE_TMP, ignore_errors=True)  # also when no test ran (collection only)
DEFAULT_JOBS = os.path.join(os.path.expanduser("~"), ".cache", "cloudbutton", "storage", "cloudbutton-jobs")


def _entries(path: str) -> set[str]:
    return set(os.listdir(path)) if os.path.isdir(path) else set()


@pytest.fixture(scope="session", autouse=True)
def _leave_nothing_behind():
    jobs_before = _entries(DEFAULT_JOBS)
    yield
    from cloudbutton.backends.local import close_pools
    from cloudbutton.state import stop_server

    close_pools()
    stop_server()
    left = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"the test session left processes running: {alive}"
    files = sorted(name for name in _entries(SUITE_TMP) if not name.startswith("pytest-of-"))
    shutil.rmtree(SUITE_TMP, ignore_errors=True)
    assert not files, f"the test session left files in its temporary directory: {files}"
    jobs = sorted(_entries(DEFAULT_JOBS) - jobs_before)
    assert not jobs, f"the test session left job data in {DEFAULT_JOBS}: {jobs}"


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """No configuration from the machine for the module: no CLOUDBUTTON_ variables, a fresh
    XDG_CONFIG_HOME, and a fresh working directory (yielded)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("CLOUDBUTTON_"):
                mp.delenv(key)
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
        work = tmp_path_factory.mktemp("work")
        mp.chdir(work)
        yield work


@pytest.fixture(scope="module")
def fexec(isolated):
    """A 2-worker executor that sees no configuration from the machine (modules may define their own)."""
    with FunctionExecutor(max_workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def embedded_server():
    """One embedded state server for the module, stopped at the end; yields its URL."""
    from cloudbutton.state import state_url, stop_server

    yield state_url()
    stop_server()


@pytest.fixture
def gate(tmp_path):
    """A path that blocked calls wait for (``calls.wait_for``); opened at the end of the test in any
    case, so no worker stays blocked."""
    path = tmp_path / "gate"
    yield str(path)
    path.touch()


# --- real storage servers on 127.0.0.1: S3 (moto_server) and HTTP with byte ranges ------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(log_dir, **env: str) -> tuple[subprocess.Popen, str]:
    """A real moto S3 server (``python -m moto.server``) on a free 127.0.0.1 port; returns (process, endpoint)."""
    port = _free_port()
    log = open(os.path.join(log_dir, f"moto-{port}.log"), "wb")  # a pipe could fill up and block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"moto server did not start; see {log_dir}") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class S3Server:
    """A running S3 server with one bucket: ``url`` is ``s3://<bucket>``; ``storage_options`` reach it from
    any process (plain ``s3://`` URLs reach it through the AWS_* environment set while it runs)."""

    endpoint_url: str
    bucket: str
    url: str
    storage_options: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real moto S3 server for the session; AWS_* variables point this process (and processes it
    starts later) at it, and are restored at the end."""
    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto"))
    absent = str(tmp_path_factory.mktemp("aws") / "absent")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(key, raising=False)
            # us-east-1 from the environment: with region_name, s3fs sends a LocationConstraint moto rejects
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_CONFIG_FILE", absent)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", absent)
            import fsspec

            bucket = f"cloudbutton-test-{uuid.uuid4().hex[:8]}"
            fsspec.filesystem("s3").mkdir(bucket)
            yield S3Server(endpoint, bucket, f"s3://{bucket}",
                           {"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def s3_checking_credentials(tmp_path_factory):
    """The endpoint of a second moto S3 server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0):
    it refuses every request signed with a key it does not know, as AWS does."""
    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto-auth"), INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        yield endpoint
    finally:
        stop_process(proc)


@pytest.fixture
def s3_url(s3):
    """A fresh, empty prefix in the session's S3 bucket: ``s3://<bucket>/<unique>``."""
    return f"{s3.url}/t-{uuid.uuid4().hex[:12]}"


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with byte ranges (``Range: bytes=a-b`` -> 206 and Content-Range), which fsspec's
    HTTPFileSystem needs to read from an offset; the stdlib handler ignores ranges."""

    def send_head(self):
        path = self.translate_path(self.path)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (self.headers.get("Range") or "").strip())
        if not m or not os.path.isfile(path):
            return super().send_head()
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, format, *args):  # quiet
        pass


@dataclass
class HTTPServer:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    directory: str


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A real HTTP server (stdlib, in a thread) on 127.0.0.1 serving a temporary directory, with byte ranges."""
    directory = str(tmp_path_factory.mktemp("http"))
    handler = functools.partial(RangeRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield HTTPServer(f"http://127.0.0.1:{server.server_address[1]}", directory)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

