"""Sweep the latency weight λ2 and the target latency T of the search; report predicted and
measured latency and accuracy of every derived network.

One weights-only warm-up supernet is trained once and shared; every sweep point continues from
it with its own objective (``paper`` form CE + λ2·E[LAT] for the λ2 points, ``--target-form``
against T for the target points), then the argmax network's latency is predicted (at the
predictor's deployment resolution) and, with ``--measure``, all derived networks are measured on
``--target`` through ``latbench.campaign.measure_archs``. ``--calibrate N`` first measures N
networks (smallest, largest, random) and calibrates the LUT on them, so that predicted and
measured whole-network latency agree and a target T means measured milliseconds.

Goals: measured latency falls monotonically with λ2; with a target T the derived net's measured
latency is within ±10 % of T. Accuracy is the derived network's test accuracy with the
supernet's weights (no retraining).

    python benchmarks/search_latency_sweep.py --predictor lut.pkl --measure --threads 1
    python benchmarks/search_latency_sweep.py --predictor lut.pkl --lambdas "" --targets 231.7,346.7 --measure

Results of the runs behind the report (local-cpu LUT at 224, 2 busy cores) are in the issue's
closing note; measured latency drifts with the machine's load, so compare measured figures of one run.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from latbench.space import Space  # noqa: E402
from search.data import load_dataset  # noqa: E402
from search.trainer import ProxylessSearch, SearchConfig  # noqa: E402

log = logging.getLogger("sweep")


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def measure(archs, device: str, out: Path) -> list[float]:
    """Measured median ms of each arch (NaN where measurement failed)."""
    try:
        from latbench.campaign import measure_archs
    except ImportError as e:
        raise SystemExit(f"--measure needs latbench.campaign.measure_archs ({e})") from None
    df = measure_archs(list(archs), device, out)
    by_key = {r["key"]: (float(r["median_ms"]) if r.get("status", "ok") == "ok" else float("nan"))
              for r in df.to_dict("records")}
    return [by_key.get(a.key, float("nan")) for a in archs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--predictor", default=None,
                   help="LUT .pkl (default: a FLOP-proportional LUT at 224, predicted figures only)")
    p.add_argument("--lambdas", type=floats, default=floats("0,1e-3,3e-3,1e-2,3e-2"),
                   help="λ2 values of the paper form, per ms (comma separated)")
    p.add_argument("--targets", type=floats, default=None,
                   help="target latencies T in ms (default: 20/40/60 %% of the way from the fastest to the "
                        "slowest network)")
    p.add_argument("--target-form", default="add#abs", help="objective for the target points (default add#abs)")
    p.add_argument("--target-lambda", type=float, default=20.0, help="λ of the target form (default 20)")
    p.add_argument("--target-temperature", type=float, default=0.1,
                   help="τ of the latency term for the target points (softmax(α/τ); 1 = E[LAT]; default 0.1)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3, help="total epochs per point, warm-up included")
    p.add_argument("--train-batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch-every", type=int, default=1)
    p.add_argument("--arch-lr", type=float, default=0.05)
    p.add_argument("--test-batches", type=int, default=40)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--measure", action="store_true", help="measure every derived net on --target")
    p.add_argument("--target", default="local-cpu", help="device to measure on")
    p.add_argument("--calibrate", type=int, default=0, help="measure N nets first and calibrate the LUT on them")
    p.add_argument("--out", default="runs/search_sweep")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    from predictors import LUTPredictor, load_predictor

    if args.predictor:
        predictor = load_predictor(args.predictor)
    else:
        from search.latency import flops_latencies

        log.warning("no --predictor: FLOP-proportional latencies (illustration only; nothing to measure against)")
        predictor = LUTPredictor.from_latencies(flops_latencies(Space()), resolution=224, width_mult=1.0)
    dep = predictor.deployment_space()
    calib = None
    if args.calibrate:
        archs = [dep.smallest(), dep.largest()] + [dep.sample(args.seed + i) for i in range(max(0, args.calibrate - 2))]
        archs = archs[:args.calibrate]
        ms = measure(archs, args.target, out / "measure")
        before = [float(predictor.predict(a)) for a in archs]
        predictor.fit_calibration(archs, ms)
        calib = {"archs": [a.key for a in archs], "measured_ms": ms, "predicted_before_ms": before,
                 "predicted_after_ms": [float(predictor.predict(a)) for a in archs]}
        log.info("calibration: measured %s, predicted before %s", [round(m, 1) for m in ms],
                 [round(b, 1) for b in before])

    data = load_dataset(None, args.resolution)
    base = dict(epochs=args.epochs, warmup_epochs=args.warmup_epochs, train_batches=args.train_batches,
                batch_size=args.batch_size, arch_every=args.arch_every, arch_lr=args.arch_lr,
                test_batches=args.test_batches, val_batches=5, resolution=args.resolution, seed=args.seed)
    # Shared warm-up: the weights every point starts from.
    t0 = time.perf_counter()
    warm = ProxylessSearch(SearchConfig(latency_loss="none", **base), predictor, data)
    for _ in range(args.warmup_epochs):
        warm.train_epoch()
    warm_state = copy.deepcopy(warm.state_dict())
    log.info("shared warm-up: %d epochs in %.0f s", args.warmup_epochs, time.perf_counter() - t0)
    lo, hi = warm.latency.bounds()
    targets = args.targets or [round(lo + f * (hi - lo), 1) for f in (0.2, 0.4, 0.6)]

    points = [("lambda2", lam, SearchConfig(latency_loss="paper", lambda2=lam, **base)) for lam in args.lambdas]
    points += [("target", t, SearchConfig(latency_loss=args.target_form, lambda2=args.target_lambda,
                                          target_latency=t, latency_temperature=args.target_temperature, **base))
               for t in targets]
    results = []
    for kind, value, cfg in points:
        t0 = time.perf_counter()
        s = ProxylessSearch(cfg, predictor, data)
        s.load_state_dict(warm_state, check=False)
        s.run()
        arch = s.derived_arch()
        res = {"kind": kind, "value": value, "arch": arch.to_dict(), "key": arch.key,
               "predicted_ms": float(predictor.predict(arch)), "expected_ms": s.expected_latency().item(),
               "test_acc": s.evaluate(data.test, args.test_batches), "entropy": s.net.entropy(),
               "seconds": round(time.perf_counter() - t0, 1)}
        results.append(res)
        log.info("%s=%g: predicted %.2f ms, E[LAT] %.2f ms, test acc %.3f (%.0fs)", kind, value,
                 res["predicted_ms"], res["expected_ms"], res["test_acc"], res["seconds"])
        (out / "sweep.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))

    if args.measure:
        from latbench.space import Arch

        archs = [Arch.from_dict(r["arch"]) for r in results]
        for r, m in zip(results, measure(archs, args.target, out / "measure")):
            r["measured_ms"] = m

    print(f"\nsweep on fashion-mnist {args.resolution}px, latency at {dep.resolution}px "
          f"(bounds {lo:.1f}–{hi:.1f} ms predicted), {args.epochs} epochs x {args.train_batches} batches "
          f"({args.warmup_epochs} shared warm-up)")
    print(f"{'point':<18} {'pred ms':>9} {'E[LAT]':>9} {'meas ms':>9} {'test acc':>9} {'vs T':>8}")
    for r in results:
        meas = r.get("measured_ms")
        vs_t = ""
        if r["kind"] == "target":
            ref = meas if meas is not None else r["predicted_ms"]
            vs_t = f"{100 * (ref - r['value']) / r['value']:+.1f}%"
        print(f"{r['kind'] + '=' + format(r['value'], 'g'):<18} {r['predicted_ms']:9.2f} {r['expected_ms']:9.2f} "
              f"{(f'{meas:9.2f}' if meas is not None else '        -')} {r['test_acc']:9.3f} {vs_t:>8}")

    lam = [r for r in results if r["kind"] == "lambda2"]
    goals = {}
    for col in ("predicted_ms", "measured_ms"):
        vals = [r.get(col) for r in lam]
        if all(v is not None for v in vals) and len(vals) > 1:
            goals[f"{col} non-increasing in lambda2"] = all(b <= a for a, b in zip(vals, vals[1:]))
    for r in results:
        if r["kind"] == "target":
            col = "measured_ms" if "measured_ms" in r else "predicted_ms"
            goals[f"T={r['value']:g}: {col} within 10%"] = abs(r[col] - r["value"]) <= 0.1 * r["value"]
    for name, ok in goals.items():
        print(f"goal {name}: {'PASS' if ok else 'FAIL'}")
    summary = {"args": vars(args), "results": results, "goals": goals, "calibration": calib,
               "seconds": round(time.perf_counter() - t_all, 1)}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    print(f"written {out / 'sweep.json'} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
