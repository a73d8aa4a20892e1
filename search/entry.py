"""The command-line entry shared by ``python -m search.run`` and ``python -m search.train`` (no heavy
imports here: ``--help`` and argument errors stay instant)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from latbench.errors import LatbenchError


def entry_point(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict[str, Any]],
                result_line: Callable[[argparse.Namespace, dict[str, Any]], str],
                argv: Sequence[str] | None) -> int:
    """Parse ``argv``, ``run`` and print ``result_line``; a :class:`LatbenchError` is one line on stderr
    (a traceback with ``-v``). Shared by ``search.run`` and ``search.train``. Returns the exit code."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        summary = run(args)
    except LatbenchError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(result_line(args, summary))
    return 0
