"""Which modules travel by value and which by reference, on real local workers: the user's own
modules written to a tmp dir and imported, aliases and the user's cloudpickle registrations,
and the file and line that remote tracebacks name."""

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import cloudpickle
import pytest

from cloudbutton import SerializationError
from cloudbutton import multiprocessing as mp
from cloudbutton.serialize import by_value_modules

MODULE = """
import threading

FACTOR = 2


class Counter:
    lock = threading.Lock()  # a class attribute that cannot be pickled

    def bump(self, x):
        with self.lock:
            return x + 1

    def write(self, path):
        with self.lock, open(path, "w") as f:
            f.write("ran")


def scale(x):
    return x * FACTOR


def fail(x):
    if x:
        raise ValueError(f"failing on {x}")  # the line the traceback names
    return x
"""


def run(fexec, function, iterdata, **kwargs):
    return fexec.get_result(fexec.map(function, iterdata, **kwargs), timeout=60)


def import_module(directory: Path, importable: bool):
    """Write MODULE to ``directory`` under a fresh name and import it; unless ``importable``,
    ``directory`` leaves sys.path again, so workers (which get this sys.path) cannot import it."""
    name = f"cb_ship_{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(MODULE)
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    finally:
        if not importable:
            sys.path.remove(str(directory))


@pytest.fixture
def modules(tmp_path):
    """``make(importable)`` imports a fresh copy of MODULE; the modules and sys.path entries go at the end."""
    path, made = list(sys.path), []

    def make(importable: bool, directory: Path = tmp_path):
        made.append(import_module(directory, importable))
        return made[-1]

    yield make
    sys.path[:] = path
    for module in made:
        for name in [n for n, m in sys.modules.items() if m is module]:
            del sys.modules[name]


# --- aliases and the user's own registrations with cloudpickle --------------------------------------


def test_a_module_loaded_under_two_names(fexec, modules, monkeypatch):
    module = modules(importable=False)
    monkeypatch.setitem(sys.modules, f"{module.__name__}_alias", module)
    assert module.__name__ in by_value_modules() and f"{module.__name__}_alias" in by_value_modules()
    assert run(fexec, module.scale, [1, 2]) == [2, 4]
    assert run(fexec, lambda x: -x, [1]) == [-1]
    assert run(fexec, module.scale, [3], include_modules=[f"{module.__name__}_alias"]) == [6]
    assert module.__name__ not in cloudpickle.list_registry_pickle_by_value()


@pytest.mark.parametrize("importable", [True, False], ids=["importable", "not-importable"])
def test_a_module_the_user_registered_stays_registered_and_travels_by_value(fexec, modules, importable):
    module = modules(importable)
    cloudpickle.register_pickle_by_value(module)
    try:
        module.FACTOR = 10  # only a copy of the module made here knows this
        assert run(fexec, module.scale, [1]) == [10]
        assert module.__name__ in cloudpickle.list_registry_pickle_by_value()
        assert run(fexec, module.scale, [2]) == [20]
    finally:
        cloudpickle.unregister_pickle_by_value(module)  # raises if a map took the registration away


# --- by reference where the workers import what the caller does -------------------------------------


def test_local_workers_import_an_importable_module_class_with_a_lock(fexec, modules):
    module = modules(importable=True)
    assert fexec.backend.shares_host
    assert run(fexec, module.Counter().bump, [1, 2]) == [2, 3]
    assert run(fexec, lambda x: module.Counter().bump(x), [5]) == [6]


def test_a_process_target_whose_class_holds_a_lock(modules, tmp_path, isolated):
    module = modules(importable=True)
    marker = tmp_path / "ran"
    process = mp.Process(target=module.Counter().write, args=(str(marker),))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert marker.read_text() == "ran"


def test_importable_modules_by_reference_the_others_by_value(fexec, modules, tmp_path):
    importable = modules(importable=True, directory=tmp_path / "on_path")
    hidden = modules(importable=False, directory=tmp_path / "hidden")
    importable.FACTOR = hidden.FACTOR = 10  # a worker that imports the module sees 2
    assert run(fexec, importable.scale, [1]) == [2]
    assert run(fexec, hidden.scale, [1]) == [10]
    assert run(fexec, importable.scale, [1], include_modules=[importable.__name__]) == [10]
    with pytest.raises(SerializationError, match="lock"):  # by value, its class attributes come along
        fexec.map(importable.Counter().bump, [1], include_modules=[importable.__name__])
    own = by_value_modules()
    assert importable.__name__ in own and hidden.__name__ in own  # workers on another host
    on_host = by_value_modules(shares_host=True)
    assert importable.__name__ not in on_host and hidden.__name__ in on_host
    assert __name__ in own and __name__ not in on_host  # this test module is importable too


# --- what counts as the user's own file ---------------------------------------------------------------


def test_a_directory_whose_name_starts_with_the_venvs_is_the_users(fexec, modules):
    prefix = Path(sys.prefix).resolve()
    if not os.access(prefix.parent, os.W_OK):
        pytest.skip(f"cannot write next to {prefix}")
    sibling = Path(f"{prefix}-cb-{uuid.uuid4().hex[:8]}")
    try:
        module = modules(importable=False, directory=sibling)
        assert module.__name__ in by_value_modules()
        assert run(fexec, module.scale, [1, 2]) == [2, 4]
    finally:
        shutil.rmtree(sibling, ignore_errors=True)


# --- remote tracebacks ---------------------------------------------------------------------------------


FAIL_LINE = next(n for n, line in enumerate(MODULE.splitlines(), 1) if "the line the traceback names" in line)


def remote_traceback(fexec, function, arg) -> str:
    with pytest.raises(ValueError, match=f"failing on {arg}") as info:
        run(fexec, function, [arg])
    return "\n".join(n for n in info.value.__notes__ if "Remote traceback" in n)


def test_remote_traceback_names_the_file_and_line_of_a_module_sent_by_value(fexec, modules):
    module = modules(importable=False)
    tb = remote_traceback(fexec, module.fail, 3)
    assert f'File "{module.__file__}", line {FAIL_LINE}, in fail' in tb
    assert 'raise ValueError(f"failing on {x}")' in tb
    assert "<dynamic-code>" not in tb


def test_remote_traceback_names_the_line_of_a_closure(fexec):
    def failing(x):
        raise ValueError(f"failing on {x}")

    tb = remote_traceback(fexec, failing, 4)
    line = failing.__code__.co_firstlineno + 1
    assert f'File "{__file__}", line {line}, in failing' in tb
    assert 'raise ValueError(f"failing on {x}")' in tb


SCRIPT = """
import cloudbutton


def work(x):
    raise ValueError(f"script failing on {x}")


fexec = cloudbutton.FunctionExecutor(max_workers=1)
try:
    fexec.get_result(fexec.map(work, [1]))
except ValueError as e:
    print("".join(e.__notes__))
"""


def test_remote_traceback_names_the_file_and_line_of_a_script(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "job.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert 'job.py", line 6, in work' in proc.stdout, proc.stdout
    assert 'raise ValueError(f"script failing on {x}")' in proc.stdout


def test_code_pickled_by_value_still_runs_everywhere_it_did(fexec):
    # nested code objects, default arguments, closures over closures, a generator and a class body
    def outer(n, base=10):
        class Local:
            scale = base

            def times(self, v):
                return v * self.scale

        def gen():
            yield from (Local().times(i) for i in range(n))

        return sum(gen())

    assert run(fexec, outer, [3, 4]) == [30, 60]
