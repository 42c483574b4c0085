"""Serialization on real local workers: what functions and arguments can travel, the user's own
modules shipped by value, and what the caller gets when pickling fails on either side."""

import dataclasses
import functools
import importlib
import math
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from cloudbutton import RemoteError, SerializationError
from cloudbutton.errors import CloudbuttonError, WorkerLostError
from cloudbutton.serialize import by_value_modules


def run(fexec, function, iterdata, **kwargs):
    return fexec.get_result(fexec.map(function, iterdata, **kwargs), timeout=60)


# --- functions of every kind -------------------------------------------------------------------

SCALE = 3


def scaled(x):
    return x * SCALE


def make_adder(n):
    def adder(x):
        return x + n

    return adder


class Accumulator:
    def __init__(self, start=0):
        self.total = start

    def add(self, x):
        self.total += x
        return self

    def __call__(self, x):
        return self.total + x

    @staticmethod
    def double(x):
        return 2 * x

    @classmethod
    def named(cls, x):
        return f"{cls.__name__}:{x}"


@dataclasses.dataclass
class Point:
    x: int
    y: int

    def norm1(self):
        return abs(self.x) + abs(self.y)


def test_lambda(fexec):
    assert run(fexec, lambda x: x * 10, range(4)) == [0, 10, 20, 30]


def test_closure(fexec):
    offset = 100
    assert run(fexec, lambda x: x + offset, [1, 2]) == [101, 102]
    assert run(fexec, make_adder(5), [1, 2]) == [6, 7]


def test_closures_with_different_captured_values_are_different_functions(fexec):
    # workers cache functions: the cache must not mix up two closures of the same code
    assert run(fexec, make_adder(1), range(6)) == [1, 2, 3, 4, 5, 6]
    assert run(fexec, make_adder(2), range(6)) == [2, 3, 4, 5, 6, 7]
    assert run(fexec, make_adder(1), range(6)) == [1, 2, 3, 4, 5, 6]


def test_nested_and_recursive_function(fexec):
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def outer(x):
        def inner(y):
            return fib(y) * 2

        return inner(x)

    assert run(fexec, outer, range(8)) == [2 * v for v in [0, 1, 1, 2, 3, 5, 8, 13]]


def test_function_of_the_test_module_is_imported_by_local_workers_unless_included(fexec, monkeypatch):
    # this module is importable with the caller's sys.path: local workers import it, as the standard
    # library's do, and see its values as imported; include_modules ships it by value, as it is now
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 5)
    assert run(fexec, scaled, [1, 2]) == [3, 6]
    assert run(fexec, scaled, [1, 2], include_modules=[__name__]) == [5, 10]
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 7)
    assert run(fexec, scaled, [1, 2], include_modules=[__name__]) == [7, 14]


def test_partial_bound_method_callable_instance_static_and_class_methods(fexec):
    acc = Accumulator(10)
    assert run(fexec, functools.partial(divmod, 17), [5, 3]) == [(3, 2), (5, 2)]
    assert run(fexec, acc, [1, 2]) == [11, 12]
    assert run(fexec, acc.add, [1])[0].total == 11
    assert acc.total == 10  # the worker changed a copy
    assert run(fexec, Accumulator.double, [4]) == [8]
    assert run(fexec, Accumulator.named, [4]) == ["Accumulator:4"]


def test_builtins_and_stdlib_functions(fexec):
    assert run(fexec, abs, [-1, 2]) == [1, 2]
    assert run(fexec, math.sqrt, [4, 9]) == [2.0, 3.0]
    assert run(fexec, os.path.basename, ["/a/b.txt"]) == ["b.txt"]


def test_instances_of_test_module_classes_travel_both_ways(fexec):
    results = run(fexec, lambda p: Point(p.y, p.x), [Point(1, 2), Point(-3, 4)])
    assert results == [Point(2, 1), Point(4, -3)]
    assert all(type(r) is Point for r in results)
    accs = run(fexec, lambda a, x: a.add(x), [(Accumulator(1), 5)])
    assert isinstance(accs[0], Accumulator) and accs[0].total == 6
    assert run(fexec, Point.norm1, [Point(-3, 4)]) == [7]


def test_large_arguments_and_results(fexec):
    blob = os.urandom(3 * 2**20)
    assert run(fexec, len, [(blob,)]) == [len(blob)]
    assert run(fexec, lambda n: b"z" * n, [4 * 2**20]) == [b"z" * (4 * 2**20)]


def test_self_referencing_argument(fexec):
    cyclic = [1, 2]
    cyclic.append(cyclic)
    result = run(fexec, lambda c: c, [(cyclic,)])[0]
    assert result[:2] == [1, 2] and result[2] is result


# --- the user's own modules, which workers cannot import -------------------------------------------


