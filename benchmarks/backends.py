"""Benchmark: per-op latency of the space at 224 under several runtimes on this CPU.

Each backend runs in a process of its own (thread pools of TVM and PyTorch never overlap), with
``TVM_NUM_THREADS`` / ``torch.set_num_threads`` set to ``--threads``:

* ``tvm``          latbench's schedule rules (no tuning)
* ``tvm-untuned``  TVM's default pipeline
* ``tvm-tuned``    MetaSchedule with ``--trials`` per op, on every ``--tuned-every``-th op (tuning is slow)
* ``torch``        PyTorch eager, ``inference_mode``

TVM libraries are timed with the Relax VM's time evaluator (repeat 15, min 40 ms per repeat),
PyTorch with the same statistics (median over 15 repeats of >= 40 ms each). Every TVM output is
compared with PyTorch's. Prints a table, the goal ratios (``tvm``/``torch``: median <= 0.5, every
op <= 1.0), tuning time per op and the Spearman rank correlations between backends.

    .venv/bin/python benchmarks/backends.py                      # all 72 ops, ~15-60 min
    .venv/bin/python benchmarks/backends.py --limit 8 --backends tvm,torch
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPEAT, MIN_REPEAT_MS = 15, 40


def time_torch(module, x) -> tuple[float, float]:
    """(median, min) ms of one call over REPEAT repeats of >= MIN_REPEAT_MS each (as TVM's evaluator)."""
    import torch

    with torch.inference_mode():
        for _ in range(3):
            module(x)
        t0 = time.perf_counter()
        module(x)
        single = max(time.perf_counter() - t0, 1e-6)
        number = max(1, int(MIN_REPEAT_MS / 1e3 / single) + 1)
        runs = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            for _ in range(number):
                module(x)
            runs.append((time.perf_counter() - t0) / number * 1e3)
    return statistics.median(runs), min(runs)


def worker(backend: str, keys: list[str], threads: int, trials: int, out: Path) -> None:
    """Build and time every op with one backend; write a JSON list of rows."""
    import torch

    from latbench.modules import build_op_module, example_input
    from latbench.ops import OpSpec

    torch.set_num_threads(threads)
    rows = []
    if backend == "torch":
        for key in keys:
            op = OpSpec.parse(key)
            m, x = build_op_module(op), example_input(op.input_shape, op.key)
            med, best = time_torch(m, x)
            rows.append({"key": key, "backend": backend, "median_ms": med, "min_ms": best})
            print(f"  torch {rows[-1]['median_ms']:.3f} ms  {key}", flush=True)
    else:
        import numpy as np
        import tvm
        from tvm import relax

        from latbench.backends.base import get_backend
        from latbench.devices import get_device

        params = {"trials_per_op": trials} if backend == "tvm-tuned" else {}
        be = get_backend(backend, **params)
        device = get_device("local-cpu")
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-"))
        for i, key in enumerate(keys):
            op = OpSpec.parse(key)
            m, x = build_op_module(op), example_input(op.input_shape, op.key)
            lib = tmp / f"op{i}.so"
            t0 = time.perf_counter()
            try:
                notes = be.build(m, x, device, lib)
            except Exception as exc:  # noqa: BLE001 - record and go on
                rows.append({"key": key, "backend": backend, "error": str(exc).splitlines()[-1][:200]})
                print(f"  {backend} FAILED {key}: {rows[-1]['error']}", flush=True)
                continue
            build_s = time.perf_counter() - t0
            dev = tvm.cpu()
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
            xt = tvm.runtime.tensor(x.numpy(), dev)
            with torch.no_grad():
                err = float(np.abs(vm["main"](xt).numpy() - m(x).numpy()).max())
            r = vm.time_evaluator("main", dev, number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)(xt)
            rows.append({"key": key, "backend": backend, "median_ms": r.median * 1e3,
                         "min_ms": min(r.results) * 1e3, "build_s": build_s,
                         "tune_s": notes.get("tune_s", 0.0), "max_abs_err": err,
                         "fallbacks": len(notes.get("fallbacks", []))})
            print(f"  {backend} {rows[-1]['median_ms']:.3f} ms (build {build_s:.1f}s, err {err:.1e})  {key}",
                  flush=True)
    out.write_text(json.dumps(rows))


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--backends", default="tvm,tvm-untuned,torch,tvm-tuned")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=16, help="tvm-tuned trial budget per op")
    ap.add_argument("--tuned-every", type=int, default=6, help="tune every N-th op only (tuning is slow)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N ops")
    ap.add_argument("--every", type=int, default=1, help="only every N-th op (a quick spread over the space)")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.keys.read_text()), args.threads, args.trials, args.out)
        return 0

    from latbench.space import Space

    keys = [op.key for op in Space(args.resolution, args.width_mult).distinct_ops()][:: args.every][: args.limit]
    backends = [b for b in args.backends.split(",") if b]
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rows: dict[str, dict[str, dict]] = {}
    wall: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as td:
        for be in backends:
            sel = keys[:: args.tuned_every] if be == "tvm-tuned" else keys
            kf, of = Path(td) / f"{be}.keys.json", Path(td) / f"{be}.out.json"
            kf.write_text(json.dumps(sel))
            print(f"[{be}] {len(sel)} ops, {args.threads} threads", flush=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--worker", be, "--keys", str(kf), "--out", str(of),
                            "--threads", str(args.threads), "--trials", str(args.trials)], env=env, check=True)
            wall[be] = time.perf_counter() - t0
            rows[be] = {r["key"]: r for r in json.loads(of.read_text())}
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall, "args": vars(args)}, default=str, indent=1))
    report(keys, backends, rows, wall)
    return 0


