"""`cloudbutton storage ls|put|get|rm|cat`, in-process through `cloudbutton.cli.main` and as a real
`python -m cloudbutton` subprocess, on local files and a real S3 server (moto_server on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import fsspec
import pytest

from cloudbutton import FunctionExecutor, cli

BINARY = bytes(range(256)) * 3  # every byte value, no newline at the end


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    """A folder URL with nothing in it yet: a local directory, or a fresh prefix on a real S3 server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    return f"file://{tmp_path}/store"


@pytest.fixture
def tree(tmp_path):
    """A local folder: a.txt, b.bin (binary), sub/c.txt."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "b.bin").write_bytes(BINARY)
    (root / "sub" / "c.txt").write_bytes(b"gamma\n")
    return root


def cb(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    """`cloudbutton storage ARGV` in-process: (exit code, stdout bytes, stderr text)."""
    code = cli.main(["storage", *argv])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def assert_error(err: str, *fragments: str) -> None:
    assert err.startswith("cloudbutton: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_put_ls_cat_get_rm(base, tree, tmp_path, capsysbinary):
    assert cb(capsysbinary, "put", "-r", str(tree), base) == (0, b"", "")  # base does not exist: it is the copy
    assert lines(cb(capsysbinary, "ls", base)[1]) == [f"{base}/a.txt", f"{base}/b.bin", f"{base}/sub/"]
    code, out, _ = cb(capsysbinary, "ls", "-l", "-r", base)
    assert code == 0 and [line.split() for line in lines(out)] == [
        ["6", f"{base}/a.txt"], [str(len(BINARY)), f"{base}/b.bin"], ["6", f"{base}/sub/c.txt"]
    ]
    assert lines(cb(capsysbinary, "ls", f"{base}/*.txt", f"{base}/sub/c.txt")[1]) == [
        f"{base}/a.txt", f"{base}/sub/c.txt"
    ]
    assert cb(capsysbinary, "cat", f"{base}/a.txt", f"{base}/b.bin", f"{base}/sub/c.txt") == (
        0, b"alpha\n" + BINARY + b"gamma\n", ""
    )
    assert cb(capsysbinary, "cat", f"{base}/*.txt", f"{base}/sub/*.txt") == (0, b"alpha\ngamma\n", "")

    copy = tmp_path / "copy"
    assert cb(capsysbinary, "get", "-r", base, str(copy))[0] == 0  # copy does not exist: it is the copy
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == ["a.txt", "b.bin", "sub/c.txt"]
    assert (copy / "b.bin").read_bytes() == BINARY
    assert cb(capsysbinary, "get", f"{base}/b.bin", str(tmp_path / "one.bin"))[0] == 0
    assert (tmp_path / "one.bin").read_bytes() == BINARY
    assert cb(capsysbinary, "get", f"{base}/*.txt", f"{base}/b.bin", str(tmp_path / "several"))[0] == 0
    assert sorted(os.listdir(tmp_path / "several")) == ["a.txt", "b.bin"]

    assert cb(capsysbinary, "put", str(tree / "a.txt"), str(tree / "sub" / "c.txt"), f"{base}/more/")[0] == 0
    assert lines(cb(capsysbinary, "ls", f"{base}/more")[1]) == [f"{base}/more/a.txt", f"{base}/more/c.txt"]
    assert cb(capsysbinary, "rm", f"{base}/*.txt", f"{base}/b.bin") == (0, b"", "")
    assert cb(capsysbinary, "rm", "-r", f"{base}/sub", f"{base}/more") == (0, b"", "")
    code, out, err = cb(capsysbinary, "ls", base)
    assert out == b"" and (code, err) in [(0, ""), (1, err)]  # an emptied local folder stays; a prefix is gone
    if code:
        assert_error(err, f"no object at {base}")


def test_missing_objects_exit_1_naming_the_url(base, tree, tmp_path, capsysbinary):
    assert cb(capsysbinary, "put", str(tree / "a.txt"), f"{base}/a.txt")[0] == 0
    missing = f"{base}/missing.txt"
    for argv in (["ls", missing], ["ls", f"{base}/*.csv"], ["cat", missing], ["rm", missing],
                 ["get", missing, str(tmp_path / "x")], ["rm", "-r", f"{base}/no/such/prefix"]):
        code, out, err = cb(capsysbinary, *argv)
        assert code == 1 and out == b"", argv
        assert_error(err, argv[-2] if argv[0] == "get" else argv[-1])
    assert not (tmp_path / "x").exists()
    # the other URLs of the command still run; the missing one is reported
    code, out, err = cb(capsysbinary, "cat", missing, f"{base}/a.txt")
    assert (code, out) == (1, b"alpha\n") and err.count("cloudbutton: error:") == 1 and missing in err
    code, _, err = cb(capsysbinary, "put", str(tmp_path / "no-such-file"), f"{base}/z")
    assert code == 1
    assert_error(err, str(tmp_path / "no-such-file"))


def test_folders_need_r_and_nothing_is_lost(base, tree, tmp_path, capsysbinary):
    assert cb(capsysbinary, "put", "-r", str(tree), f"{base}/")[0] == 0  # a trailing / : into it, by name
    folder = f"{base}/tree/sub"
    for argv in (["rm", folder], ["get", folder, str(tmp_path / "out")], ["cat", folder],
                 ["put", str(tree), f"{base}/again"]):
        code, _, err = cb(capsysbinary, *argv)
        assert code == 1, argv
        assert_error(err, "folder")
    assert cb(capsysbinary, "cat", f"{folder}/c.txt")[1] == b"gamma\n"  # still there
    assert not (tmp_path / "out").exists()


def test_missing_bucket_and_refused_credentials(s3, s3_checking_credentials, tmp_path, capsysbinary):
    bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    for argv in (["ls", f"{bucket}/x"], ["cat", f"{bucket}/x"], ["rm", f"{bucket}/x"]):
        code, _, err = cb(capsysbinary, *argv)
        assert code == 1
        assert_error(err, f"{bucket}/x", "bucket does not exist")
    (tmp_path / "f").write_bytes(b"1")
    code, _, err = cb(capsysbinary, "put", str(tmp_path / "f"), f"{bucket}/f")
    assert code == 1
    assert_error(err, f"cannot write {bucket}/f", "the folder or bucket does not exist")
    assert "no object at" not in err
    env = {"AWS_ENDPOINT_URL": s3_checking_credentials, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"}
    r = run_cli("ls", f"{s3.url}/", env=env)
    assert r.returncode == 1 and r.stdout == b""
    assert_error(r.stderr.decode(), "permission denied", f"{s3.url}/", "Access Key Id you provided does not exist")


@pytest.mark.parametrize(
    "argv",
    [["storage"], ["storage", "frob"], ["storage", "put", "only-one"], ["storage", "get", "x"],
     ["storage", "rm"], ["storage", "cat"], ["storage", "ls", "--bogus", "x"]],
)
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage: cloudbutton" in capsys.readouterr().err


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cloudbutton storage ARGV` in a real subprocess (the AWS_* environment reaches moto)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cloudbutton", "storage", *argv],
                          capture_output=True, env=full_env, timeout=120)


def test_subprocess(base, tree):
    r = run_cli("put", str(tree / "b.bin"), f"{base}/b.bin")
    assert (r.returncode, r.stderr) == (0, b"")
    assert fsspec.open(f"{base}/b.bin").open().read() == BINARY
    r = run_cli("cat", f"{base}/b.bin")
    assert (r.returncode, r.stdout) == (0, BINARY)  # binary safe
    r = run_cli("ls", "-l", base)
    assert r.returncode == 0 and r.stdout.decode().split() == [str(len(BINARY)), f"{base}/b.bin"]
    r = run_cli("rm", f"{base}/b.bin", f"{base}/b.bin")  # the second one is gone by then
    assert r.returncode == 1 and r.stdout == b""
    assert_error(r.stderr.decode(), f"no object at {base}/b.bin")


def test_cat_into_a_closed_pipe_stops_quietly(tmp_path):
    (tmp_path / "big.bin").write_bytes(BINARY * 4000)  # 3 MB: more than a pipe holds
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUTTON_")}
    p = subprocess.Popen([sys.executable, "-m", "cloudbutton", "storage", "cat", str(tmp_path / "big.bin")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdout.read(10) == BINARY[:10]
        p.stdout.close()  # as `| head -c 10` does
        err = p.stderr.read()
        assert p.wait(timeout=60) == 141 and err == b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ls_cat_get_over_http(http_server, tmp_path, capsysbinary):
    name = f"h-{uuid.uuid4().hex}.bin"
    with open(os.path.join(http_server.directory, name), "wb") as f:
        f.write(BINARY)
    url = f"{http_server.url}/{name}"
    assert cb(capsysbinary, "ls", "-l", url)[1].decode().split() == [str(len(BINARY)), url]
    assert cb(capsysbinary, "cat", url) == (0, BINARY, "")
    assert cb(capsysbinary, "get", url, str(tmp_path / "copy.bin"))[0] == 0
    assert (tmp_path / "copy.bin").read_bytes() == BINARY
    code, out, err = cb(capsysbinary, "cat", f"{http_server.url}/missing-{name}")
    assert (code, out) == (1, b"")
    assert_error(err, f"no object at {http_server.url}/missing-{name}")


# --- relative keys: one rule with map (a key under storage_url) --------------------------------------


def read_obj(obj):
    return obj.data_stream.read()


@pytest.fixture
def storage_url(base, tmp_path, monkeypatch):
    """``base`` as the configured storage_url; the working directory an empty folder of the test's own."""
    monkeypatch.setenv("CLOUDBUTTON_STORAGE_URL", base)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return base


