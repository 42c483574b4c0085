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


def run_example(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``examples/name`` with no cloudbutton settings but those in ``env``; it must exit with 0 and
    leave no workers behind."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}, **(env or {})}
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
    for name in ("hello.py", "pi.py", "wordcount.py", "ndvi.py", "grep.py", "kmeans.py"):
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


def in_storage(tmp_path: Path) -> dict[str, str]:
    """Settings that point an example at storage of its own under ``tmp_path``."""
    return {"CLOUDBUTTON_STORAGE_URL": f"file://{tmp_path / 'storage'}"}


def assert_data_deleted(tmp_path: Path) -> None:
    """The example wrote its data to the configured storage and deleted it, folders included."""
    folder = tmp_path / "storage"
    assert folder.is_dir(), "the example did not use the configured storage"
    assert list(folder.iterdir()) == []


def test_wordcount(tmp_path):
    r = run_example("wordcount.py", "3", "0.5", "64", cwd=tmp_path, env=in_storage(tmp_path))
    top = re.findall(r"^  ([a-z]+) +([\d,]+)$", r.stdout, re.MULTILINE)
    counts = [int(n.replace(",", "")) for _, n in top]
    assert len(top) == 10 and counts == sorted(counts, reverse=True), r.stdout
    m = re.search(r"^([\d,]+) words \(([\d,]+) distinct\) in 3 objects \((\d+\.\d) MB\), (\d+) partitions of 64 KB "
                  r"on backend 'local'", r.stdout, re.MULTILINE)
    assert m, r.stdout
    assert float(m[3]) == 1.5 and int(m[4]) == 24  # 3 objects of about 500 KB: 8 partitions each
    assert "the counts match a single-process count" in r.stdout
    assert_data_deleted(tmp_path)


def test_ndvi(tmp_path):
    r = run_example("ndvi.py", "6", "64", cwd=tmp_path, env=in_storage(tmp_path))
    rows = re.findall(r"^tile-(\d{3})\.npy +(-?[\d.]+) +(-?[\d.]+) +(-?[\d.]+) +([\d.]+)%$", r.stdout, re.MULTILINE)
    assert [int(row[0]) for row in rows] == list(range(6)), r.stdout
    for _, mean, low, high, _ in rows:
        assert -1 <= float(low) <= float(mean) <= float(high) <= 1
    m = re.search(r"^all tiles: mean NDVI (-?[\d.]+), min (-?[\d.]+), max (-?[\d.]+), ([\d.]+)% vegetated", r.stdout,
                  re.MULTILINE)
    assert m and float(m[2]) < 0 < float(m[1]) < float(m[3]), r.stdout  # water and vegetation were both seen
    # tile 3 has a no-data strip of 64 // 8 columns: those pixels are left out, not counted as NDVI 0
    assert f"6 tiles of 4 x 64 x 64 ({6 * 64 * 64 - 64 * 8:,} valid pixels) in 6 calls" in r.stdout
    assert "the summary matches a local computation" in r.stdout
    assert_data_deleted(tmp_path)


def test_grep(tmp_path):
    r = run_example("grep.py", cwd=tmp_path, env=in_storage(tmp_path))
    errors = re.findall(r"^  (auth|api|billing|search|storage|frontend) +([\d,]+)$", r.stdout, re.MULTILINE)
    assert len(errors) == 6, r.stdout
    codes = dict(re.findall(r"^  (5\d\d) +([\d,]+)$", r.stdout, re.MULTILINE))
    assert sorted(codes) == ["500", "502", "503", "504"], r.stdout
    # by default the regex finds the status of every ERROR line: both jobs saw every line once
    assert sum(int(n.replace(",", "")) for n in codes.values()) == sum(int(n.replace(",", "")) for _, n in errors)
    assert re.search(r"^50,000 lines \(\d+\.\d MB\) in \d+ partitions of 256 KB", r.stdout, re.MULTILINE), r.stdout
    assert "the counts match a scan of the whole log" in r.stdout
    assert_data_deleted(tmp_path)


def test_grep_with_a_regex_from_the_command_line(tmp_path):
    r = run_example("grep.py", r"path=(/api/\w+)", "5000", cwd=tmp_path, env=in_storage(tmp_path))
    found = re.findall(r"^  (/api/\w+) +([\d,]+)$", r.stdout, re.MULTILINE)
    assert sorted(path for path, _ in found) == ["/api/cart", "/api/login", "/api/orders", "/api/search"], r.stdout
    assert "the counts match a scan of the whole log" in r.stdout
    assert_data_deleted(tmp_path)


def test_kmeans(tmp_path):
    r = run_example("kmeans.py", cwd=tmp_path)
    summary = r"^k-means of 20,000 points, k=4: \d+ rounds in 4 functions on backend 'local': "
    assert re.search(summary, r.stdout, re.M), r.stdout
    assert "same as sequential numpy k-means from the same start" in r.stdout
