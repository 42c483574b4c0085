"""Calls use their caller's state server: the configured one, else the caller's embedded server —
never a server of their own, which would silently split the state between workers."""

import importlib
import uuid

import pytest

from cloudbutton import FunctionExecutor
from cloudbutton.errors import StateError
from cloudbutton.state import AtomicInt, stop_server
from cloudbutton.state import server as state_server
from cloudbutton.state.server import StateServer


@pytest.fixture
def no_embedded_server():
    stop_server()
    yield
    stop_server()


def bump_by_name(name):
    return AtomicInt(name).increment()


def bump_indirectly(module, name):
    # the function's code does not name the state module: the caller cannot tell that it uses state
    return importlib.import_module(module).AtomicInt(name).increment()


def test_calls_use_the_configured_server_even_on_workers_started_before(no_embedded_server, monkeypatch):
    name = f"hits-{uuid.uuid4().hex}"
    with FunctionExecutor(max_workers=2) as fexec:
        fexec.get_result(fexec.map(abs, range(4)))  # the shared worker pool starts without any state URL
        private = StateServer()
        try:
            monkeypatch.setenv("CLOUDBUTTON_STATE_URL", private.url)
            with FunctionExecutor(max_workers=2) as configured:
                assert sorted(configured.get_result(configured.map(bump_by_name, [name] * 20))) == list(range(1, 21))
            assert AtomicInt(name, url=private.url).get() == 20
            assert state_server.running_url() is None  # nobody started an embedded server
        finally:
            private.stop()


def test_a_function_using_state_starts_the_callers_embedded_server_for_its_calls(no_embedded_server):
    name = f"hits-{uuid.uuid4().hex}"
    with FunctionExecutor(max_workers=2) as fexec:
        assert state_server.running_url() is None
        assert sorted(fexec.get_result(fexec.map(bump_by_name, [name] * 20))) == list(range(1, 21))
        assert state_server.running_url() is not None
        assert AtomicInt(name).get() == 20  # the caller sees the workers' updates: one server


def test_a_call_never_starts_a_server_of_its_own(no_embedded_server):
    with FunctionExecutor(max_workers=2) as fexec:
        with pytest.raises(StateError, match="no state server for this call"):
            fexec.get_result(fexec.call_async(bump_indirectly, ("cloudbutton.state", f"hits-{uuid.uuid4().hex}")))
        assert state_server.running_url() is None
