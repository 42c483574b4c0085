"""The scripts in examples/, run as a user runs them: `python examples/X.py` in a fresh interpreter."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _workers_of(pid: int) -> list[psutil.Process]:
    """Local-backend workers started by process ``pid`` (they are ``python -m cloudbutton.worker FD PID``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "cloudbutton.worker" in cmd and cmd[-1:] == [str(pid)]:
            found.append(p)
    return found


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    env["XDG_CONFIG_HOME"] = str(cwd / "xdg")  # no user config file
    p = psutil.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = p.communicate(timeout=180)  # a script that does not exit fails here
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert not _workers_of(p.pid), "the example left worker processes running"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_examples_have_no_main_guard():
    # the point of these examples: a plain script works on the local backend
    for name in ("hello.py", "pi.py"):
        assert not re.search(r"^if __name__", (EXAMPLES / name).read_text(), re.MULTILINE)


def test_hello(tmp_path):
    r = run_example("hello.py", cwd=tmp_path)
    assert r.stdout == f"{list(range(1, 1001))}\n"  # printed once: workers never re-ran the script


def test_pi(tmp_path):
    r = run_example("pi.py", cwd=tmp_path)
    m = re.search(r"^pi is about (\d+\.\d+) \(error (\d+\.\d+)\)$", r.stdout, re.MULTILINE)
    assert m, r.stdout
    assert abs(float(m[1]) - math.pi) < 0.05
    assert abs(float(m[2]) - abs(float(m[1]) - math.pi)) < 1e-5
    assert re.search(r"^6,400,000 points in 64 calls on backend 'local' \(\d+ workers?\): \d+\.\d+ s$", r.stdout,
                     re.MULTILINE), r.stdout


def test_pi_with_arguments(tmp_path):
    r = run_example("pi.py", "8", "20000", cwd=tmp_path)
    m = re.search(r"^pi is about (\d+\.\d+)", r.stdout, re.MULTILINE)
    assert m and abs(float(m[1]) - math.pi) < 0.05
    assert "160,000 points in 8 calls" in r.stdout
