"""``latbench evaluate``: measure random whole networks and score a predictor against them."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from latbench.devices import get_device
from latbench.errors import LatbenchError
from latbench.spaces import SpaceError, get_space
from predictors import load_predictor, save_predictor
from predictors.evaluate import evaluate_predictor, format_metrics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="measure random architectures end to end and score a predictor",
        description="Sample N random architectures at the predictor's deployment resolution, compile and measure "
                    "each whole network on the device (resumable and cached: a rerun measures only what is "
                    "missing; rows go to OUT/<device>/archs-<backend>.parquet), and report RMSE, MAPE, share "
                    "within ±5 %/±10 %, Spearman and Kendall, with a predicted-vs-measured scatter plot (PNG) "
                    "and a per-architecture CSV.")
    p.add_argument("--predictor", "-p", required=True, help="predictor .pkl")
    p.add_argument("--target", "-t", default="local-cpu", help="device name or YAML (default: local-cpu)")
    p.add_argument("--backend", "-b", default=None, help="backend (default: the tvm default)")
    p.add_argument("--n", type=int, default=200, help="number of random architectures (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--space", default=None, metavar="NAME",
                   help="search space to draw the architectures from (see `latbench spaces`; default: the "
                        "predictor's, which its file records; another space than the predictor's is refused)")
    p.add_argument("--calibrate", type=int, default=0, metavar="K",
                   help="first fit the predictor's offset/scale on K other measured architectures")
    p.add_argument("--save-calibrated", default=None, metavar="PKL",
                   help="with --calibrate: save the calibrated predictor here")
    p.add_argument("--out", "-o", default="data", help="table directory (default: data)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="where the CSV/JSON/PNG go (default: OUT/<device>/eval)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-joint", dest="joint", action="store_false",
                   help="do not time the space's ops in the same campaign as the networks (by default they are, "
                        "so drift hits both alike, and a LUT fitted on them is scored too)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.save_calibrated and not args.calibrate:
        raise LatbenchError("--save-calibrated needs --calibrate K")
    pred = load_predictor(args.predictor)
    if args.space and get_space(args.space).name != pred.search_space:
        want = get_space(args.space).name
        raise SpaceError(f"{args.predictor} is a {pred.search_space} predictor, not a {want} one; fit one on {want} "
                         f"tables (latbench fit-predictor --space {want})")
    device = get_device(args.target)
    res = evaluate_predictor(pred, device, args.n, args.out, args.seed, args.backend, args.calibrate,
                             args.report, name=Path(args.predictor).stem, progress=not args.json, joint=args.joint)
    if args.save_calibrated:
        res["saved"] = str(save_predictor(pred, args.save_calibrated))
    if args.json:
        print(json.dumps(res, indent=1, default=float))
        return 0
    if "metrics_raw" in res:
        print(f"uncalibrated: {format_metrics(res['metrics_raw'])}")
        cal = res["calibration"]
        print(f"calibrated on {cal['n']} archs (scale {cal['scale']:.4f}, offset {cal['offset']:.4f} ms): "
              f"{format_metrics(res['metrics'])}")
    else:
        print(format_metrics(res["metrics"]))
    if "metrics_joint_lut" in res:
        print(f"LUT of the ops timed in the same campaign: {format_metrics(res['metrics_joint_lut'])}")
    print(f"results: {res['table']}\nplot:    {res['plot']}")
    return 0
