"""``latbench predict``: predicted latency of an architecture or an official net config from a saved predictor."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from latbench.errors import LatbenchError
from latbench.netconfig import load_net_config
from latbench.space import Arch
from latbench.spaces import DEFAULT_SPACE, SpaceError, get_space
from predictors import load_predictor
from predictors.data import parse_op


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict an architecture's latency with a saved predictor",
                       description="Load a predictor (.pkl from `latbench fit-predictor`; loading never runs code "
                                   "from the file) and print the predicted latency of an architecture JSON.")
    p.add_argument("--predictor", "-p", required=True, help="predictor .pkl")
    p.add_argument("--arch", "-a", nargs="+", default=[],
                   help="architecture JSON file(s) ({\"resolution\": 224, \"width_mult\": 1.0, \"ops\": [...]})")
    p.add_argument("--net-config", "-n", nargs="+", default=[], metavar="FILE",
                   help="official ProxylessNAS net.config file(s), any per-block widths (the LUT needs every op "
                        "measured; xgb predicts any op)")
    p.add_argument("--space", default=None, metavar="NAME",
                   help="search space of the architectures (see `latbench spaces`; default: the predictor's, which "
                        "its file records); another space than the predictor's is refused")
    p.add_argument("--arch-str", nargs="+", default=[], metavar="STR",
                   help="with a nasbench201 predictor: NAS-Bench-201 architecture(s) by official cell string "
                        "('|nor_conv_3x3~0|+|...|')")
    p.add_argument("--arch-index", nargs="+", default=[], type=int, metavar="N",
                   help="with a nasbench201 predictor: NAS-Bench-201 architecture(s) by official index (0..15624)")
    p.add_argument("--space-arch", nargs="+", default=[], metavar="SPEC",
                   help="architecture(s) of the predictor's space by official string or index (as `measure "
                        "--space-arch`)")
    p.add_argument("--resolution", "-r", type=int, default=None,
                   help="input resolution of --net-config networks (default: the predictor's deployment resolution)")
    p.add_argument("--breakdown", action="store_true", help="also print each op's predicted latency")
    p.add_argument("--json", action="store_true", help='print {"latency_ms": ...} (a list for several archs)')
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="predict ops far outside what an xgb predictor was fitted on (resolution, width, op shapes) "
                        "with a warning, instead of refusing")
    p.set_defaults(func=run)


def run_space(args: argparse.Namespace, pred: object) -> int:
    """Architectures of another space than ProxylessNAS, by official string or index."""
    from predictors.base import BasePredictor

    assert isinstance(pred, BasePredictor)
    space = pred.search_space
    if args.arch or args.net_config or args.resolution:
        raise SpaceError(f"the predictor is for the {space} space: name architectures with --arch-str/--arch-index "
                         f"(--arch, --net-config and --resolution are {DEFAULT_SPACE}'s)")
    specs = [*args.arch_str, *args.arch_index, *args.space_arch]
    archs = [get_space(space).resolve(str(s)) for s in specs]
    results = []
    for a in archs:
        res = {"arch_str": a["arch_str"], "arch_index": int(a["arch_index"]), "latency_ms": float(pred.predict(a))}
        if args.breakdown:
            from latbench.nasbench201 import nb201_arch_ops

            ops = list(dict.fromkeys(nb201_arch_ops(a["arch_str"])))
            counts = [nb201_arch_ops(a["arch_str"]).count(o) for o in ops]
            res["ops"] = [{"key": o.key, "count": n, "latency_ms": float(v)}
                          for o, n, v in zip(ops, counts, pred.predict_ops([parse_op(o, space) for o in ops]))]
            res["offset_ms"] = pred.offset_
        results.append(res)
    return _print(args, results, lambda res: f"{res['arch_index']} {res['arch_str']}")


def _print(args: argparse.Namespace, results: list[dict], label: Callable[[dict], str]) -> int:
    """The predictions as JSON (one object for one network without --breakdown), or a line per network
    (``label`` names it) after its per-op breakdown."""
    if args.json:
        out = results[0] if len(results) == 1 else results
        if len(results) == 1 and not args.breakdown:
            out = {"latency_ms": results[0]["latency_ms"]}
        print(json.dumps(out, indent=None if not args.breakdown else 1))
        return 0
    for res in results:
        if args.breakdown:
            for o in res["ops"]:
                count = f" × {o['count']:<2d} " if "count" in o else "  "
                print(f"  {o['latency_ms']:10.4f} ms{count}{o['key']}")
            if res["offset_ms"]:
                print(f"  {res['offset_ms']:10.4f} ms  calibration offset")
        print(f"{res['latency_ms']:.4f} ms  {label(res)}")
    return 0


def run(args: argparse.Namespace) -> int:
    space_archs = args.arch_str or args.arch_index or args.space_arch
    if not args.arch and not args.net_config and not space_archs:
        raise LatbenchError("give --arch FILE and/or --net-config FILE (or, for another space, --arch-str STR / "
                            "--arch-index N)")
    pred = load_predictor(args.predictor)
    want = get_space(args.space).name if args.space else None
    if want and want != pred.search_space:
        raise SpaceError(f"{args.predictor} is a {pred.search_space} predictor, not a {want} one; fit one on {want} "
                         f"tables (latbench fit-predictor --space {want})")
    if pred.search_space != DEFAULT_SPACE:
        return run_space(args, pred)
    if space_archs:
        raise SpaceError(f"{args.predictor} is a {DEFAULT_SPACE} predictor; --arch-str/--arch-index/--space-arch "
                         f"name architectures of another space (give --arch FILE, or a predictor of that space)")
    resolution = args.resolution or pred.deployment_space().resolution
    items = [("arch", path, Arch.load(path)) for path in args.arch]
    items += [("net_config", path, load_net_config(path, resolution)) for path in args.net_config]
    if args.allow_extrapolation:
        for p in (pred, getattr(pred, "fallback", None)):
            if p is not None and "allow_extrapolation" in p.get_params(deep=False):
                p.set_params(allow_extrapolation=True)
    results = []
    for field, path, net in items:
        ops = net.op_specs
        latency = pred.predict(net) if isinstance(net, Arch) else pred.predict_network(ops)
        res = {field: path, "latency_ms": float(latency)}
        if args.breakdown:
            res["ops"] = [{"key": o.key, "latency_ms": float(v)} for o, v in zip(ops, pred.predict_ops(ops))]
            res["offset_ms"] = pred.offset_
        results.append(res)
    return _print(args, results, lambda res: str(res.get("arch") or res.get("net_config")))
