"""The `cloudbutton` command, run for real: in a subprocess (`python -m cloudbutton`, and the
installed console script) and in-process through `cloudbutton.cli.main`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import cloudbutton
from cloudbutton import cli


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A working directory and a user config directory of our own (both start empty)."""
    cwd = tmp_path / "work"
    xdg = tmp_path / "xdg"
    cwd.mkdir()
    (xdg / "cloudbutton").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return cwd, xdg / "cloudbutton" / "config.toml"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m cloudbutton ARGS` in the current directory with the current environment (+ env)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cloudbutton", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )


def parse_show(text: str) -> dict[str, tuple[str, str]]:
    """`config show` output as {key: (value text, source)}."""
    rows = {}
    for line in text.strip().splitlines():
        m = re.fullmatch(r"(\w+) = (.*?)  # (.*)", line)
        assert m, f"unexpected config show line: {line!r}"
        rows[m[1]] = (m[2], m[3])
    return rows


def assert_clean_error(result_or_err: str, *fragments: str) -> None:
    assert result_or_err.startswith("cloudbutton: error: "), result_or_err
    assert "Traceback" not in result_or_err
    for fragment in fragments:
        assert fragment in result_or_err


# --- --version ---------------------------------------------------------------------------------


def test_version_subprocess(isolated):
    r = run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cloudbutton {cloudbutton.__version__}"


def test_version_in_process(isolated, capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cloudbutton {cloudbutton.__version__}"


def test_console_script_is_installed(isolated):
    script = shutil.which("cloudbutton", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if script is None:
        pytest.skip("the cloudbutton console script is not installed next to this interpreter")
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cloudbutton {cloudbutton.__version__}"


# --- hello -------------------------------------------------------------------------------------


def _worker_ids(out: str) -> list[str]:
    m = re.search(r"^ran on (\d+) workers?: (.+)$", out, re.MULTILINE)
    assert m, out
    ids = m[2].split(", ")
    assert int(m[1]) == len(ids) == len(set(ids))
    return ids


def test_hello_subprocess_runs_on_local_workers_and_leaves_none(isolated):
    r = run("hello", "--workers", "2", "--calls", "10")
    assert r.returncode == 0, r.stderr
    assert "hello on backend 'local' (set by: default), 2 workers" in r.stdout
    assert re.search(r"first map +10 calls in ", r.stdout)
    assert re.search(r"second map +10 calls in .*\(0 cold starts, 10 warm\)", r.stdout)
    ids = _worker_ids(r.stdout)
    assert 1 <= len(ids) <= 2
    pids = [int(i.removeprefix("local:")) for i in ids]
    assert all(i.startswith("local:") for i in ids)
    assert os.getpid() not in pids
    for pid in pids:  # the workers stopped with the command
        assert not psutil.pid_exists(pid) or "cloudbutton.worker" not in " ".join(psutil.Process(pid).cmdline())


def test_hello_in_process(isolated, capsys):
    assert cli.main(["hello", "--workers", "2", "--calls", "5"]) == 0
    out = capsys.readouterr().out
    assert "hello on backend 'local'" in out
    ids = _worker_ids(out)
    assert 1 <= len(ids) <= 2


def test_hello_takes_backend_settings_from_the_config_file(isolated, capsys):
    cwd, _ = isolated
    (cwd / "cloudbutton.toml").write_text('backend = "local"\nmax_workers = 1\n')
    assert cli.main(["hello", "--calls", "3"]) == 0
    out = capsys.readouterr().out
    assert f"hello on backend 'local' (set by: {cwd / 'cloudbutton.toml'}), 1 worker\n" in out
    assert len(_worker_ids(out)) == 1


def test_hello_on_a_dask_local_cluster(isolated):
    pytest.importorskip("distributed")
    r = run("hello", "--backend", "dask", "--workers", "1", "--calls", "3")
    assert r.returncode == 0, r.stderr
    assert "hello on backend 'dask' (set by: --backend), 1 worker\n" in r.stdout
    assert len(_worker_ids(r.stdout)) == 1


def test_hello_unknown_backend_names_allowed_values(isolated):
    r = run("hello", "--backend", "nope")
    assert r.returncode == 1
    assert r.stdout == ""
    assert_clean_error(r.stderr, "'nope'", "backend", "local", "dask")


def test_hello_unknown_backend_in_process(isolated, capsys):
    assert cli.main(["hello", "--backend", "nope"]) == 1
    assert_clean_error(capsys.readouterr().err, "'nope'", "allowed: ", "local")


def test_hello_names_the_flag_a_bad_value_came_from(isolated, capsys):
    assert cli.main(["hello", "--backend", "nope"]) == 1
    assert_clean_error(capsys.readouterr().err, "backend = 'nope' (from --backend) is unknown")
    assert cli.main(["hello", "--workers", "10000000"]) == 1
    assert_clean_error(capsys.readouterr().err, "max_workers = 10000000 (from --workers) must be between")


def test_hello_says_a_flag_set_the_backend(isolated, capsys):
    cwd, _ = isolated
    (cwd / "cloudbutton.toml").write_text('backend = "dask"\n')  # the flag wins over the file
    assert cli.main(["hello", "--backend", "local", "--workers", "1", "--calls", "2"]) == 0
    assert "hello on backend 'local' (set by: --backend), 1 worker\n" in capsys.readouterr().out


def test_hello_interrupted_exits_130(isolated):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    p = subprocess.Popen(
        [sys.executable, "-u", "-m", "cloudbutton", "hello", "--workers", "2", "--calls", "200000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        first = p.stdout.readline()  # the executor is up; the first (long) map is next
        assert "hello on backend 'local'" in first
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "cloudbutton: interrupted" in err
    assert "Traceback" not in err


def test_keyboard_interrupt_in_process_exits_130(isolated, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_config_show", interrupted)
    assert cli.main(["config", "show"]) == 130
    assert "interrupted" in capsys.readouterr().err


# --- config show -------------------------------------------------------------------------------


def test_config_show_defaults(isolated):
    r = run("config", "show")
    assert r.returncode == 0, r.stderr
    rows = parse_show(r.stdout)
    assert list(rows) == cloudbutton.config.config_keys()
    assert rows["backend"] == ("'local'", "default")
    assert all(source == "default" for _, source in rows.values())


def test_config_show_names_the_source_of_each_value(isolated):
    cwd, user_file = isolated
    user_file.write_text("chunksize = 5\nretries = 1\ntimeout = 10.0\n")
    (cwd / "cloudbutton.toml").write_text("timeout = 30.5\nretries = 2\n")
    r = run("config", "show", env={"CLOUDBUTTON_RETRIES": "3", "CLOUDBUTTON_MAX_WORKERS": "4"})
    assert r.returncode == 0, r.stderr
    rows = parse_show(r.stdout)
    assert rows["chunksize"] == ("5", str(user_file))
    assert rows["timeout"] == ("30.5", str(cwd / "cloudbutton.toml"))
    assert rows["retries"] == ("3", "CLOUDBUTTON_RETRIES")
    assert rows["max_workers"] == ("4", "CLOUDBUTTON_MAX_WORKERS")
    assert rows["backend"] == ("'local'", "default")


def test_config_show_in_process(isolated, monkeypatch, capsys):
    cwd, _ = isolated
    (cwd / "cloudbutton.toml").write_text('dask_address = "tcp://127.0.0.1:8786"\n')
    monkeypatch.setenv("CLOUDBUTTON_SHOW_PROGRESSBAR", "false")
    assert cli.main(["config", "show"]) == 0
    rows = parse_show(capsys.readouterr().out)
    assert rows["dask_address"] == ("'tcp://127.0.0.1:8786'", str(cwd / "cloudbutton.toml"))
    assert rows["show_progressbar"] == ("False", "CLOUDBUTTON_SHOW_PROGRESSBAR")


def test_config_show_bad_key_in_file(isolated):
    cwd, _ = isolated
    (cwd / "cloudbutton.toml").write_text("max_wrokers = 4\n")
    r = run("config", "show")
    assert r.returncode == 1
    assert r.stdout == ""
    assert_clean_error(r.stderr, "'max_wrokers'", str(cwd / "cloudbutton.toml"), "max_workers")


def test_config_show_bad_key_in_environment(isolated, monkeypatch, capsys):
    monkeypatch.setenv("CLOUDBUTTON_BOGUS", "1")
    assert cli.main(["config", "show"]) == 1
    assert_clean_error(capsys.readouterr().err, "'bogus'", "CLOUDBUTTON_")


def test_config_show_bad_value(isolated):
    r = run("config", "show", env={"CLOUDBUTTON_MAX_WORKERS": "-1"})
    assert r.returncode == 1
    assert_clean_error(r.stderr, "max_workers", "CLOUDBUTTON_MAX_WORKERS")


def test_config_show_unknown_backend(isolated):
    r = run("config", "show", env={"CLOUDBUTTON_BACKEND": "nope"})
    assert r.returncode == 1
    assert_clean_error(r.stderr, "'nope'", "CLOUDBUTTON_BACKEND", "allowed: ", "local")


# --- usage errors ------------------------------------------------------------------------------


def test_unknown_subcommand_subprocess(isolated):
    r = run("frobnicate")
    assert r.returncode == 2
    assert "invalid choice: 'frobnicate'" in r.stderr
    assert r.stderr.startswith("usage: cloudbutton")


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], [], ["config"], ["config", "frob"], ["hello", "--calls", "0"], ["hello", "--workers", "x"],
     ["--no-such-flag"]],
)
def test_usage_errors_in_process(isolated, capsys, argv):
    assert cli.main(argv) == 2
    assert "usage: cloudbutton" in capsys.readouterr().err


def test_help_exits_0(isolated, capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "config" in out
