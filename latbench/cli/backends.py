"""``latbench backends``: the registered backends."""
from __future__ import annotations

import argparse

from latbench.backends.base import DEFAULT_BACKEND, available_backends


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backends", help="list backends (how ops are compiled and timed)",
                       description="List the registered backends usable with --backend.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, desc in available_backends().items():
        mark = "*" if name == DEFAULT_BACKEND else " "
        print(f"{mark} {name:<14} {desc}")
    return 0
