"""``latbench train``: retrain a searched network (same as ``python -m search.train``)."""
from __future__ import annotations

import argparse

from search.train import build_parser, result_line
from search.train import run as run_train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", parents=[build_parser(add_help=False, verbose=False)],
                       help="retrain the network a search found (OUT/arch.json); summary.json has its test accuracy",
                       description="Train the architecture of --arch on the search's data from scratch or from the "
                                   "supernet's weights (Nesterov SGD, warm-up + cosine, label smoothing); writes "
                                   "checkpoint.pt, log.csv and summary.json.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(result_line(args, run_train(args)))
    return 0
