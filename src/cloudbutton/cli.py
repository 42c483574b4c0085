"""The ``cloudbutton`` command.

``cloudbutton hello`` runs a tiny job on the configured backend and says where it ran and how long
it took; ``cloudbutton config show`` prints the resolved configuration and where each value came
from; ``cloudbutton state serve`` runs a state server in the foreground (stopped with Ctrl-C or
SIGTERM, exit 0); ``cloudbutton storage ls|put|get|rm|cat`` works on objects at any fsspec URL;
``cloudbutton --version``. Exit codes: 0 success, 1 a cloudbutton error (one line on stderr,
no traceback), 2 a usage error, 130 interrupted with Ctrl-C, 141 ``storage cat`` into a closed pipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import __version__
from .errors import CloudbuttonError

PROG = "cloudbutton"


def _hello_call(i: int) -> int:
    """The function `cloudbutton hello` runs: cheap, and its result is easy to check."""
    return i * i


def _positive(kind: type, what: str):
    """An argparse type: ``kind`` parsed from text, greater than 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


_positive_int = _positive(int, "an integer")
_positive_float = _positive(float, "a number")


def _seconds(t: float) -> str:
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def _cmd_hello(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .executor import FunctionExecutor

    n = args.calls
    t0 = time.perf_counter()
    # the flags are a layer of their own, named in messages as such ("--backend"), not "keyword argument"
    config = resolve_config().with_overrides("--backend", backend=args.backend)
    config = config.with_overrides("--workers", max_workers=args.workers)
    with FunctionExecutor(config=config) as fexec:
        t_start = time.perf_counter() - t0
        source = config.sources.get("backend", "default")
        print(f"cloudbutton {__version__}: hello on backend {fexec.config.backend!r} (set by: {source}), "
              f"{fexec.backend.workers} worker{'s' if fexec.backend.workers != 1 else ''}")
        print(f"  backend ready      {_seconds(t_start)}")
        rounds = []
        for label in ("first map", "second map"):
            t = time.perf_counter()
            futures = fexec.map(_hello_call, range(n))
            results = fexec.get_result(futures, timeout=args.timeout)
            elapsed = time.perf_counter() - t
            if results != [i * i for i in range(n)]:
                raise CloudbuttonError(f"hello: the {label} returned wrong results")
            cold = sum(bool(f.stats.get("cold_start")) for f in futures)
            rounds.append(futures)
            print(f"  {label:<18} {n} calls in {_seconds(elapsed)}  ({cold} cold starts, {n - cold} warm)")
        workers = sorted({str(f.stats.get("worker_id")) for fs in rounds for f in fs})
        print(f"  total              {_seconds(time.perf_counter() - t0)}")
        print(f"ran on {len(workers)} worker{'s' if len(workers) != 1 else ''}: {', '.join(workers)}")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from .config import resolve_config

    print(resolve_config().show())
    return 0


def _port(text: str) -> int:
    """An argparse type: a TCP port number, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _cmd_state_serve(args: argparse.Namespace) -> int:
    from .state.server import serve

    if args.appendonly and not args.dir:
        print(f"usage: {PROG} state serve ...\n{PROG} state serve: error: --appendonly needs --dir", file=sys.stderr)
        return 2
    return serve(socket_path=args.socket, port=args.port, data_dir=args.dir, appendonly=args.appendonly)


def _add_state_commands(commands) -> None:
    state = commands.add_parser("state", help="run a state server", description="The shared-state server.")
    state_commands = state.add_subparsers(dest="state_command", metavar="COMMAND", required=True)
    serve = state_commands.add_parser(
        "serve",
        help="run a state server in the foreground for several processes",
        description="Run a state server (Valkey) in the foreground until Ctrl-C or SIGTERM and print its URL: "
        "point processes at it with CLOUDBUTTON_STATE_URL=URL. It listens on a unix socket accessible to "
        "this user only (default: one in a private temporary directory), or with --port on 127.0.0.1 with a "
        "random password (part of the URL).",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="listen on this unix socket")
    where.add_argument("--port", metavar="N", type=_port, help="listen on 127.0.0.1:N instead of a unix socket")
    serve.add_argument("--dir", metavar="DIR",
                       help="keep the data in DIR (snapshots on stop and periodically; reloaded on restart); "
                       "default: memory only")
    serve.add_argument("--appendonly", action="store_true",
                       help="with --dir: log every write to DIR and fsync it before acknowledging it, so a crash "
                       "of the server loses no acknowledged write")
    serve.set_defaults(func=_cmd_state_serve)


def _each(urls: Sequence[str], action) -> int:
    """``action(url)`` for every URL, as ``rm a b`` does: a failure is reported on its own line and the
    others still run; the exit code is 1 if any failed."""
    status = 0
    for url in urls:
        try:
            action(url)
        except CloudbuttonError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            status = 1
    return status


def _cmd_storage_ls(args: argparse.Namespace) -> int:
    from .storage import default_storage_url, ls, resolve_url

    def show(ref: str) -> None:
        for entry in ls(resolve_url(ref), recursive=args.recursive):
            if args.long:
                size = "" if entry["type"] == "directory" else entry["size"]
                print(f"{size:>12}  {entry['url']}")
            else:
                print(entry["url"])

    return _each(args.urls or [default_storage_url().rstrip("/") + "/"], show)


def _cmd_storage_put(args: argparse.Namespace) -> int:
    from .storage import resolve_url, upload

    upload(args.paths, resolve_url(args.url), recursive=args.recursive)
    return 0


def _cmd_storage_get(args: argparse.Namespace) -> int:
    from .storage import download, resolve_url

    download([resolve_url(ref) for ref in args.urls], args.path, recursive=args.recursive)
    return 0


def _cmd_storage_rm(args: argparse.Namespace) -> int:
    from .storage import remove, resolve_url

    return _each(args.urls, lambda ref: remove(resolve_url(ref), recursive=args.recursive))


def _cmd_storage_cat(args: argparse.Namespace) -> int:
    from .storage import is_glob, ls, open_url, resolve_url, storage_errors

    sys.stdout.flush()
    out = sys.stdout.buffer

    def show(ref: str) -> None:
        url = resolve_url(ref)
        for match in [e["url"] for e in ls(url) if e["type"] != "directory"] if is_glob(url) else [url]:
            with open_url(match) as f:
                while True:
                    with storage_errors(match, "read"):
                        chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
            out.flush()

    try:
        return _each(args.urls, show)
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _add_storage_commands(commands) -> None:
    storage = commands.add_parser(
        "storage", help="list, copy, remove and print objects at any storage URL",
        description="Objects at any fsspec URL: s3://bucket/key, gs://..., http(s)://..., file:///path or an "
        "absolute local path; anything else is a key under storage_url, as in map (LOCAL paths of put and get "
        "are local files). Globs (*, ?, [...], **) select several objects.",
    )
    sub = storage.add_subparsers(dest="storage_command", metavar="COMMAND", required=True)
    recursive = {"action": "store_true", "dest": "recursive"}
    ls = sub.add_parser("ls", help="list objects", description="List the objects at each URL: an object, a "
                        "glob's matches or a folder (prefix) one level deep; folders end with /. No URL: "
                        "storage_url.")
    ls.add_argument("-l", dest="long", action="store_true", help="show sizes in bytes")
    ls.add_argument("-r", "--recursive", help="list every object below a folder", **recursive)
    ls.add_argument("urls", metavar="URL", nargs="*")
    ls.set_defaults(func=_cmd_storage_ls)
    put = sub.add_parser("put", help="copy local files to storage", description="Copy local files to URL, "
                         "as cp does: into URL when there are several, URL ends with / or is a folder; else to URL.")
    put.add_argument("-r", "--recursive", help="copy folders and everything in them", **recursive)
    put.add_argument("paths", metavar="LOCAL", nargs="+")
    put.add_argument("url", metavar="URL")
    put.set_defaults(func=_cmd_storage_put)
    get = sub.add_parser("get", help="copy objects to local files", description="Copy objects to LOCAL, as cp "
                         "does: into LOCAL when there are several, LOCAL ends with / or is a folder; else to LOCAL.")
    get.add_argument("-r", "--recursive", help="copy folders (prefixes) and every object below them", **recursive)
    get.add_argument("urls", metavar="URL", nargs="+")
    get.add_argument("path", metavar="LOCAL")
    get.set_defaults(func=_cmd_storage_get)
    rm = sub.add_parser("rm", help="delete objects", description="Delete the objects at each URL (globs too).")
    rm.add_argument("-r", "--recursive", help="delete folders (prefixes) and every object below them", **recursive)
    rm.add_argument("urls", metavar="URL", nargs="+")
    rm.set_defaults(func=_cmd_storage_rm)
    cat = sub.add_parser("cat", help="print objects", description="Write the bytes of each object to stdout.")
    cat.add_argument("urls", metavar="URL", nargs="+")
    cat.set_defaults(func=_cmd_storage_cat)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Python functions in parallel on local cores, a Dask cluster or serverless containers.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    hello = commands.add_parser(
        "hello",
        help="run a tiny job on the configured backend; print where it ran and how long it took",
        description="Run a tiny job (two maps of N calls, cold then warm) on the configured backend "
        "and print the backend, the workers that ran it and how long it took.",
    )
    hello.add_argument("--backend", metavar="NAME", help="backend to use (default: from the configuration)")
    hello.add_argument("--workers", metavar="N", type=_positive_int,
                       help="max_workers (default: from the configuration, else the backend's default)")
    hello.add_argument("--calls", metavar="N", type=_positive_int, default=100, help="calls per map (default: 100)")
    hello.add_argument("--timeout", metavar="SECONDS", type=_positive_float, default=120.0,
                       help="give up waiting for a map after this long (default: 120)")
    hello.set_defaults(func=_cmd_hello)

    config = commands.add_parser("config", help="show the configuration",
                                 description="Inspect the configuration.")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = config_commands.add_parser(
        "show",
        help="print the resolved configuration and where each value came from",
        description="Print the resolved configuration, one key per line, with where each value came from "
        "(keyword argument > CLOUDBUTTON_* environment > ./cloudbutton.toml > "
        "~/.config/cloudbutton/config.toml > default).",
    )
    show.set_defaults(func=_cmd_config_show)
    _add_storage_commands(commands)
    _add_state_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (argparse exits with 2 on usage errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2): return the code instead
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args)
    except CloudbuttonError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
