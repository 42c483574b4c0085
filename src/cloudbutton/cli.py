"""The ``cloudbutton`` command.

``cloudbutton hello`` runs a tiny job on the configured backend and says where it ran and how long
it took; ``cloudbutton config show`` prints the resolved configuration and where each value came
from; ``cloudbutton --version``. Exit codes: 0 success, 1 a cloudbutton error (one line on stderr,
no traceback), 2 a usage error, 130 interrupted with Ctrl-C.
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
    from .executor import FunctionExecutor

    n = args.calls
    t0 = time.perf_counter()
    with FunctionExecutor(backend=args.backend, max_workers=args.workers) as fexec:
        t_start = time.perf_counter() - t0
        source = fexec.config.sources.get("backend", "default")
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