def report(keys: list[str], backends: list[str], rows: dict, wall: dict) -> None:
    """Print the per-op table, goal ratios, tuning times and rank correlations."""
    def ms(be: str, key: str) -> float | None:
        r = rows.get(be, {}).get(key)
        return r.get("median_ms") if r else None

    print("\nmedian latency per op (ms), threads as above")
    print(f"{'op':<82}" + "".join(f"{b:>13}" for b in backends)
          + ("  tvm/torch" if {"tvm", "torch"} <= set(backends) else ""))
    ratios = []
    for k in keys:
        cells = "".join(f"{ms(b, k):>13.3f}" if ms(b, k) is not None else f"{'-':>13}" for b in backends)
        extra = ""
        if ms("tvm", k) is not None and ms("torch", k):
            ratios.append(ms("tvm", k) / ms("torch", k))
            extra = f"  {ratios[-1]:9.2f}"
        print(f"{k:<82}{cells}{extra}")
    for b in backends:
        vals = [ms(b, k) for k in keys if ms(b, k) is not None]
        fails = sum(1 for r in rows.get(b, {}).values() if "error" in r)
        errs = [r.get("max_abs_err", 0.0) for r in rows.get(b, {}).values() if "max_abs_err" in r]
        extra = f", max abs err vs torch {max(errs):.1e}" if errs else ""
        if vals:
            print(f"{b:>12}: {len(vals)} ops, sum {sum(vals):8.2f} ms, median {statistics.median(vals):7.3f} ms, "
                  f"failed {fails}, process wall {wall.get(b, 0):.0f} s{extra}")
    mins = [rows["tvm"][k]["min_ms"] / rows["torch"][k]["min_ms"] for k in keys
            if "min_ms" in rows.get("tvm", {}).get(k, {}) and "min_ms" in rows.get("torch", {}).get(k, {})]
    if mins:
        print(f"\ntvm/torch on the min over repeats (less sensitive to other load): median "
              f"{statistics.median(mins):.2f}, max {max(mins):.2f}")
    if ratios:
        print(f"tvm/torch: median {statistics.median(ratios):.2f} (goal <= 0.5), max {max(ratios):.2f} "
              f"(goal <= 1.0), ops over 1.0: {sum(r > 1.0 for r in ratios)}/{len(ratios)}")
    for base in ("tvm-untuned", "tvm-tuned"):
        common = [k for k in keys if ms("tvm", k) and ms(base, k)]
        if common:
            sp = [ms(base, k) / ms("tvm", k) for k in common]
            print(f"{base}/tvm: median {statistics.median(sp):.2f} over {len(common)} ops")
    tuned = rows.get("tvm-tuned", {})
    if tuned:
        ts = [r["tune_s"] for r in tuned.values() if "tune_s" in r]
        if ts:
            print(f"tvm-tuned tuning time per op: median {statistics.median(ts):.0f} s, max {max(ts):.0f} s, "
                  f"total {sum(ts):.0f} s over {len(ts)} ops")
    print("\nSpearman rank correlation of op latencies (common ops):")
    for i, a in enumerate(backends):
        for b in backends[i + 1:]:
            common = [k for k in keys if ms(a, k) and ms(b, k)]
            if len(common) >= 3:
                rho = spearman([ms(a, k) for k in common], [ms(b, k) for k in common])
                print(f"  {a:>12} vs {b:<12} rho = {rho:.3f}"
                      f"  ({len(common)} ops)")


if __name__ == "__main__":
    raise SystemExit(main())
