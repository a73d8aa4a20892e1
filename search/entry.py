"""The command-line entry shared by ``python -m search.run`` and ``python -m search.train`` (no heavy
imports here: ``--help`` and argument errors stay instant)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from latbench.errors import LatbenchError


def entry_point(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict[str, Any]],
                result_line: Callable[[argparse.Namespace, dict[str, Any]], str],
                argv: Sequence[str] | None) -> int:
    """Parse ``argv``, ``run`` and print ``result_line``; a :class:`LatbenchError` is one line on stderr
    (a traceback with ``-v``). Shared by ``search.run`` and ``search.train``. Returns the exit code.

    Under torchrun only rank 0 logs at INFO and prints the result line; the other ranks log warnings
    and their own errors, except errors every rank raises alike (``main_rank_only``, e.g. ranks that
    disagree on the arch), which rank 0 alone prints."""
    args = parser.parse_args(argv)
    rank = launched_rank()
    if not logging.getLogger().handlers:
        level = logging.DEBUG if args.verbose else logging.INFO
        logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                            format="%(message)s" if rank == 0 else f"rank {rank}: %(message)s")
    try:
        summary = run(args)
    except LatbenchError as e:
        if args.verbose:
            raise
        if rank == 0 or not getattr(e, "main_rank_only", False):
            print(f"error: {e}" if rank == 0 else f"error: rank {rank}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    if rank == 0:
        print(result_line(args, summary))
    return 0


def launched_rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 otherwise or when unreadable."""
    if "WORLD_SIZE" not in os.environ:
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
