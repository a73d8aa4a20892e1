"""``two`` vs ``full_v2`` binarization: architecture-step time and memory, and what a short search finds.

* **step**: one gradient architecture step (forward + backward + Adam on α) of the supernet, in its
  own process per measurement (peak = rise of VmHWM over VmRSS, as ``search_memory.py``), the two
  modes interleaved in a shuffled A/B order, repeated; medians and spread.
* **search**: the same short search (Fashion-MNIST, mul#log with the target at the middle of the
  space's latency range of a FLOP-derived LUT, or ``--predictor``) with each mode and several
  seeds, interleaved: the derived net's predicted latency and distance to the target, its
  validation accuracy with the supernet's weights, α entropy, and the search's seconds.

    python benchmarks/search_binarize.py                       # width 0.35, 28 px, 3 seeds
    python benchmarks/search_binarize.py --predictor runs/demo/lut.pkl --width 1.0 --seeds 2
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("two", "full_v2")


def step_child(mode: str, batch: int, resolution: int, width: float, repeats: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from latbench.space import Space
    from search.supernet import Supernet
    from search_memory import _reset_peak, _status_kb

    torch.manual_seed(seed)
    net = Supernet(Space(resolution, width, 10, 3)).train()
    for m in net.layers:
        with torch.no_grad():
            m.alpha.normal_()
    for p in net.weight_parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.arch_parameters(), lr=1e-3, betas=(0.0, 0.999))
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    gen = torch.Generator().manual_seed(seed)

    def step() -> None:
        net.sample_arch(mode, gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if mode == "two":
            net.rescale()
        net.end_arch_step()

    step()
    times, peaks = [], []
    for _ in range(repeats):
        before = _status_kb("VmRSS") * 1024
        if not _reset_peak():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        peaks.append(_status_kb("VmHWM") * 1024 - before)
    return {"mode": mode, "step_ms": statistics.median(times) * 1e3, "peak_mb": statistics.median(peaks) / 2**20}


def run_step_child(mode: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="2",
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", mode, "--batch-size", str(args.batch_size), "--step-resolution",
           str(args.step_resolution), "--width", str(args.width), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{mode} step failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def search_once(mode: str, seed: int, args: argparse.Namespace, predictor, data, target: float) -> dict:
    from search.trainer import ProxylessSearch, SearchConfig

    cfg = SearchConfig(binarize=mode, latency_loss="mul#log", target_latency=target, epochs=args.epochs,
                       warmup_epochs=1, train_batches=args.train_batches, val_batches=args.val_batches,
                       arch_every=1, arch_lr=args.arch_lr, resolution=args.resolution, seed=seed)
    t0 = time.perf_counter()
    s = ProxylessSearch(cfg, predictor, data)
    s.run()
    row = s.history[-1]
    lat = s.latency.predict(s.derived_arch())
    return {"mode": mode, "seed": seed, "predicted_ms": lat, "off_target_pct": 100 * (lat - target) / target,
            "val_acc": row["val_acc"], "alpha_entropy": row["alpha_entropy"],
            "seconds": time.perf_counter() - t0}


def spread(vals: list[float]) -> str:
    return f"{statistics.median(vals):8.2f} [{min(vals):.2f}, {max(vals):.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--predictor", default=None, help="LUT/xgb file (default: FLOP-derived LUT at 224, --width)")
    p.add_argument("--width", type=float, default=0.35)
    p.add_argument("--resolution", type=int, default=28, help="search's training resolution")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-batches", type=int, default=30)
    p.add_argument("--val-batches", type=int, default=10)
    p.add_argument("--arch-lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="architecture-step batch (step part)")
    p.add_argument("--step-resolution", type=int, default=64, help="input size of the step part")
    p.add_argument("--repeats", type=int, default=3, help="steps per step-measuring process")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of step processes per mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(step_child(args.child, args.batch_size, args.step_resolution, args.width, args.repeats, 0)))
        return 0

    import platform

    import torch

    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    rng = random.Random(0)
    steps: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        order = list(MODES)
        rng.shuffle(order)
        for m in order:
            steps[m].append(run_step_child(m, args))
    print(f"\narchitecture step, batch {args.batch_size}, {args.step_resolution} px, width {args.width} "
          f"(median [min, max] of {args.rounds} processes × median of {args.repeats} steps)")
    print(f"{'mode':<8} {'step ms':>24} {'peak MB':>24}")
    for m in MODES:
        print(f"{m:<8} {spread([r['step_ms'] for r in steps[m]]):>24} {spread([r['peak_mb'] for r in steps[m]]):>24}")
    ratio_t = statistics.median(r["step_ms"] for r in steps["full_v2"]) / statistics.median(
        r["step_ms"] for r in steps["two"])
    ratio_m = statistics.median(r["peak_mb"] for r in steps["full_v2"]) / statistics.median(
        r["peak_mb"] for r in steps["two"])
    print(f"full_v2 / two: time {ratio_t:.2f}x, memory {ratio_m:.2f}x")

    from latbench.space import Space
    from predictors import LUTPredictor, load_predictor
    from search.data import load_fashion_mnist
    from search.latency import LatencyModel, flops_latencies

    if args.predictor:
        predictor = load_predictor(args.predictor)
    else:
        predictor = LUTPredictor.from_latencies(flops_latencies(Space(224, args.width)), resolution=224,
                                                width_mult=args.width, n_classes=1000)
    lo, hi = LatencyModel(predictor).bounds()
    target = (lo + hi) / 2
    data = load_fashion_mnist(args.resolution)
    runs = [(m, s) for s in range(args.seeds) for m in MODES]
    rng.shuffle(runs)
    found: dict[str, list[dict]] = {m: [] for m in MODES}
    for m, s in runs:
        r = search_once(m, s, args, predictor, data, target)
        found[m].append(r)
        print(f"  {m:<8} seed {s}: {r['predicted_ms']:.2f} ms ({r['off_target_pct']:+.1f} %), val acc "
              f"{r['val_acc']:.3f}, H {r['alpha_entropy']:.3f}, {r['seconds']:.0f} s", flush=True)
    print(f"\nsearch: {args.epochs} epochs × {args.train_batches} batches (1 warm-up), arch step every batch, "
          f"arch lr {args.arch_lr}, mul#log T = {target:.2f} ms (space {lo:.2f}–{hi:.2f} ms), {args.seeds} seeds")
    print(f"{'mode':<8} {'val acc':>24} {'off target %':>24} {'seconds':>24}")
    for m in MODES:
        rs = found[m]
        print(f"{m:<8} {spread([r['val_acc'] for r in rs]):>24} {spread([r['off_target_pct'] for r in rs]):>24} "
              f"{spread([r['seconds'] for r in rs]):>24}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "steps": steps, "search": found}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
