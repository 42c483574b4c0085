import os

import psutil
import pytest


@pytest.fixture(autouse=True)
def _no_cloudbutton_env(monkeypatch):
    """Tests see only the configuration they set themselves."""
    for key in list(os.environ):
        if key.startswith("CLOUDBUTTON_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session", autouse=True)
def _leave_no_processes():
    yield
    from cloudbutton.backends.local import close_pools

    close_pools()
    left = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"the test session left processes running: {alive}"
