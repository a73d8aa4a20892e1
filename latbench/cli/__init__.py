"""``latbench``: the command line, a thin shell over the Python API.

Each command is a module of this package with ``register(subparsers)`` (adds its subparser and
sets ``func``); :data:`COMMANDS` lists them. Errors the user can fix (:class:`LatbenchError`)
print one line and exit non-zero; ``-v`` adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback

from latbench.errors import LatbenchError

COMMANDS: tuple[str, ...] = (
    "spaces", "ops", "measure", "compile", "devices", "backends", "table",
    "fit_predictor", "predict", "evaluate",
    "monotonicity", "adapt", "report",
    "tracker", "device", "bundle",
    "search", "train", "demo",
)

log = logging.getLogger("latbench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latbench",
        description="Measure the latency of ProxylessNAS search-space ops on real hardware with Apache TVM, "
                    "fit latency predictors, and search for fast networks.",
        epilog="Run `latbench COMMAND --help` for a command's options. Quick start: `latbench demo`.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v: info and tracebacks, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"latbench.cli.{name}").register(sub)
    for sp in sub.choices.values():  # -v after the command works too (`latbench measure -v`)
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging (-v: info and tracebacks, -vv: debug)")
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("matplotlib", "PIL", "urllib3", "paramiko"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


#: Exit code after SIGTERM (128 + 15, as a shell reports it).
EXIT_SIGTERM = 143


class _Terminated:
    """SIGTERM behaves like Ctrl-C: it raises KeyboardInterrupt in the main thread (every command already ends
    an interrupt with one line and keeps what it finished); the exit code is then 143, not 130."""

    received = False

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        if cls.received:  # a second SIGTERM while winding down: the first one is being handled
            return
        cls.received = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    return EXIT_SIGTERM if _Terminated.received and code != 0 else code


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _Terminated.received = False
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _Terminated.handler)  # a host program's own handler stays
    try:
        return int(args.func(args) or 0)
    except LatbenchError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"latbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"latbench: {'terminated' if _Terminated.received else 'interrupted'}; every result taken so far is "
              "saved — rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
