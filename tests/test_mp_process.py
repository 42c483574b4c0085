"""cloudbutton.multiprocessing.Process and the module-level names, with real workers (after CPython's
_test_multiprocessing.py, _TestProcess)."""

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
from calls import wait_for

from cloudbutton import SerializationError
from cloudbutton import multiprocessing as mp


def write(path, *parts, sep=" "):
    with open(path, "w") as f:
        f.write(sep.join(map(str, parts)))


def report(path, a, b=0):
    """Writes what a Process sees of itself: its args, name, pid and liveness."""
    me = mp.current_process()
    write(path, a + b, me.name, os.getpid(), me.pid, me.is_alive())


def fail():
    raise ValueError("child failed")


def ask_parent(path):
    try:
        mp.parent_process()
    except NotImplementedError as e:
        write(path, e)


def leave(how):
    if how == "exit-none":
        sys.exit()
    if how == "exit-7":
        sys.exit(7)
    if how == "exit-minus-1":
        sys.exit(-1)
    if how == "exit-300":
        sys.exit(300)
    if how == "exit-text":
        sys.exit("goodbye")
    if how == "os-exit":
        os._exit(5)
    if how == "kill-9":
        os.kill(os.getpid(), signal.SIGKILL)


class Writer(mp.Process):
    def __init__(self, path, text):
        super().__init__(name="writer")
        self.path, self.text = path, text

    def run(self):
        write(self.path, self.text, mp.current_process().name)


@pytest.fixture(scope="module", autouse=True)
def two_workers(isolated):
    """Processes run on 2 workers (set in ./cloudbutton.toml, read when the first Process starts)."""
    (isolated / "cloudbutton.toml").write_text("max_workers = 2\n")



def test_target_runs_with_its_arguments_in_a_worker(tmp_path):
    out = tmp_path / "out"
    p = mp.Process(target=report, args=(str(out), 1), kwargs={"b": 2}, name="reporter")
    assert p.exitcode is None and not p.is_alive() and p.pid is None
    p.start()
    p.join()
    total, name, pid, own_pid, alive = out.read_text().split()
    assert total == "3" and name == "reporter" and alive == "True"
    assert p.exitcode == 0 and not p.is_alive()
    assert int(pid) == int(own_pid) == p.pid != os.getpid()


def test_default_names_count_up():
    first, second = mp.Process(), mp.Process()
    assert first.name.startswith("Process-") and second.name.startswith("Process-")
    assert int(second.name.split("-")[1]) == int(first.name.split("-")[1]) + 1


def test_an_uncaught_exception_is_exit_code_1_and_its_traceback_is_printed(capsys):
    p = mp.Process(target=fail, name="failing")
    p.start()
    p.join()
    assert p.exitcode == 1
    err = capsys.readouterr().err
    assert err.startswith("Process failing:\n") and "ValueError: child failed" in err and "Traceback" in err


@pytest.mark.parametrize(
    ("how", "code", "printed"),
    [("exit-none", 0, ""), ("exit-7", 7, ""), ("exit-text", 1, "goodbye\n"), ("os-exit", 5, ""),
     ("kill-9", -signal.SIGKILL, ""), ("exit-minus-1", 255, ""), ("exit-300", 44, "")],  # as the OS keeps them
)
def test_exit_codes(how, code, printed, capsys):
    p = mp.Process(target=leave, args=(how,))
    p.start()
    p.join()
    assert p.exitcode == code
    assert capsys.readouterr().err == printed


def test_sentinel_is_ready_when_the_process_ends_and_close_ends_the_object():
    p = mp.Process(target=leave, args=("exit-none",))
    with pytest.raises(ValueError, match="not started"):
        p.sentinel  # noqa: B018
    p.start()
    assert multiprocessing.connection.wait([p.sentinel], timeout=60) == [p.sentinel]
    p.join()
    p.close()
    assert "closed" in repr(p)
    for use in (p.is_alive, p.join, p.start, lambda: p.exitcode, lambda: p.pid, lambda: p.sentinel):
        with pytest.raises(ValueError, match="process object is closed"):
            use()


def meet(barrier):
    barrier.wait()


