"""Runs a CPython test module, loaded at run time and rewritten in memory, against cloudbutton's drop-ins.

Shared by ``cpython_multiprocessing.py`` and ``cpython_concurrent_futures.py``, which each describe their
module with a ``Suite``. The parent process runs each test class in a child process of its own (a fresh
interpreter, as the standard library's own runner gives each test file), reads one JSON line per event
from it, and kills the child and everything it started when a test stays silent longer than the timeout;
the class then goes on in a new child after the hung test.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fnmatch
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import unittest
from collections import Counter, defaultdict
from collections.abc import Callable

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUTCOMES = ("pass", "fail", "error", "skip", "timeout")


@dataclasses.dataclass
class Suite:
    name: str  # the rewritten module's name, e.g. "cpython_mp_suite"
    source: Callable[[str | None], str]  # the path of the CPython test file (given the --source argument)
    rewrite: Callable[[str], str]  # its source -> the source to run (same line numbers, maybe lines added)
    exclusions: dict[str, str]  # fnmatch pattern on "Class.test_name" -> why a remote process cannot pass it
    keep: Callable[[str], bool] = lambda class_name: True  # the test classes that test cloudbutton


def rewrite_imports(source: str, package: str, shim: str) -> str:
    """Make the import statements of ``package`` (and its submodules) import ``shim`` instead, keeping
    the name they bind and every line number; strings and other code are left alone."""
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(_under(a.name, package) for a in node.names):
            parts = []
            for alias in node.names:
                if not _under(alias.name, package):
                    parts.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
                elif alias.asname:
                    parts.append(f"{shim}{alias.name[len(package):]} as {alias.asname}")
                else:  # "import multiprocessing.pool" binds "multiprocessing": the shim has the submodules
                    parts.append(f"{shim} as {package}")
            edits.append((node, "import " + ", ".join(parts)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _under(node.module, package):
            segment = ast.get_source_segment(source, node)
            edits.append((node, segment.replace(package, shim, 1)))
    for node, text in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        first, last = node.lineno - 1, node.end_lineno - 1
        new = lines[first][: node.col_offset] + text + lines[last][node.end_col_offset :]
        new_lines = new.splitlines(keepends=True)
        new_lines += ["\n"] * (last - first + 1 - len(new_lines))  # keep the line count
        lines[first : last + 1] = new_lines
    return "".join(lines)


def _under(name: str | None, package: str) -> bool:
    return name == package or (name or "").startswith(package + ".")


def load(suite: Suite, workdir: str):
    """Import the rewritten module from ``workdir`` (on ``sys.path``, so that workers import it too)."""
    sys.path.insert(0, workdir)
    return importlib.import_module(suite.name)


def test_ids(suite: Suite, module) -> dict[str, list[str]]:
    """Class name -> its test ids ("Class.test_name"), in the module's order."""
    loader, classes = unittest.TestLoader(), {}
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and suite.keep(name):
            names = loader.getTestCaseNames(obj)
            if names:
                classes[name] = [f"{name}.{n}" for n in names]
    return classes


def excluded(suite: Suite, test_id: str) -> str | None:
    for pattern, reason in suite.exclusions.items():
        if fnmatch.fnmatchcase(test_id, pattern):
            return reason
    return None


# --- the child: runs the tests it is given, one JSON line per event on the given fd ---------------------


class _Events(unittest.TestResult):
    def __init__(self, out, source_file: str):
        super().__init__()
        self.out, self.source_file, self.outcome = out, source_file, None

    def emit(self, **event):
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def _id(self, test) -> str:
        return test.id().split(".", 1)[1]

    def _detail(self, err) -> tuple[str, str]:
        exc_type, exc, tb = err
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        message = str(exc).strip().splitlines()
        where = [f for f in traceback.extract_tb(tb) if f.filename == self.source_file]
        at = f" (line {where[-1].lineno})" if where else ""
        return f"{exc_type.__name__}: {message[0] if message else ''}"[:300] + at, text

    def _set(self, outcome, err=None, reason=""):
        if self.outcome is None or self.outcome[0] == "pass":
            detail, text = self._detail(err) if err else (reason, "")
            self.outcome = (outcome, detail, text)

    def startTest(self, test):  # noqa: N802
        super().startTest(test)
        self.outcome = None
        self.emit(event="start", id=self._id(test))

    def stopTest(self, test):  # noqa: N802
        super().stopTest(test)
        outcome, detail, text = self.outcome or ("pass", "", "")
        self.emit(event="result", id=self._id(test), outcome=outcome, detail=detail, traceback=text)

    def addSuccess(self, test):  # noqa: N802
        self._set("pass")

    def addExpectedFailure(self, test, err):  # noqa: N802
        self._set("pass")

    def addUnexpectedSuccess(self, test):  # noqa: N802
        self._set("fail", reason="unexpected success")

    def addSkip(self, test, reason):  # noqa: N802
        self._set("skip", reason=reason)

    def addFailure(self, test, err):  # noqa: N802
        self._set("fail", err)

    def addError(self, test, err):  # noqa: N802
        if isinstance(test, unittest.TestCase):
            self._set("error", err)
        else:  # setUpClass, tearDownClass, setUpModule...: not a test
            detail, text = self._detail(err)
            self.emit(event="fixture", what=test.description, detail=detail, traceback=text)

    def addSubTest(self, test, subtest, err):  # noqa: N802
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set("fail" if failed else "error", err)


