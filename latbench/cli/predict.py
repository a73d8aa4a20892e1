"""``latbench predict``: predicted latency of an architecture or an official net config from a saved predictor."""
from __future__ import annotations

import argparse
import json

from latbench.errors import LatbenchError
from latbench.netconfig import load_net_config
from latbench.space import Arch
from predictors import load_predictor


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
    p.add_argument("--resolution", "-r", type=int, default=None,
                   help="input resolution of --net-config networks (default: the predictor's deployment resolution)")
    p.add_argument("--breakdown", action="store_true", help="also print each op's predicted latency")
    p.add_argument("--json", action="store_true", help='print {"latency_ms": ...} (a list for several archs)')
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="predict ops far outside what an xgb predictor was fitted on (resolution, width, op shapes) "
                        "with a warning, instead of refusing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.arch and not args.net_config:
        raise LatbenchError("give --arch FILE and/or --net-config FILE")
    pred = load_predictor(args.predictor)
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
    if args.json:
        out = results[0] if len(results) == 1 else results
        if len(results) == 1 and not args.breakdown:
            out = {"latency_ms": results[0]["latency_ms"]}
        print(json.dumps(out, indent=None if not args.breakdown else 1))
        return 0
    for res in results:
        if args.breakdown:
            for o in res["ops"]:
                print(f"  {o['latency_ms']:10.4f} ms  {o['key']}")
            if res["offset_ms"]:
                print(f"  {res['offset_ms']:10.4f} ms  calibration offset")
        print(f"{res['latency_ms']:.4f} ms  {res.get('arch') or res.get('net_config')}")
    return 0
