import os

import psutil
import pytest

from cloudbutton import FunctionExecutor


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


@pytest.fixture(scope="module")
def fexec(tmp_path_factory):
    """A 2-worker executor that sees no configuration from the machine (modules may define their own)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("CLOUDBUTTON_"):
                mp.delenv(key)
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
        mp.chdir(tmp_path_factory.mktemp("work"))
        with FunctionExecutor(max_workers=2) as executor:
            yield executor
