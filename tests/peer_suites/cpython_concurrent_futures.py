"""CPython 3.11's concurrent.futures test suite (``test/test_concurrent_futures.py``), its
ProcessPoolExecutor tests run against ``cloudbutton.concurrent.ServerlessExecutor``; see README.md.

    python tests/peer_suites/cpython_concurrent_futures.py --source /tmp/cpython-tests/test_concurrent_futures.py
"""

import os
import re
import sys
import sysconfig

import suite_runner

# Patterns match "Class.test_name"; each has a one-line reason. They still run unless --skip-excluded.
EXCLUSIONS = {
    "*.test_max_tasks_per_child*": "max_tasks_per_child: workers are shared, not processes of the executor",
    "*.test_max_tasks_early_shutdown": "max_tasks_per_child: workers are shared, not processes of the executor",
    "*ProcessPoolShutdownTest.test_processes_terminate": "counts the private _processes of the executor",
    "*ProcessPoolShutdownTest.test_context_manager_shutdown": "joins the private _processes of the executor",
    "*ProcessPoolShutdownTest.test_del_shutdown": "joins the private threads and queues of the executor",
    "*ProcessPoolShutdownTest.test_shutdown_no_wait": "joins the private threads and queues of the executor",
    "*ProcessPoolShutdownTest.test_interpreter_shutdown": "runs a script that uses the standard library's executor",
    "*ProcessPoolExecutorTest.test_killed_child": "kills one of the private _processes of the executor",
    "*ProcessPoolExecutorTest.test_idle_process_reuse_*": "counts the private _processes of the executor",
    "*ProcessPoolExecutorTest.test_saturation": "counts the private _processes of the executor",
    "*ExecutorDeadlockTest.*": "expects a crashed worker to break the pool; one fails its call only (documented)",
    "*FailingInitializerTest.test_initializer": "polls the private _broken flag of the executor",
}

DEFAULT = os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_concurrent_futures.py")


def source(path):
    path = path or DEFAULT
    if not os.path.isfile(path):
        sys.exit(f"{path} is not there (CPython 3.11's file is not installed with every Python, and 3.12 made it"
                 " a package): pass --source with a copy of Lib/test/test_concurrent_futures.py from CPython's"
                 " 3.11 branch, kept outside the repo (README.md)")
    return path


def rewrite(text):
    text, n = re.subn(r"^from concurrent import futures$", "import cb_futures_shim as futures", text, flags=re.M)
    assert n == 1, "the test module no longer imports 'from concurrent import futures'"
    return suite_runner.rewrite_imports(text, "multiprocessing", "cb_mp_shim")


def keep(class_name):
    """Only the ProcessPoolExecutor classes, once: the thread ones test ThreadPoolExecutor, the fork and
    forkserver ones would run the same ServerlessExecutor again, the others the standard library's Future."""
    return class_name.startswith("ProcessPoolSpawn")


SUITE = suite_runner.Suite("cpython_cf_suite", source, rewrite, EXCLUSIONS, keep)

if __name__ == "__main__":
    suite_runner.main(SUITE)