def test_relative_keys_are_keys_under_storage_url(storage_url, tree, tmp_path, capsysbinary):
    assert cb(capsysbinary, "put", str(tree / "a.txt"), "nc/x.txt") == (0, b"", "")
    assert cb(capsysbinary, "put", "-r", str(tree / "sub"), "nc/") == (0, b"", "")
    assert os.listdir(tmp_path / "work") == []  # nothing under the working directory
    assert lines(cb(capsysbinary, "ls")[1]) == [f"{storage_url}/nc/"]  # no URL: storage_url
    assert lines(cb(capsysbinary, "ls", "-r", "nc")[1]) == [f"{storage_url}/nc/sub/c.txt", f"{storage_url}/nc/x.txt"]
    assert cb(capsysbinary, "cat", "nc/x.txt", "nc/sub/*.txt") == (0, b"alpha\ngamma\n", "")
    assert cb(capsysbinary, "get", "nc/x.txt", str(tmp_path / "x.txt"))[0] == 0
    assert (tmp_path / "x.txt").read_bytes() == b"alpha\n"
    if storage_url.startswith("file://"):  # (local workers may predate the session's S3 environment)
        with FunctionExecutor(max_workers=1) as fexec:  # map reads the same relative key
            assert fexec.get_result(fexec.map(read_obj, "nc/x.txt")) == [b"alpha\n"]
    assert cb(capsysbinary, "rm", "-r", "nc/sub", "nc/x.txt") == (0, b"", "")
    code, out, err = cb(capsysbinary, "ls", "-r")
    assert out == b"" and (code, err) in [(0, ""), (1, err)]
    if code:
        assert_error(err, f"no object at {storage_url}/")


