"""cloudbutton.multiprocessing's Queue, SimpleQueue, JoinableQueue and Pipe, on a real embedded Valkey server
and real worker processes (after CPython's _test_multiprocessing.py)."""

import os
import pickle
import queue
import signal
import sys
import threading
import time
from multiprocessing import BufferTooShort

import pytest
import redis
from mp_store import finished, mp_store, no_orphans, run  # noqa: F401 - fixtures used by this module

from cloudbutton import multiprocessing as mp
from cloudbutton.multiprocessing.connection import Pipe
from cloudbutton.multiprocessing.queues import JoinableQueue, Queue, SimpleQueue
from cloudbutton.state import state_url

# --- functions run in Processes ----------------------------------------------------------------------

def produce(q, producer, count):
    for i in range(count):
        q.put((producer, i), timeout=60)


def consume(q, out, count):
    """Move ``count`` items from ``q`` to ``out``."""
    for _ in range(count):
        out.put(q.get(timeout=60))


def echo(q_in, q_out):
    q_out.put(q_in.get(timeout=60))


def consume_then_die(q, got, count):
    consume(q, got, count)
    os.kill(os.getpid(), signal.SIGKILL)


def work_and_mark_done(q, done, count):
    for _ in range(count):
        done.put(q.get(timeout=60) * 2)
        q.task_done()


