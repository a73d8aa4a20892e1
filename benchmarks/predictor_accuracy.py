"""Whole-network accuracy and speed of the latency predictors on a real device.

Measures (resumable, cached) the space's ops plus S random MBConv configs and N random architectures
end to end plus K others for calibration, all in ONE interleaved campaign (so drift of the machine hits
ops and networks alike), fits a LUT and a GBDT predictor on the op rows, and prints
RMSE / MAPE / within ±5 % / ±10 % / Spearman / Kendall for each predictor, raw and calibrated, the
op-level accuracy of a GBDT that never saw the space's MBConv ops, and prediction throughput.
Goals (issue 12): ≥ 98 % of archs within ±10 %, ≥ 90 % within ±5 %, Spearman ≥ 0.97; ≥ 10,000 archs/s.
The campaign's noise floor (median 95 % CI half-width of the networks) is printed beside them.

    python benchmarks/predictor_accuracy.py --target local-cpu --n 100 --calibrate 10 --out data/bench
    python benchmarks/predictor_accuracy.py --resolution 160 --width 0.75 --n 50 --calibrate 10 --out data/bench160

Rerunning with the same ``--out`` only measures what is missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd


def throughput(pred, archs, repeat: int = 3) -> float:
    """Architectures predicted per second (best of ``repeat`` batch calls, cache warm)."""
    pred.predict(archs[:10])
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        pred.predict(archs)
        best = min(best, time.perf_counter() - t)
    return len(archs) / best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="local-cpu", help="device name or YAML (default local-cpu)")
    ap.add_argument("--backend", default=None, help="backend (default: the tvm default)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width", type=float, default=1.0, help="width multiplier of the space")
    ap.add_argument("--n", type=int, default=200, help="evaluated architectures (default 200)")
    ap.add_argument("--calibrate", type=int, default=10, help="other architectures used for calibration")
    ap.add_argument("--sample", type=int, default=100, help="random MBConv ops added to the GBDT training table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="data/bench", help="table directory (cached, resumable)")
    ap.add_argument("--report", default=None, help="where the JSON/PNG/CSV go (default OUT/<device>/eval)")
    ap.add_argument("--throughput-archs", type=int, default=50_000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from latbench.campaign import measure_jobs
    from latbench.jobs import Job
    from latbench.devices import get_device
    from latbench.sampling import sample_ops
    from latbench.space import Space
    from latbench.tables import ok_rows
    from predictors import GBDTPredictor, LUTPredictor
    from latbench.tables import read_table, table_path
    from predictors.evaluate import accuracy_metrics, interleave, noise_floor, sample_archs, scatter_plot

    device = get_device(args.target)
    space = Space(args.resolution, args.width)
    report = Path(args.report) if args.report else Path(args.out) / device.name / "eval"
    report.mkdir(parents=True, exist_ok=True)

    load_start = os.getloadavg()
    t0 = time.time()
    space_ops = space.distinct_ops()
    extra = sample_ops(args.sample, args.seed, exclude={o.key for o in space_ops}) if args.sample else []
    archs = sample_archs(space, args.n, args.seed)
    cal_archs = sample_archs(space, args.calibrate, args.seed + 10_000, exclude=[a.key for a in archs])
    cal_keys = {a.key for a in cal_archs}
    # One campaign: ops, evaluated and calibration networks in the same interleaved rounds.
    jobs = [Job.network(a) for a in interleave(archs, cal_archs)] + [Job.op(o) for o in space_ops + extra]
    measure_jobs(jobs, device, args.out, args.backend, progress=True)
    be = args.backend or "tvm"
    table = ok_rows(read_table(table_path(args.out, device.name, be, "ops")))
    nets = ok_rows(read_table(table_path(args.out, device.name, be, "archs"))).set_index("key")
    print(f"one campaign: {len(table)} ops ok ({len(space_ops)} of the space + {len(extra)} sampled) and "
          f"{len(nets)} networks, {time.time() - t0:.0f} s")

    lut = LUTPredictor().fit(table, resolution=args.resolution)
    gbdt = GBDTPredictor().fit(table, resolution=args.resolution)
    # A GBDT that never saw the space's MBConv ops: how well does it predict them?
    space_keys = {o.key for o in space_ops if o.kind == "expanded_conv"}
    blind = GBDTPredictor().fit(table[~table["key"].isin(space_keys)], resolution=args.resolution)
    held = table[table["key"].isin(space_keys)]
    blind_m = accuracy_metrics(blind.predict_ops(list(held["key"])), held["median_ms"].to_numpy())

    got = [a for a in interleave(archs, cal_archs) if a.key in nets.index]
    got_ms = nets.loc[[a.key for a in got], "median_ms"].to_numpy(dtype=float)
    floor = noise_floor(nets.loc[[a.key for a in got]].reset_index())
    n_unstable = int(nets.get("unstable", pd.Series(False, index=nets.index)).fillna(False).astype(bool).sum())
    is_cal = np.array([a.key in cal_keys for a in got], dtype=bool)
    archs, measured = [a for a, c in zip(got, is_cal) if not c], got_ms[~is_cal]
    cal_archs, cal_ms = [a for a, c in zip(got, is_cal) if c], got_ms[is_cal]
    print(f"whole networks: {len(archs)} evaluated + {len(cal_archs)} for calibration; noise floor (median CI "
          f"half-width of the networks) ±{floor if floor is not None else float('nan'):.2f} %, {n_unstable} unstable")

    results = {}
    rows = []
    for name, pred in (("lut", lut), ("gbdt", gbdt)):
        raw = np.asarray(pred.predict(archs))
        results[f"{name}-raw"] = accuracy_metrics(raw, measured)
        pred.fit_calibration(cal_archs, cal_ms)
        calp = np.asarray(pred.predict(archs))
        results[f"{name}-calibrated"] = {**accuracy_metrics(calp, measured), "calibration": dict(pred.calibration_)}
        scatter_plot(calp, measured, report / f"bench-{name}-calibrated.png",
                     f"{name} calibrated on {len(cal_archs)} archs, {device.name} r{args.resolution}",
                     results[f"{name}-calibrated"])
        scatter_plot(raw, measured, report / f"bench-{name}-raw.png", f"{name} raw, {device.name}",
                     results[f"{name}-raw"])
        rows.append((name, raw, calp))

    tp_archs = sample_archs(space, args.throughput_archs, args.seed + 20_000)
    tp = {name: throughput(pred, tp_archs) for name, pred in (("lut", lut), ("gbdt", gbdt))}

    pd.DataFrame({"key": [a.key for a in archs], "measured_ms": measured,
                  **{f"{n}_raw_ms": r for n, r, _ in rows}, **{f"{n}_cal_ms": c for n, _, c in rows}}
                 ).to_csv(report / "bench-archs.csv", index=False)
    summary = {"device": device.name, "resolution": args.resolution, "width": args.width, "n": len(archs),
               "noise_floor_pct": floor, "unstable_networks": n_unstable, "timing": device.timing.model_dump()
               if hasattr(device.timing, "model_dump") else {},
               "calibration_archs": len(cal_archs), "metrics": results,
               "gbdt_unseen_space_ops": blind_m, "throughput_archs_per_s": tp,
               "measured_ms_range": [float(measured.min()), float(measured.max())],
               "load_average_start_end": [load_start[0], os.getloadavg()[0]]}
    (report / "bench-summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")

    print(f"\n{device.name}, resolution {args.resolution} width {args.width}, {len(archs)} random architectures "
          f"({measured.min():.2f}–{measured.max():.2f} ms measured); calibration on {len(cal_archs)} others; "
          f"1-min load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs")
    print(f"{'predictor':<18}{'RMSE ms':>9}{'MAPE %':>8}{'±5 %':>7}{'±10 %':>7}{'Spearman':>10}{'Kendall':>9}")
    for name, m in results.items():
        print(f"{name:<18}{m['rmse_ms']:>9.3f}{m['mape_pct']:>8.2f}{m['within_5_pct']:>7.1f}"
              f"{m['within_10_pct']:>7.1f}{m['spearman']:>10.4f}{m['kendall']:>9.4f}")
    print(f"GBDT without the space's MBConv ops, on those {blind_m['n']} ops: MAPE {blind_m['mape_pct']:.1f} %, "
          f"within ±10 % {blind_m['within_10_pct']:.1f} %, Spearman {blind_m['spearman']:.3f}")
    ratio = measured / lut._predict_raw(archs)  # vs the uncalibrated sum of measured op latencies
    print(f"measured / raw-LUT ratio over the campaign: min {ratio.min():.2f}, median {np.median(ratio):.2f}, "
          f"max {ratio.max():.2f} (a drift here is the machine's load changing, not the predictor)")
    print("throughput: " + ", ".join(f"{k} {v:,.0f} archs/s" for k, v in tp.items()) + " (goal ≥ 10,000)")
    print(f"report: {report}/bench-summary.json, bench-*.png, bench-archs.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
