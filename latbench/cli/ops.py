"""``latbench ops``: the distinct op keys of the space, one per line."""
from __future__ import annotations

import argparse
import json

from latbench.features import op_features
from latbench.space import Space
from latbench.spaces import DEFAULT_SPACE, check_skeleton_args, get_space


def add_space_name_arg(p: argparse.ArgumentParser) -> None:
    """--space NAME (see `latbench spaces`)."""
    p.add_argument("--space", default=DEFAULT_SPACE, metavar="NAME",
                   help=f"search space (see `latbench spaces`; default {DEFAULT_SPACE})")


def add_space_args(p: argparse.ArgumentParser) -> None:
    """--resolution/--width options shared by commands that build a space."""
    p.add_argument("--resolution", "-r", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--width", "-w", type=float, default=1.0, dest="width_mult",
                   help="width multiplier (default 1.0)")
    p.add_argument("--classes", type=int, default=1000, dest="n_classes", help="classifier outputs (default 1000)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ops", help="list the space's distinct op keys",
                       description="Print the distinct op keys of the space, one per line: for ProxylessNAS (the "
                                   "default) the fixed layers and every candidate MBConv in the official "
                                   "latency-table key format; for nasbench201 the stem, each cell op per stage, "
                                   "the reduction blocks and the head (--json adds NAS-Bench-201 FLOPs/params).")
    add_space_args(p)
    add_space_name_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of {key, features} instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = get_space(args.space)
    check_skeleton_args(spec, args.resolution, args.width_mult, args.n_classes)
    if spec.name != DEFAULT_SPACE:  # other spaces have a fixed skeleton: --resolution/--width do not apply
        items = spec.ops()
        if args.json:
            print(json.dumps([{"key": k, **f} for k, f in items], indent=1))
        else:
            print("\n".join(k for k, _ in items))
        return 0
    space = Space(resolution=args.resolution, width_mult=args.width_mult, n_classes=args.n_classes)
    ops = space.distinct_ops()
    if args.json:
        print(json.dumps([{"key": o.key, **op_features(o)} for o in ops], indent=1))
    else:
        print("\n".join(o.key for o in ops))
    return 0
