"""``latbench search``: ProxylessNAS search with a latency predictor (same as ``python -m search.run``)."""
from __future__ import annotations

import argparse

from search.run import build_parser, result_line
from search.run import run as run_search


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", parents=[build_parser(add_help=False, verbose=False)],
                       help="ProxylessNAS search with a latency predictor (writes OUT/arch.json)",
                       description="Train a path-binarized supernet on Fashion-MNIST (or --data) and update its "
                                   "architecture parameters with the predictor's latency in the objective; "
                                   "writes the derived architecture, log.csv, checkpoint.pt and summary.json.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(result_line(args, run_search(args)))
    return 0
