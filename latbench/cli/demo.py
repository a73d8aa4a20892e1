"""``latbench demo``: the whole pipeline on the local CPU (the README's first command)."""
from __future__ import annotations

import argparse

from latbench.demo import run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline end to end (profile → predict → search → retrain → measure → report)",
        description="Profile the space on the device, fit LUT and xgboost predictors, evaluate them on measured "
                    "networks, run a short ProxylessNAS search with the LUT, retrain and measure the network it "
                    "found and write an HTML report, all under OUT. About 15 minutes on 2 cores the first time; "
                    "a second run reuses the cache and the tables.")
    p.add_argument("--out", "-o", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--target", "-t", default="local-cpu", help="device (default local-cpu)")
    p.add_argument("--backend", "-b", default=None, help="backend (default: the tvm default)")
    p.add_argument("--resolution", type=int, default=224, help="deployment resolution (default 224)")
    p.add_argument("--n-eval", type=int, default=10, help="random networks measured to evaluate predictors")
    p.add_argument("--search-epochs", type=int, default=3, help="search epochs (default 3)")
    p.add_argument("--search-batches", type=int, default=30, help="training batches per search epoch")
    p.add_argument("--retrain-batches", type=int, default=300,
                   help="weight steps retraining the found network from scratch (default 300; 0 = skip)")
    p.add_argument("--cache", default=None, help="artifact cache (default OUT/cache)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, args.target, args.backend, args.resolution, n_eval=args.n_eval,
             search_epochs=args.search_epochs, search_batches=args.search_batches,
             retrain_batches=args.retrain_batches, cache=args.cache)
    return 0
