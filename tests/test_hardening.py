"""Failures at the edges: a launch that fails, limits out of range, what calls leave behind."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from calls import inc, process_ended, start_child_then, until, wait_for

from cloudbutton import CallTimeoutError, ConfigError, FunctionExecutor, StorageError, WorkerLostError


def big(data):
    return len(data)


@pytest.mark.parametrize("storage_url", ["file:///proc/no-such-dir", "no-such-scheme://bucket"])
def test_a_map_that_fails_to_launch_leaves_nothing_to_wait_for(isolated, storage_url):
    with FunctionExecutor(max_workers=1, storage_url=storage_url) as fexec:
        with pytest.raises(StorageError):
            fexec.map(big, [b"x" * (2 << 20)])  # above storage_threshold: goes through storage
        assert fexec.futures == []
        assert fexec.get_result(timeout=5) == []  # nothing uncollected, nothing running
        assert fexec.get_result(fexec.map(big, [b"small"]), timeout=30) == [5]
    # leaving the block returned: shutdown waited on no call that was never sent


@pytest.mark.parametrize(
    "key, value",
    [("timeout", math.inf), ("timeout", 1e12), ("timeout", math.nan), ("timeout", -1.0), ("state_timeout", math.nan),
     ("state_timeout", math.inf), ("runtime_memory", 10**30), ("retries", -1), ("max_workers", 0)],
)
def test_numeric_settings_out_of_range_are_config_errors_naming_key_and_source(isolated, key, value):
    with pytest.raises(ConfigError, match=rf"{key} = .*\(from keyword argument\)"):
        FunctionExecutor(**{key: value})


def test_a_bad_limit_in_the_environment_names_the_variable(isolated, monkeypatch):
    monkeypatch.setenv("CLOUDBUTTON_TIMEOUT", "inf")
    with pytest.raises(ConfigError, match="CLOUDBUTTON_TIMEOUT"):
        FunctionExecutor()


def test_a_bad_map_timeout_is_refused_and_the_shared_pool_keeps_serving_others(isolated):
    with FunctionExecutor(max_workers=2) as one, FunctionExecutor(max_workers=2) as other:
        for bad in (math.inf, math.nan, 1e12):
            with pytest.raises(ConfigError, match="timeout"):
                one.map(inc, range(3), timeout=bad)
        assert other.get_result(other.map(inc, range(10)), timeout=60) == list(range(1, 11))
        assert one.get_result(one.map(inc, range(3)), timeout=60) == [1, 2, 3]


def test_waiting_without_limit_accepts_infinity(fexec):
    assert fexec.get_result(fexec.map(inc, [1]), timeout=math.inf) == [2]
    with pytest.raises(ValueError, match="nan"):
        fexec.get_result(fexec.map(inc, [1]), timeout=math.nan)


@pytest.mark.parametrize("action, error", [("hang", CallTimeoutError), ("crash", WorkerLostError)])
def test_a_killed_or_lost_call_takes_its_child_processes_with_it(fexec, tmp_path, action, error):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(error):
        fexec.get_result(fexec.map(start_child_then, [(str(pid_file), action)], timeout=2), timeout=60)
    child = int(pid_file.read_text())
    until(lambda: process_ended(child), f"the call's child process {child} to end with its worker", timeout=10)


DRIVER = """
import sys
from cloudbutton.state import server
url = server.embedded_url()
print(server._server.dir, flush=True)
sys.stdin.read()
"""


def test_a_driver_killed_by_sigkill_leaves_a_state_directory_the_next_start_removes(isolated):
    from cloudbutton.state import server

    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    state_dir = driver.stdout.readline().strip()
    assert os.path.isdir(state_dir)
    driver.kill()
    driver.wait()
    driver.stdin.close()
    driver.stdout.close()
    assert os.path.isdir(state_dir)  # nothing could remove it as its owner died
    own = server.StateServer()
    try:
        assert not os.path.exists(state_dir)
        assert os.path.isdir(own.dir)
    finally:
        own.stop()
    assert not os.path.exists(own.dir)


def big_result_or_wait(gate, padding):
    if padding:
        wait_for(gate)
    return b"r" * 4096


def test_call_data_in_local_storage_is_private_to_its_owner(isolated, tmp_path, gate):
    storage = tmp_path / "storage"
    with FunctionExecutor(max_workers=2, storage_url=f"file://{storage}", storage_threshold=1024) as fexec:
        futures = fexec.map(big_result_or_wait, [(gate, b""), (gate, b"p" * 2048)])  # call 1's arguments go to storage
        futures[0].result(timeout=60)
        jobs = storage / "cloudbutton-jobs"
        files = [p for p in jobs.rglob("*") if p.is_file()]
        assert {p.parent.name for p in files} == {"args", "results"}
        for path in [jobs, *jobs.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o600 if path.is_file() else 0o700), f"{path} has mode {oct(mode)}"
        Path(gate).touch()
        assert len(fexec.get_result(futures, timeout=60)[1]) == 4096


def test_more_local_workers_than_memory_holds_are_capped_with_a_warning(isolated):
    with pytest.warns(RuntimeWarning, match=r"max_workers = 100000 is more than this machine can hold .*memory"):
        fexec = FunctionExecutor(max_workers=100_000)
    with fexec:
        assert 1 <= fexec.backend.workers < 100_000
    # no call ran: the pool of the capped size was never started


CAPPED = """
import warnings, cloudbutton
warnings.simplefilter("error")
try:
    cloudbutton.FunctionExecutor(max_workers=200)
except RuntimeWarning as e:
    print(e)
"""


def test_more_local_workers_than_open_files_allow_are_capped(isolated):
    out = subprocess.run(["bash", "-c", f"ulimit -n 256 && {sys.executable} -c '{CAPPED}'"],
                         capture_output=True, text=True, timeout=60)
    assert "ulimit -n" in out.stdout and "using 64 local workers" in out.stdout, out
