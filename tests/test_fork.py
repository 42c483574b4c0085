"""cloudbutton in a process forked after its parent used it: the child gets pools of its own."""

import subprocess
import sys

import pytest

FORKS = {
    "os.fork": """
pid = os.fork()
if pid == 0:
    with cloudbutton.FunctionExecutor(max_workers=2) as fexec:
        ok = fexec.get_result(fexec.map(inc, range(4)), timeout=60) == [1, 2, 3, 4]
    os._exit(0 if ok else 1)
assert os.waitpid(pid, 0)[1] == 0
""",
    "multiprocessing fork child": """
def child():
    with cloudbutton.FunctionExecutor(max_workers=2) as fexec:
        assert fexec.get_result(fexec.map(inc, range(4)), timeout=60) == [1, 2, 3, 4]
p = multiprocessing.get_context("fork").Process(target=child)
p.start()
p.join(90)
assert p.exitcode == 0, p.exitcode
""",
    "joblib multiprocessing backend around the cloudbutton backend": """
import joblib
import cloudbutton.joblib
def nested(i):
    with joblib.parallel_backend("cloudbutton", n_jobs=2):
        return sum(joblib.Parallel()(joblib.delayed(inc)(j) for j in range(i)))
assert joblib.Parallel(n_jobs=2, backend="multiprocessing")(joblib.delayed(nested)(i) for i in range(4)) == [0, 1, 3, 6]
""",
}

PROLOGUE = """
import multiprocessing, os, cloudbutton
def inc(x):
    return x + 1
with cloudbutton.FunctionExecutor(max_workers=2) as fexec:  # the parent's pool and threads exist
    assert fexec.get_result(fexec.map(inc, range(4))) == [1, 2, 3, 4]
"""

EPILOGUE = """
with cloudbutton.FunctionExecutor(max_workers=2) as fexec:  # the parent's pool still works
    assert fexec.get_result(fexec.map(inc, range(4)), timeout=60) == [1, 2, 3, 4]
print("ok")
"""


@pytest.mark.parametrize("how", FORKS)
def test_a_forked_child_runs_its_own_maps(isolated, how):
    script = PROLOGUE + FORKS[how] + EPILOGUE
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