@pytest.mark.parametrize("started_by", ["one thread", "a thread each"])
def test_more_processes_than_cpus_that_wait_for_each_other_all_run_at_once(embedded_server, started_by):
    n = mp.cpu_count() + 2
    barrier = mp.Barrier(n, timeout=60)  # passes only if all n Processes run at the same time
    processes = [mp.Process(target=meet, args=(barrier,)) for _ in range(n)]
    if started_by == "one thread":
        for p in processes:
            p.start()
    else:  # started at once: they must count each other
        threads = [threading.Thread(target=p.start) for p in processes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for p in processes:
        p.join(timeout=90)
    assert [p.exitcode for p in processes] == [0] * n


def test_a_dead_worker_does_not_stop_other_processes(tmp_path):
    out = tmp_path / "out"
    dying = mp.Process(target=leave, args=("kill-9",))
    living = mp.Process(target=report, args=(str(out), 1))
    dying.start()
    living.start()
    dying.join()
    living.join()
    assert dying.exitcode == -signal.SIGKILL and living.exitcode == 0 and out.read_text().startswith("1 ")


def test_subclass_overriding_run(tmp_path):
    out = tmp_path / "out"
    p = Writer(str(out), "hello")
    p.start()
    p.join()
    assert p.exitcode == 0 and out.read_text() == "hello writer"


def test_join_with_timeout_and_is_alive(gate):
    p = mp.Process(target=wait_for, args=(gate,))
    p.start()
    assert p.is_alive() and p in mp.active_children()
    p.join(timeout=0.1)
    assert p.is_alive() and p.exitcode is None
    with open(gate, "w"):
        pass
    p.join(timeout=30)
    assert not p.is_alive() and p.exitcode == 0 and p not in mp.active_children()


def test_misuse_is_refused_as_in_the_standard_library(tmp_path):
    p = mp.Process(target=report, args=(str(tmp_path / "out"), 0))
    with pytest.raises(AssertionError, match="can only join a started process"):
        p.join()
    p.daemon = True
    assert p.daemon
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    with pytest.raises(AssertionError, match="already started"):
        p.daemon = False
    with pytest.raises(NotImplementedError, match="timeout"):
        p.terminate()
    p.join()
    p.close()
    with pytest.raises(AssertionError, match="group"):
        mp.Process(group=1)


def test_unpicklable_attribute_fails_at_start():
    p = mp.Process(target=wait_for, args=(threading.Lock(),))
    with pytest.raises(SerializationError):
        p.start()


def test_current_process_outside_a_process_is_the_callers():
    assert mp.current_process() is multiprocessing.current_process()


def test_a_plain_script_waits_for_its_processes_at_exit_but_not_for_daemons(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import atexit, os, sys, time
        from cloudbutton import multiprocessing as mp

        def write_later(path):
            time.sleep(0.3)
            with open(path, "w") as f:
                f.write("done")

        def write_much_later(path):
            time.sleep(1.0)
            with open(path, "w") as f:
                f.write("done")

        normal = mp.Process(target=write_later, args=(sys.argv[1] + "/normal",))
        daemon = mp.Process(target=write_much_later, args=(sys.argv[1] + "/daemon",), daemon=True)
        # registered before cloudbutton's own exit handlers, so it runs after them
        atexit.register(lambda: print("exit codes at exit:", normal.exitcode, daemon.exitcode))
        normal.start()
        daemon.start()
        print("main module done")
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"main module done\nexit codes at exit: 0 {-signal.SIGTERM}\n"
    assert (tmp_path / "normal").read_text() == "done"  # joined at exit, as the standard library does
    time.sleep(1.5)
    assert not (tmp_path / "daemon").exists()  # the daemon was stopped at exit, not left to finish


# --- module-level names -------------------------------------------------------------------------


def test_cpu_count_is_the_configured_workers():
    assert mp.cpu_count() == 2


def test_contexts():
    ctx = mp.get_context("spawn")
    assert issubclass(ctx.Process, mp.Process) and ctx.Pool is mp.Pool and ctx.get_start_method() == "spawn"
    assert mp.get_context().get_start_method() in mp.get_all_start_methods()
    with pytest.raises(NotImplementedError, match="'spawn'"):
        mp.get_context("fork")
    with pytest.raises(ValueError, match="cannot find context"):
        mp.get_context("threads")
    with pytest.raises(AttributeError):
        ctx.no_such_name  # noqa: B018


def test_set_start_method_once():
    try:
        mp.set_start_method("spawn", force=True)
        with pytest.raises(RuntimeError, match="already been set"):
            mp.set_start_method("forkserver")
        with pytest.raises(NotImplementedError):
            mp.set_start_method("fork", force=True)
        assert mp.get_start_method() == "spawn"
    finally:
        mp.set_start_method(None, force=True)


def test_what_cannot_be_honoured_says_so():
    from cloudbutton.multiprocessing import shared_memory

    with pytest.raises(NotImplementedError, match="cloudbutton.state"):
        shared_memory.SharedMemory(create=True, size=10)
    with pytest.raises(NotImplementedError, match="storage"):
        shared_memory.ShareableList([1, 2])


def test_logging_parent_process_and_executable(tmp_path):
    assert mp.get_logger() is multiprocessing.get_logger()
    assert mp.get_context().get_logger() is multiprocessing.get_logger()
    logger = mp.log_to_stderr()
    try:
        assert logger is multiprocessing.get_logger() and logger.handlers
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        multiprocessing.util._log_to_stderr = False
    assert mp.parent_process() is None  # as in the standard library's main process
    out = tmp_path / "out"
    p = mp.Process(target=ask_parent, args=(str(out),))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and "Queue or a Pipe" in out.read_text()
    mp.set_executable(sys.executable)  # what the local backend's workers run
    with pytest.raises(NotImplementedError, match="workers cannot be told"):
        mp.set_executable("/opt/other/python3")


def test_standard_names():
    assert mp.TimeoutError is multiprocessing.TimeoutError
    assert mp.ProcessError is multiprocessing.ProcessError
    assert mp.freeze_support() is None


def write_authkey(path):
    with open(path, "wb") as f:
        f.write(bytes(mp.current_process().authkey))


def test_authkey_is_inherited_and_travels_with_the_process(tmp_path):
    p = mp.Process(target=write_authkey, args=(tmp_path / "inherited",))
    assert isinstance(p.authkey, bytes) and p.authkey == multiprocessing.current_process().authkey
    p.start()
    p.join(60)
    assert (tmp_path / "inherited").read_bytes() == multiprocessing.current_process().authkey
    p = mp.Process(target=write_authkey, args=(tmp_path / "set",))
    p.authkey = b"secret"
    assert p.authkey == b"secret"
    p.start()
    p.join(60)
    assert (tmp_path / "set").read_bytes() == b"secret"


class Target:
    def __call__(self, out):
        write(out.path, "called")


class Out:
    def __init__(self, path):
        self.path = path


def test_a_started_process_keeps_no_reference_to_its_target_and_arguments(tmp_path):
    target, argument = Target(), Out(tmp_path / "out")
    refs = weakref.ref(target), weakref.ref(argument)
    p = mp.Process(target=target, args=(argument,))
    del target, argument
    p.start()
    p.join(60)
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert (tmp_path / "out").read_text() == "called"


def report_start_method(conn):
    conn.send(mp.get_start_method())
    conn.close()


def test_contexts_are_one_per_method_and_their_processes_run_with_it():
    spawn, forkserver = mp.get_context("spawn"), mp.get_context("forkserver")
    assert mp.get_context("spawn") is spawn and spawn.get_context() is spawn
    with pytest.raises(ValueError):
        spawn.set_start_method("forkserver")
    with pytest.raises(ValueError) as info:  # also a NotImplementedError that says why
        mp.get_context("fork")
    assert isinstance(info.value, NotImplementedError)
    for ctx in (spawn, forkserver):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=report_start_method, args=(writer,))
        p.start()
        writer.close()
        assert reader.recv() == ctx.get_start_method()
        p.join(60)
    assert type(forkserver.Process()).__name__ == "ForkServerProcess"


def test_sharedctypes_copy_and_synchronized():
    from cloudbutton.multiprocessing import sharedctypes

    original = sharedctypes.Array("i", [1, 2, 3])
    copied = sharedctypes.copy(original)
    original[0] = 9
    assert copied[:] == [1, 2, 3] and original[:] == [9, 2, 3]
    value = sharedctypes.synchronized(sharedctypes.RawValue("d", 1.5))
    with value.get_lock():
        value.value += 1
    assert value.value == 2.5 and sharedctypes.copy(value).value == 2.5