def pipe_echo(conn):
    """Echo messages back until the peer closes its end."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        conn.send(("echo", message))
    conn.close()


def send_and_close(conn, messages):
    for m in messages:
        conn.send(m)
    conn.close()


# --- Queue --------------------------------------------------------------------------------------------

def test_queue_behaves_like_the_standard_library():
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait({"two": [2]})
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False, timeout=60)  # the timeout is ignored without blocking
    assert q.get() == 1 and q.get_nowait() == {"two": [2]}
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)  # a negative timeout is 0
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_unbounded_queue_and_maxsize_zero_or_less():
    for q in (Queue(), Queue(0), Queue(-5)):
        for i in range(100):
            q.put_nowait(i)
        assert not q.full() and q.qsize() == 100
        assert [q.get() for _ in range(100)] == list(range(100))


def test_closed_queue_handle_refuses_use_but_copies_work():
    q = Queue()
    q.put("kept")
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    copy = pickle.loads(pickle.dumps(q))
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError, match="is closed"):
        q.put(1)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    assert copy.get(timeout=60) == "kept"


def test_an_unpicklable_item_is_refused_and_the_queue_is_unchanged():
    q = Queue()
    with pytest.raises(TypeError, match="cannot store"):
        q.put(threading.Lock())
    assert q.empty()


def test_a_blocked_get_in_a_process_is_woken_by_a_put():
    q_in, q_out = Queue(), Queue()
    p = run(echo, q_in, q_out)
    with pytest.raises(queue.Empty):
        q_out.get(timeout=0.2)  # the Process is blocked in get: nothing comes back yet
    q_in.put("ping")
    assert q_out.get(timeout=60) == "ping"
    assert finished(p) == [0]


def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing():
    """A producer and a consumer in a Process each, and one of each in a thread here (at most two Processes
    run at once on a 2-CPU machine), through a small bounded queue."""
    q, out = Queue(maxsize=5), Queue()
    processes = [run(produce, q, "process", 150), run(consume, q, out, 150)]
    threads = [threading.Thread(target=produce, args=(q, "thread", 150)),
               threading.Thread(target=consume, args=(q, out, 150))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert finished(*processes) == [0, 0]
    got = [out.get_nowait() for _ in range(300)]
    assert sorted(got) == sorted((name, i) for name in ("process", "thread") for i in range(150))
    assert q.empty() and out.empty()


def test_a_consumer_killed_midway_takes_only_the_items_it_got():
    q, got = Queue(), Queue()
    for i in range(10):
        q.put(i)
    p = run(consume_then_die, q, got, 3)
    assert finished(p) == [-signal.SIGKILL]
    assert [got.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert [q.get_nowait() for _ in range(7)] == list(range(3, 10)) and q.empty()


# --- JoinableQueue ------------------------------------------------------------------------------------

def test_task_done_too_many_times_is_a_value_error():
    q = JoinableQueue()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put(1)
    q.get()
    q.task_done()
    q.join()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_join_returns_once_processes_marked_every_item_done():
    q, done = JoinableQueue(), Queue()
    for i in range(20):
        q.put(i)
    ps = [run(work_and_mark_done, q, done, 10) for _ in range(2)]
    q.join()
    assert sorted(done.get_nowait() for _ in range(20)) == [2 * i for i in range(20)]
    assert finished(*ps) == [0, 0]
    with pytest.raises(ValueError):
        q.task_done()


def test_join_blocks_while_an_item_is_not_done():
    q = JoinableQueue()
    q.put("job")
    assert q.get() == "job"
    box = {}
    thread = threading.Thread(target=lambda: box.update(joined=q.join()))
    thread.start()
    thread.join(0.2)
    assert "joined" not in box
    q.task_done()
    thread.join(60)
    assert box == {"joined": None}


def join_and_mark(q, joined):
    q.join()
    joined.put(os.getpid())


def test_join_wakes_every_joiner_and_takes_no_lock():
    r = redis.Redis.from_url(state_url())
    before = set(r.keys("*mp:*"))
    q, joined = JoinableQueue(), Queue()
    q.put("job")
    names = {key.decode().split("mp:", 1)[1] for key in set(r.keys("*mp:*")) - before}
    names.discard(joined._queue.name[len("mp:"):])
    assert len(names) == 2  # the items and the unfinished count: no lock a dead process could leave held
    joiners = [run(join_and_mark, q, joined) for _ in range(2)]
    assert q.get() == "job"
    q.task_done()
    assert len({joined.get(timeout=60), joined.get(timeout=60)}) == 2
    assert finished(*joiners) == [0, 0]
    q.join()  # nothing unfinished: returns at once


# --- SimpleQueue --------------------------------------------------------------------------------------

def test_simple_queue_between_processes():
    q_in, q_out = SimpleQueue(), SimpleQueue()
    assert q_in.empty()
    p = run(echo_simple, q_in, q_out)
    q_in.put([1, "two"])
    assert q_out.get() == [1, "two"]
    assert finished(p) == [0]
    assert q_in.empty() and q_out.empty()
    q_in.close()
    with pytest.raises(OSError, match="closed"):
        q_in.put(1)
    with pytest.raises(OSError, match="closed"):
        q_in.get()


def echo_simple(q_in, q_out):
    q_out.put(q_in.get())


# --- Pipe ---------------------------------------------------------------------------------------------

def test_duplex_pipe_with_a_process():
    here, there = Pipe()
    p = run(pipe_echo, there)
    for message in (1, "two", {"three": [3]}):
        here.send(message)
        assert here.recv() == ("echo", message)
    here.close()  # the Process's recv raises EOFError: it closes its end and ends
    assert finished(p) == [0]


def test_everything_sent_before_close_is_received_then_eof():
    reader, writer = Pipe(duplex=False)
    p = run(send_and_close, writer, list(range(50)))
    writer.close()  # as with the standard library, the end is open while this process holds it too
    assert [reader.recv() for _ in range(50)] == list(range(50))
    with pytest.raises(EOFError):
        reader.recv()
    with pytest.raises(EOFError):
        reader.recv()
    assert reader.poll() is True  # the end of the pipe is there to read
    assert finished(p) == [0]


def send_one(conn, message):
    conn.send(message)
    conn.close()


def test_the_parent_closing_its_copy_of_the_childs_end_loses_nothing():
    parent_conn, child_conn = Pipe()
    p = run(send_one, child_conn, "from the child")
    child_conn.close()  # the standard library's idiom: the Process has its own copy of this end
    assert parent_conn.recv() == "from the child"
    with pytest.raises(EOFError):  # the child's copy closed its end
        parent_conn.recv()
    assert finished(p) == [0]


def test_one_way_pipe_ends_refuse_the_other_direction():
    reader, writer = Pipe(duplex=False)
    assert reader.readable and not reader.writable and writer.writable and not writer.readable
    with pytest.raises(OSError, match="read-only"):
        reader.send(1)
    with pytest.raises(OSError, match="write-only"):
        writer.recv()


def test_poll_waits_and_keeps_the_message_for_recv():
    a, b = Pipe()
    assert b.poll() is False
    assert b.poll(0.05) is False
    a.send("x")
    assert b.poll(60) is True
    assert b.poll() is True  # still there
    assert b.recv() == "x"
    assert b.poll(0) is False


def test_bytes_messages():
    a, b = Pipe()
    a.send_bytes(b"hello world", 6)
    a.send_bytes(bytearray(b"abcdef"), 1, 3)
    assert b.recv_bytes() == b"world"
    buf = bytearray(8)
    assert b.recv_bytes_into(buf, 2) == 3 and buf == bytearray(b"\0\0bcd\0\0\0")
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 2, 5)
    a.send_bytes(b"toolong")
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(maxlength=3)
    a.send_bytes(b"toolong")
    with pytest.raises(BufferTooShort):
        b.recv_bytes_into(bytearray(3))
    a.send({"obj": 1})
    assert pickle.loads(b.recv_bytes()) == {"obj": 1}  # send/recv_bytes mix as in the standard library


def test_a_closed_end_raises_os_error():
    a, b = Pipe()
    a.close()
    a.close()  # closing twice does nothing
    assert a.closed
    with pytest.raises(OSError, match="closed"):
        a.send(1)
    with pytest.raises(OSError, match="closed"):
        a.recv()
    with pytest.raises(OSError, match="closed"):
        pickle.dumps(a)
    with pytest.raises(EOFError):
        b.recv()


def send_without_closing(conn, message):
    conn.send(message)


def test_a_child_that_ends_without_closing_its_end_closes_it():
    parent_conn, child_conn = Pipe()
    p = run(send_without_closing, child_conn, "last words")
    child_conn.close()
    assert parent_conn.recv() == "last words"
    with pytest.raises(EOFError):  # the child's end was closed when it ended, as a child's exit does
        parent_conn.recv()
    assert finished(p) == [0]


def send_then_hold(conn, message, release):
    conn.send(message)
    release.wait(60)  # still holding its copy of the end


def test_an_end_shared_by_several_processes_ends_with_its_last_holder():
    reader, writer = Pipe(duplex=False)
    release = mp.Event()
    early = run(send_one, writer, "early")
    late = run(send_then_hold, writer, "late", release)
    writer.close()
    assert finished(early) == [0]  # its copy is closed, the other holder's is not: no end of file yet
    assert sorted([reader.recv(), reader.recv()]) == ["early", "late"]
    assert reader.poll(0.2) is False
    release.set()
    assert finished(late) == [0]
    with pytest.raises(EOFError):
        reader.recv()


def close_it(conn):
    conn.close()


def test_a_child_closing_its_copy_of_the_parents_end_does_not_end_the_parents():
    reader, writer = Pipe(duplex=False)
    assert finished(run(close_it, writer)) == [0]
    writer.send("after the child")
    assert reader.recv() == "after the child"
    writer.close()
    with pytest.raises(EOFError):
        reader.recv()


def expect_eof(conn):
    if not conn.poll(10):
        sys.exit(1)
    try:
        conn.recv()
    except EOFError:
        return
    sys.exit(2)


def test_every_holder_of_the_reading_end_sees_the_end_of_file():
    reader, writer = Pipe(duplex=False)
    writer.close()
    with pytest.raises(EOFError):
        reader.recv()
    assert finished(run(expect_eof, reader)) == [0]  # a copy of the reader sees it too


def send_when_set(conn, event, message):
    event.wait(60)
    conn.send(message)


def test_connection_wait_on_pipes_and_process_sentinels():
    from cloudbutton.multiprocessing.connection import wait

    a, b = Pipe()
    go, end = mp.Event(), mp.Event()
    sender = run(send_when_set, b, go, "from the child")
    waiter = run(end.wait, 60)
    start = time.monotonic()
    assert wait([a, waiter.sentinel], 0.3) == []
    assert time.monotonic() - start >= 0.3
    assert wait([a], -1) == []
    go.set()  # the message comes while wait() blocks
    assert wait([a, waiter.sentinel], 60) == [a]
    assert wait([a, waiter.sentinel], 0) == [a]  # held for recv, as by poll()
    assert a.recv() == "from the child"
    end.set()
    assert wait([a, waiter.sentinel], 60) == [waiter.sentinel]
    assert finished(sender, waiter) == [0, 0]
    b.close()
    assert wait([a], 60) == [a]  # the end of the pipe is there to read
    with pytest.raises(EOFError):
        a.recv()


def die_holding(conn):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_child_lets_go_of_its_pipe_ends():
    reader, writer = Pipe(duplex=False)
    p = run(die_holding, writer)
    writer.close()
    assert finished(p) == [-signal.SIGKILL]
    assert reader.poll(30)  # as a killed child's descriptors close
    with pytest.raises(EOFError):
        reader.recv()
