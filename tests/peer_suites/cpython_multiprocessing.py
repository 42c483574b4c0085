"""CPython 3.11's multiprocessing test suite (``test/_test_multiprocessing.py``) run against
``cloudbutton.multiprocessing``; see README.md.

    python tests/peer_suites/cpython_multiprocessing.py [--classes PATTERN ...] [--by-value] [--json FILE]
"""

import os
import sysconfig

import suite_runner

SHIM = "cb_mp_shim"  # the module that stands for ``multiprocessing`` in the tests (cb_mp_shim.py)

# Tests of things a process that may run on another machine, sharing no memory, file descriptors or
# signals with the caller, cannot have; and tests of the standard library's private machinery.
# Patterns match "Class.test_name"; each has a one-line reason. They still run unless --skip-excluded.
EXCLUSIONS = {
    # signals, file descriptors, fork, memory shared with this host
    "TestInternalDecorators.*": "switches to the 'fork' start method",
    "TestStartMethod.test_get_all": "expects 'fork' among the start methods",
    "TestStartMethod.test_context_check_module_types": "forkserver preloading: there is no forkserver process",
    "TestStartMethod.test_preload_resources": "runs the standard library's forkserver preload script",
    "*TestProcess.test_forkserver_*": "signals sent to the forkserver process",
    "*TestProcess.test_child_fd_inflation": "counts the file descriptors a forkserver child inherits",
    "*TestProcess.test_parent_process*": "a remote call cannot reach the process that started it (documented)",
    "WithProcessesTestCondition.test_wait_result": "the child sends SIGINT to the parent's pid",
    "*TestConnection.test_*fd_transfer": "passes file descriptors between processes",
    "*TestConnection.test_connection": "Connection.fileno(): a Pipe over the state store has none (documented)",
    "*TestPicklingConnections.test_pickling": "sends sockets and connections as file descriptors (reduction)",
    "*TestSharedMemory.*": "shared_memory cannot be shared with processes on other machines (documented)",
    "*TestSharedCTypes.*": "ctypes Structures in shared memory: shared values are of simple ctypes types",
    "TestStartMethod.test_mixed_startmethod": "a Queue of the 'fork' context, which cannot be honoured",
    "TestInvalidHandle.*": "builds a Connection from a raw file descriptor",
    "TestIgnoreEINTR.*": "signals sent to the child process",
    "TestCloseFds.*": "file descriptors inherited by a forked child",
    "TestForkAwareThreadLock.*": "util.ForkAwareThreadLock: behaviour across fork()",
    # connection.Listener/Client: sockets of this host, not mirrored by cloudbutton
    "*TestListener.*": "connection.Listener: a socket of this host; not mirrored",
    "*TestListenerClient.*": "connection.Listener/Client: sockets of this host; not mirrored",
    "OtherTest.*": "the private HMAC handshake of connection.Listener/Client",
    "TestTimeouts.*": "connection.Listener/Client: sockets of this host; not mirrored",
    "TestInvalidFamily.*": "connection.Listener address families; not mirrored",
    # the standard library's own machinery and private attributes
    "SemLockTests.*": "the standard library's C SemLock (POSIX named semaphores of this host)",
    "*TestHeap.*": "multiprocessing.heap: the standard library's private shared-memory arena",
    "*TestQueue.test_queue_feeder_*": "the private feeder thread of the standard library's Queue and its hooks",
    "TestSimpleQueue.test_closed": "checks the private _reader/_writer connections of SimpleQueue",
    "WithProcessesTestCondition.test_notify*": "checks the private _sleeping_count/_woken_count of the Condition",
    "WithProcessesTestPool.test_make_pool": "counts the private _pool of worker processes",
    "*TestPoolWorkerLifetime.test_pool_worker_lifetime": "reads the private _pool of worker processes",
    "WithProcessesTestPool.test_resource_warning": "sets the private _state of the Pool",
    "TestPoolNotLeakOnFailure.*": "mocks the private Process factory of the standard library's Pool",
    "TestResourceTracker.*": "the standard library's resource tracker process and its signals",
    "TestNoForkBomb.*": "runs a script that uses the standard library's multiprocessing",
    "TestNamedResource.*": "runs a script that uses the standard library's multiprocessing",
    "MiscTestCase.test_spawn_sys_executable_none_allows_import": "runs a script with the standard library's spawn",
    # what the harness's stand-in module (cb_mp_shim) changes
    "_TestImportStar.*": "imports the files next to multiprocessing.__file__ (here the harness's stand-in)",
    "MiscTestCase.test__all__": "checks __all__ against the module object's own globals (here the stand-in)",
}


def source(path):
    return path or os.path.join(sysconfig.get_paths()["stdlib"], "test", "_test_multiprocessing.py")


# Appended to the module (so that a worker that imports it by reference sees the same):
# - the concrete classes, made as CPython's test_multiprocessing_spawn makes them when it is imported;
# - _DummyList, the tests' own counter shared with child processes (Barrier tests, Bunch), kept in the
#   standard library's shared-memory heap, which cannot be pickled to a worker: the same counter over
#   cloudbutton's Value instead, so that those tests measure the Barrier rather than the heap.
EPILOGUE = """

class _DummyList:
    def __init__(self):
        self._count = multiprocessing.Value("i", 0)

    def append(self, _):
        with self._count.get_lock():
            self._count.value += 1

    def __len__(self):
        return self._count.value

_made = {"__name__": __name__}
install_tests_in_module_dict(_made, "spawn")
globals().update((k, v) for k, v in _made.items() if k != "__name__")
"""


def rewrite(text):
    return suite_runner.rewrite_imports(text, "multiprocessing", SHIM) + EPILOGUE


def keep(class_name):
    """The 'threads' classes test multiprocessing.dummy (threads in this process), not cloudbutton."""
    return not class_name.startswith("WithThreads")


SUITE = suite_runner.Suite("cpython_mp_suite", source, rewrite, EXCLUSIONS, keep)

if __name__ == "__main__":
    suite_runner.main(SUITE)