def child(suite: Suite, args) -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for stacks before a kill
    module = load(suite, args.workdir)
    if args.by_value:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    ids = json.load(sys.stdin)
    tests = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromName(i, module) for i in ids)
    with os.fdopen(args.child, "w") as out:
        tests.run(_Events(out, module.__file__))
    _stop_cloudbutton()


def _stop_cloudbutton() -> None:
    """What the repo's conftest does at the end of a session; then no child of ours may remain."""
    from cloudbutton.backends.local import close_pools
    from cloudbutton.state import stop_server

    close_pools()
    stop_server()
    left = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()
    if alive:
        print(f"suite_runner: killed processes left running: {alive}", file=sys.stderr)


# --- the parent ---------------------------------------------------------------------------------------


def _kill_tree(proc: subprocess.Popen) -> int:
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)
    proc.wait()
    return len(tree)


def _hang_site(log_path: str, source_file: str) -> tuple[str, str]:
    """Where the main thread was in the test module when faulthandler dumped the stacks: the innermost
    line, and the test method's line; and the dump itself."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return "", ""
    dump = text[text.rfind("Current thread") :] if "Current thread" in text else ""
    frames = []
    for line in dump.splitlines()[1:]:
        if not line.startswith("  File "):
            break
        if source_file in line:
            frames.append(line.strip().split(", ", 1)[1])
    if not frames:  # not in a test: the innermost line outside the standard library
        stdlib = sysconfig.get_paths()["stdlib"]
        frames = [line.strip()[5:] for line in dump.splitlines()[1:] if line.startswith("  File ")
                  and stdlib not in line][:1]
    tests = [f for f in frames if " in test_" in f]
    where = " at " + frames[0] if frames else ""
    if tests and tests[0] != frames[0]:
        where += f" (from {tests[0]})"
    return where, dump


def _child(args, ids: list[str], workdir: str, env: dict, log_path: str, results: dict, fixtures: list):
    """One child running ``ids``: records their results; returns the test running when the child went
    silent for ``--timeout`` seconds ("" if it was between tests, None if it did not), and the child.
    On return the child and every process it started are gone."""
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, os.path.abspath(sys.argv[0]), "--child", str(write_fd), "--workdir", workdir]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd + (["--by-value"] if args.by_value else []), stdin=subprocess.PIPE, stdout=log,
            stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env, cwd=workdir, start_new_session=True,
        )
    os.close(write_fd)
    current, buffer, deadline = "", b"", time.monotonic() + args.timeout
    try:
        proc.stdin.write(json.dumps(ids).encode())
        proc.stdin.close()
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = pipe.read(65536)
                if not chunk:  # the child closed its end: it is exiting
                    try:
                        proc.wait(timeout=args.timeout)
                        return None, proc
                    except subprocess.TimeoutExpired:
                        fixtures.append({"what": "exit", "detail": f"did not exit {args.timeout:g} s after its tests"})
                        return "", proc
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    deadline = time.monotonic() + args.timeout
                    if event["event"] == "start":
                        current = event["id"]
                    elif event["event"] == "result":
                        results[event["id"]], current = event, ""
                    else:
                        fixtures.append(event)
            return current, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # faulthandler: the stacks, into the log
            time.sleep(1.0)
        _kill_tree(proc)


def run_class(suite: Suite, args, ids: list[str], workdir: str, env: dict) -> tuple[dict, list]:
    """Run these tests (of one class) in children until each has an outcome; results and fixture errors."""
    results, fixtures, remaining = {}, [], list(ids)
    source_file, log_path = os.path.join(workdir, suite.name + ".py"), os.path.join(workdir, "child.log")
    while remaining:
        hung_in, proc = _child(args, remaining, workdir, env, log_path, results, fixtures)
        remaining = [i for i in remaining if i not in results]
        if hung_in is not None:
            where, dump = _hang_site(log_path, source_file)
            if hung_in in remaining:
                results[hung_in] = {"id": hung_in, "outcome": "timeout", "traceback": dump,
                                    "detail": f"no result after {args.timeout:g} s{where}"}
                remaining.remove(hung_in)
                continue
            if not remaining:  # hung after its last test
                fixtures[-1]["detail"] += where
                fixtures[-1]["traceback"] = dump
                break
        if remaining:  # the child ended or hung between tests: a class fixture failed, or the child crashed
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:].strip().splitlines()
            why = next((f["detail"] for f in fixtures if "setUp" in f["what"]), None)
            if hung_in is not None:
                why = f"not run: no test started within {args.timeout:g} s{_hang_site(log_path, source_file)[0]}"
            why = why or f"not run: the child exited with code {proc.returncode}: {tail[-1] if tail else ''}"
            for test_id in remaining:
                results[test_id] = {"id": test_id, "outcome": "error", "detail": why, "traceback": "\n".join(tail)}
            remaining = []
    return results, fixtures


def report(suite: Suite, classes: dict[str, list[str]], results: dict, fixtures: dict, seconds: float) -> None:
    header = f"{'class':<42} {'tests':>5} " + " ".join(f"{o:>7}" for o in OUTCOMES) + f" {'excl':>5} {'NOT-EXCL':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    total, not_excluded = Counter(), defaultdict(list)
    for cls, ids in classes.items():
        counts = Counter(results[i]["outcome"] for i in ids if i in results)
        failing = [i for i in ids if i in results and results[i]["outcome"] in ("fail", "error", "timeout")]
        excl = [i for i in failing if excluded(suite, i)]
        for i in failing:
            if not excluded(suite, i):
                not_excluded[cls].append(i)
        counts.update(tests=len(ids), excl=len(excl), not_excl=len(failing) - len(excl))
        total.update(counts)
        print(f"{cls:<42} {counts['tests']:>5} " + " ".join(f"{counts[o]:>7}" for o in OUTCOMES)
              + f" {counts['excl']:>5} {counts['not_excl']:>8}")
    print("-" * len(header))
    print(f"{'TOTAL':<42} {total['tests']:>5} " + " ".join(f"{total[o]:>7}" for o in OUTCOMES)
          + f" {total['excl']:>5} {total['not_excl']:>8}")
    print(f"({seconds:.0f} s; 'excl': failing and in the exclusion list; 'NOT-EXCL': failing, not excluded)")
    passing_excluded = [i for i in results if results[i]["outcome"] == "pass" and excluded(suite, i)]
    if passing_excluded:
        print("\nExcluded but passing (the test may exercise only the standard library, or the exclusion may go):")
        for i in passing_excluded:
            print(f"  {i}")
    skips = defaultdict(list)
    for i, r in results.items():
        if r["outcome"] == "skip":
            skips[r["detail"]].append(i)
    if skips:
        print("\nSkipped, by reason:")
        for reason, ids in sorted(skips.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(ids):>3}  {reason}: {', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}")
    class_fixtures = {cls: fx for cls, fx in fixtures.items() if fx}
    if class_fixtures:
        print("\nClass and module fixture errors:")
        for cls, fx in class_fixtures.items():
            for f in fx:
                print(f"  {cls}: {f['what'].split(' ')[0]}: {f['detail']}")
    print("\nFailing, not excluded:")
    for cls, ids in not_excluded.items():
        print(f"  {cls}")
        for i in ids:
            r = results[i]
            print(f"    {i.split('.', 1)[1]}  [{r['outcome']}] {r['detail']}")


def main(suite: Suite) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="*", help="class names or fnmatch patterns (default: all)")
    parser.add_argument("--by-value", action="store_true", help="pickle the test module's classes by value")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a test may stay silent (60)")
    parser.add_argument("--source", help="path of the CPython test file (default: the interpreter's)")
    parser.add_argument("--skip-excluded", action="store_true", help="do not run the excluded tests")
    parser.add_argument("--json", help="write every result, with its traceback, to this file")
    parser.add_argument("--list", action="store_true", help="list the classes and their test counts")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(suite, args)

    workdir = tempfile.mkdtemp(prefix=f"{suite.name}-")
    try:
        with open(suite.source(args.source), encoding="utf-8") as f:
            source = suite.rewrite(f.read())
        with open(os.path.join(workdir, suite.name + ".py"), "w", encoding="utf-8") as f:
            f.write(source)
        classes = test_ids(suite, load(suite, workdir))
        if args.classes:
            classes = {c: ids for c, ids in classes.items() if any(fnmatch.fnmatchcase(c, p) for p in args.classes)}
        if args.list:
            for cls, ids in classes.items():
                print(f"{cls:<42} {len(ids):>4}")
            return
        env = dict(os.environ, TMPDIR=os.path.join(workdir, "tmp"), PYTHONPATH=HERE)
        os.makedirs(env["TMPDIR"])
        results, fixtures, started = {}, {}, time.monotonic()
        for cls, ids in classes.items():
            run = [i for i in ids if not (args.skip_excluded and excluded(suite, i))]
            for i in set(ids) - set(run):
                results[i] = {"id": i, "outcome": "skip", "detail": "excluded", "traceback": ""}
            t0 = time.monotonic()
            got, fixtures[cls] = run_class(suite, args, run, workdir, env) if run else ({}, [])
            results.update(got)
            counts = Counter(r["outcome"] for i, r in results.items() if i in ids)
            print(f"{cls}: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o])
                  + f" ({time.monotonic() - t0:.0f} s)", flush=True)
        report(suite, classes, results, fixtures, time.monotonic() - started)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"by_value": args.by_value, "results": results, "fixtures": fixtures}, f, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