@pytest.fixture
def user_module(tmp_path):
    """A module (importing a helper module and a package, all in tmp_path) imported here, with tmp_path
    taken off sys.path again so that workers, which receive this sys.path, cannot import them."""
    name = f"cb_usermod_{uuid.uuid4().hex[:8]}"
    helper, package = f"{name}_helper", f"{name}_pkg"
    (tmp_path / f"{helper}.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "sub.py").write_text("def negate(x):\n    return -x\n")
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import importlib

            from {helper} import triple
            from {package}.sub import negate

            FACTOR = 2


            class Box:
                def __init__(self, value):
                    self.value = value


            def scale(x):
                return triple(x) * FACTOR


            def boxed(x):
                return Box(negate(x))


            def importable(name):
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError:
                    return False
                return True
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
    yield module
    for mod in [name, helper, package, f"{package}.sub"]:
        sys.modules.pop(mod, None)


def test_user_modules_are_shipped_by_value(fexec, user_module):
    assert os.path.dirname(user_module.__file__) not in sys.path
    assert run(fexec, user_module.scale, range(4)) == [0, 6, 12, 18]
    boxes = run(fexec, user_module.boxed, [1, 2])
    assert [b.value for b in boxes] == [-1, -2]
    assert all(isinstance(b, user_module.Box) for b in boxes)


def test_workers_really_cannot_import_the_user_module(fexec, user_module):
    names = [user_module.__name__, f"{user_module.__name__}_helper", "json"]
    assert run(fexec, user_module.importable, names) == [False, False, True]


def test_by_value_modules_lists_the_users_own_modules(user_module):
    names = by_value_modules()
    assert user_module.__name__ in names and f"{user_module.__name__}_helper" in names
    assert f"{user_module.__name__}_pkg" in names
    assert __name__ in names  # this test module is the user's own too
    for installed in ["json", "os", "pytest", "cloudpickle", "cloudbutton", "__main__"]:
        assert installed not in names
    assert user_module.__name__ not in by_value_modules(exclude=[user_module.__name__])
    assert "json" in by_value_modules(include=["json"])


def test_excluding_the_module_makes_the_worker_import_it_and_fail(fexec, user_module):
    with pytest.raises(ModuleNotFoundError, match=user_module.__name__) as info:
        run(fexec, user_module.scale, [1], exclude_modules=[user_module.__name__])
    assert any("Remote traceback" in note for note in info.value.__notes__)
    # the same function still works without the exclusion (no stale cache in the workers)
    assert run(fexec, user_module.scale, [1]) == [6]


def test_excluding_a_helper_module_fails_on_the_helper(fexec, user_module):
    helper = f"{user_module.__name__}_helper"
    with pytest.raises(ModuleNotFoundError, match=helper):
        run(fexec, user_module.scale, [1], exclude_modules=[helper])


def test_excluding_a_package_covers_its_submodules(fexec, user_module):
    package = f"{user_module.__name__}_pkg"
    with pytest.raises(ModuleNotFoundError, match=package):
        run(fexec, user_module.boxed, [1], exclude_modules=[package])


def test_include_modules_naming_a_module_not_imported(fexec):
    before = len(fexec.futures)
    with pytest.raises(SerializationError, match="cb_not_imported_xyz") as info:
        fexec.map(scaled, [1], include_modules=["cb_not_imported_xyz"])
    assert isinstance(info.value, TypeError) and isinstance(info.value, CloudbuttonError)
    assert len(fexec.futures) == before
    with pytest.raises(SerializationError, match="cb_not_imported_xyz"):
        fexec.call_async(scaled, 1, include_modules=["cb_not_imported_xyz"])


def test_include_modules_naming_an_imported_user_module_is_fine(fexec, user_module):
    assert run(fexec, user_module.scale, [2], include_modules=[user_module.__name__]) == [12]


MAIN_SCRIPT = """
import os
import cloudbutton
from helper_of_script import triple


class Box:
    def __init__(self, v):
        self.v = v


def work(x):
    return triple(Box(x).v), os.getpid()


fexec = cloudbutton.FunctionExecutor(max_workers=2)
results = fexec.get_result(fexec.map(work, range(5)))
assert all(pid != os.getpid() for _, pid in results)
print("RESULT", [r for r, _ in results])
"""


def test_a_plain_script_ships_its_main_module_by_value(tmp_path):
    (tmp_path / "helper_of_script.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "job.py").write_text(MAIN_SCRIPT)  # no main guard
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "job.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["RESULT [0, 3, 6, 9, 12]"]


# --- what cannot be pickled on the caller's side ---------------------------------------------------


def touch(path, payload=None):
    with open(path, "w") as f:
        f.write("ran")
    return path


class Unpicklable:
    def __reduce__(self):
        raise ValueError("Unpicklable refuses")


def test_unpicklable_argument_fails_at_submit_naming_the_call(fexec, tmp_path):
    markers = [tmp_path / f"ran-{i}" for i in range(5)]
    items = [(str(m), None) for m in markers]
    items[2] = (str(markers[2]), threading.Lock())
    before = len(fexec.futures)
    with pytest.raises(SerializationError) as info:
        fexec.map(touch, items)
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "00002" in message and "lock" in message
    assert len(fexec.futures) == before
    # nothing of that job ran: a later job queued behind it on the same workers finishes, and
    # still none of the first job's marker files exist
    later = [tmp_path / f"later-{i}" for i in range(10)]
    run(fexec, touch, [str(p) for p in later])
    assert all(p.exists() for p in later)
    assert not any(m.exists() for m in markers)


@pytest.mark.parametrize(
    "bad, what",
    [(Unpicklable(), "Unpicklable refuses"), ((x for x in []), "generator"), (threading.Lock(), "lock")],
    ids=["reduce-raises", "generator", "lock"],
)
def test_unpicklable_arguments_of_any_kind(fexec, bad, what):
    with pytest.raises(SerializationError, match=what) as info:
        fexec.map(touch, ["/nonexistent/a", ("/nonexistent/b", bad)])
    assert "00001" in str(info.value)
    with pytest.raises(SerializationError, match=what):
        fexec.map(touch, ["/nonexistent/a"], extra_args={"payload": bad})
    with pytest.raises(SerializationError, match=what):
        fexec.call_async(touch, {"path": "/nonexistent/a", "payload": bad})


def test_unpicklable_function_is_named(fexec):
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    before = len(fexec.futures)
    with pytest.raises(SerializationError, match="uses_lock") as info:
        fexec.map(uses_lock, [1, 2])
    assert isinstance(info.value, TypeError) and "lock" in str(info.value)
    with pytest.raises(SerializationError, match="lambda"):
        fexec.call_async(lambda x: (lock, x), 1)
    assert len(fexec.futures) == before


# --- what cannot be pickled on the worker's side -----------------------------------------------------


def lock_for_one(x):
    return threading.Lock() if x == 1 else x


def test_unpicklable_result_fails_only_its_call(fexec):
    futures = fexec.map(lock_for_one, [0, 1, 2])
    results = fexec.get_result(futures, throw_except=False, timeout=60)
    assert results[0] == 0 and results[2] == 2
    error = results[1]
    assert isinstance(error, TypeError) and not isinstance(error, WorkerLostError)
    assert "pickle" in str(error) and "lock" in str(error)
    assert any(futures[1].name in note for note in error.__notes__)


def test_unpicklable_result_is_a_serialization_error_about_the_result(fexec):
    future = fexec.call_async(lock_for_one, 1)
    with pytest.raises(SerializationError, match="result") as info:
        fexec.get_result(future, timeout=60)
    assert "lock" in str(info.value) and future.name in str(info.value)


def _refuse_to_load():
    raise RuntimeError("this result cannot be loaded here")


class LoadsNowhere:
    def __reduce__(self):
        return _refuse_to_load, ()


def test_result_that_cannot_be_loaded_by_the_caller(fexec):
    futures = fexec.map(lambda x: LoadsNowhere() if x else x, [0, 1])
    results = fexec.get_result(futures, throw_except=False, timeout=60)
    assert results[0] == 0
    error = results[1]
    assert isinstance(error, RemoteError)
    assert "cannot be loaded" in str(error) and "this result cannot be loaded here" in str(error)
    assert error.call == futures[1].name


# --- exceptions travelling back --------------------------------------------------------------------


class CustomError(Exception):
    pass


class TwoArgError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


class LockedError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class BadStrError(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


def raise_custom(x):
    raise CustomError(f"custom {x}")


def raise_two_arg(x):
    raise TwoArgError(x, "boom")


def raise_locked(x):
    raise LockedError(f"locked {x}")


def raise_bad_str(x):
    raise BadStrError(x)


def test_exception_of_a_test_module_class_keeps_its_type(fexec):
    future = fexec.call_async(raise_custom, 3)
    with pytest.raises(CustomError, match="custom 3") as info:
        fexec.get_result(future, timeout=60)
    assert type(info.value) is CustomError
    notes = "\n".join(info.value.__notes__)
    assert future.name in notes and "raise_custom" in notes and "Traceback" in notes


def test_exception_that_cannot_be_rebuilt_is_a_remote_error(fexec):
    future = fexec.call_async(raise_two_arg, 7)
    with pytest.raises(RemoteError) as info:
        fexec.get_result(future, timeout=60)
    error = info.value
    assert isinstance(error, CloudbuttonError)
    assert "TwoArgError" in str(error) and "code 7: boom" in str(error)
    assert error.call == future.name and future.name in str(error)
    notes = "\n".join(error.__notes__)
    assert "Traceback" in notes and "raise_two_arg" in notes and "TwoArgError" in notes


def test_exception_that_cannot_be_pickled_is_a_remote_error(fexec):
    future = fexec.call_async(raise_locked, 1)
    with pytest.raises(RemoteError, match="LockedError") as info:
        fexec.get_result(future, timeout=60)
    assert "locked 1" in str(info.value)
    assert "raise_locked" in "\n".join(info.value.__notes__)


def test_exception_whose_str_fails_is_still_sent_back(fexec):
    future = fexec.call_async(raise_bad_str, 1)
    with pytest.raises(BadStrError) as info:
        fexec.get_result(future, timeout=60)
    assert info.value.args == (1,)
    assert any(future.name in note for note in info.value.__notes__)