def test_ls_without_url_in_a_subprocess(storage_url, tree):
    r = run_cli("put", str(tree / "b.bin"), "b.bin", env={"CLOUDBUTTON_STORAGE_URL": storage_url})
    assert (r.returncode, r.stderr) == (0, b"")
    r = run_cli("ls", "-l", env={"CLOUDBUTTON_STORAGE_URL": storage_url})
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode().split() == [str(len(BINARY)), f"{storage_url}/b.bin"]


# --- a refused connection names the endpoint and what to check ---------------------------------------


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_http_connection_names_the_endpoint(closed_port, capsysbinary):
    endpoint = f"http://127.0.0.1:{closed_port}"
    for argv in (["cat", f"{endpoint}/x.txt"], ["ls", f"{endpoint}/x.txt"]):
        code, out, err = cb(capsysbinary, *argv)
        assert (code, out) == (1, b"")
        assert_error(err, f"cannot read {endpoint}/x.txt: cannot connect to the endpoint {endpoint} "
                          "(connection refused); check that the server is running and that the URL is right")


def test_a_refused_s3_endpoint_names_it_and_the_setting_to_check(s3, closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    r = run_cli("cat", f"{s3.url}/x", env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"})
    assert (r.returncode, r.stdout) == (1, b"")
    assert_error(r.stderr.decode(), f"cannot read {s3.url}/x: cannot connect to the endpoint {endpoint} "
                                    "(connection refused)", "AWS_ENDPOINT_URL")
