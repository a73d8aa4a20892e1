"""The whole pipeline on one device, as the README's first command runs it (``latbench demo``).

profile the space → fit LUT and xgboost predictors → evaluate them on measured networks → a short
ProxylessNAS search with the LUT → a short retraining of the network it found (its test accuracy)
→ measure that network → HTML report. Everything goes
under one output folder; a second run reuses the artifact cache and the tables (nothing is
re-measured) and retrains only the short search.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latbench.backends.base import get_backend
from latbench.campaign import measure_archs
from latbench.devices import get_device
from latbench.sampling import sample_ops
from latbench.space import Arch, Space
from latbench.tables import ok_rows, read_table, table_path
from predictors import GBDTPredictor, LUTPredictor, load_predictor, save_predictor
from predictors.evaluate import evaluate_predictor, format_metrics, interleave, sample_archs
from search.run import main as search_main
from search.train import main as train_main

log = logging.getLogger(__name__)


def run_demo(out: str | Path = "runs/demo", target: str = "local-cpu", backend: str | None = None,
             resolution: int = 224, n_eval: int = 10, n_calibrate: int = 3, n_sample_ops: int = 40,
             search_epochs: int = 3, search_batches: int = 30, retrain_batches: int = 300,
             cache: str | Path | None = None,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step and return (and write to ``OUT/summary.json``) a summary of each result.

    ``retrain_batches`` weight steps (one epoch) retrain the found network from scratch; 0 skips it."""

    out = Path(out)
    data = out / "data"
    cache = Path(cache) if cache else out / "cache"
    device = get_device(target)
    be = get_backend(backend)
    summary: dict[str, Any] = {"device": device.name, "backend": be.name, "resolution": resolution, "steps": {}}
    space = Space(resolution=resolution)
    t_all = time.perf_counter()
    n_steps = 7 if retrain_batches else 6

    def step(name: str) -> Callable[[dict[str, Any]], None]:
        t0 = time.perf_counter()
        say(f"[{len(summary['steps']) + 1}/{n_steps}] {name} …")

        def done(result: dict[str, Any]) -> None:
            result["seconds"] = round(time.perf_counter() - t0, 1)
            summary["steps"][name] = result
            (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

        return done

    out.mkdir(parents=True, exist_ok=True)
    # 1. profile: the space's ops, random MBConv configs that teach xgboost about unseen shapes, and the
    #    networks the predictors are evaluated on, all in one interleaved campaign (drift hits all alike)
    done = step("profile")
    ops = list(space.distinct_ops())
    eval_archs = sample_archs(space, n_eval, 0)
    cal_archs = sample_archs(space, n_calibrate, 10_000, exclude=[a.key for a in eval_archs]) if n_calibrate else []
    measure_archs(interleave(eval_archs, cal_archs), device, data, be, cache=cache, progress=True,
                  ops=ops + sample_ops(n_sample_ops, 0))
    df = read_table(table_path(data, device.name, be.name))
    good = ok_rows(df)
    table = table_path(data, device.name, be.name)
    in_space = good[good["key"].isin({o.key for o in ops})]
    done({"table": str(table), "ops_ok": int(len(good)), "ops_failed": int(len(df) - len(good)),
          "space_ops": len(ops), "space_ops_ok": int(len(in_space)),
          "sum_space_op_ms": round(float(in_space["median_ms"].sum()), 3)})
    say(f"    {len(good)} ops measured ({len(df) - len(good)} failed) → {table}")

    # 2. predictors
    done = step("fit predictors")
    lut = LUTPredictor().fit(table)
    xgb = GBDTPredictor().fit(table)
    save_predictor(lut, out / "lut.pkl")
    save_predictor(xgb, out / "xgb.pkl")
    done({"lut": str(out / "lut.pkl"), "xgb": str(out / "xgb.pkl")})
    say(f"    {out / 'lut.pkl'}, {out / 'xgb.pkl'}")

    # 3. evaluation on measured whole networks (calibrated on a disjoint sample)
    done = step("evaluate predictors")
    evals = {}
    for name in ("lut", "xgb"):
        pred = load_predictor(out / f"{name}.pkl")
        res = evaluate_predictor(pred, device, n=n_eval, out_dir=data, backend=be.name, calibrate=n_calibrate,
                                 report_dir=out / "eval", name=name)
        save_predictor(pred, out / f"{name}.pkl")  # now with its calibration
        evals[name] = res["metrics"]
        say(f"    {name}: {format_metrics(res['metrics'])}")
    done(evals)

    # 4. search with the calibrated LUT
    done = step("search")

    search_out = out / "search"
    argv = ["--predictor", str(out / "lut.pkl"), "--out", str(search_out), "--epochs", str(search_epochs),
            "--train-batches", str(search_batches),
            # a short search only moves α with a larger architecture lr and a step every batch
            "--arch-lr", "0.05", "--arch-every", "1", "--test-batches", "20"]
    code = search_main(argv)
    if code:
        raise RuntimeError(f"search failed with exit code {code}")
    arch = Arch.load(search_out / "arch.json")
    predicted = float(load_predictor(out / "lut.pkl").predict(arch))
    found = json.loads((search_out / "summary.json").read_text())
    done({"arch": arch.to_dict(), "predicted_ms": predicted, "out": str(search_out),
          "supernet_test_acc": found.get("test_acc")})
    say(f"    found {search_out / 'arch.json'}: predicted {predicted:.2f} ms")

    # 5. retrain the found network (the supernet's accuracy after a short search says little about it)
    if retrain_batches:
        done = step("retrain found network")
        retrain_out = search_out / "retrain"
        code = train_main(["--arch", str(search_out / "arch.json"), "--out", str(retrain_out), "--epochs", "1",
                           "--train-batches", str(retrain_batches), "--val-batches", "10", "--test-batches", "0"])
        if code:
            raise RuntimeError(f"retraining failed with exit code {code}")
        trained = json.loads((retrain_out / "summary.json").read_text())
        done({"test_acc": trained["test_acc"], "out": str(retrain_out), "steps": retrain_batches})
        say(f"    retrained {retrain_batches} steps: test accuracy {trained['test_acc']:.3f} ({trained['data']})")

    # 6. measure the network the search found
    done = step("measure found network")
    row = measure_archs([arch], device, data, be, cache=cache, progress=True)
    measured = float(row["median_ms"].iloc[0]) if len(row) and row["status"].iloc[0] == "ok" else float("nan")
    done({"measured_ms": measured, "predicted_ms": predicted,
          "error_pct": 100 * (predicted - measured) / measured if measured == measured else None})
    say(f"    measured {measured:.2f} ms vs predicted {predicted:.2f} ms")

    # 7. report
    done = step("report")
    try:
        from latbench.report import build_report  # lazy: imports matplotlib

        path = build_report(out / "report.html", data, out, include_help=True, bootstrap=50, adapt=False)
        done({"report": str(path)})
        say(f"    {path}")
    except ImportError as exc:  # pragma: no cover - report module missing
        done({"report": None, "why": str(exc)})
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    say(f"done in {summary['seconds']:.0f} s — summary: {out / 'summary.json'}")
    return summary
