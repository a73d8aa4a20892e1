"""Time and peak memory of one search step under torchrun: 2 ranks vs 1 process, the same global batch.

One search step = a weight step on the global batch and a binary-gate architecture step (``two``) on
a held-out batch of the same size. ``--batch-size`` is the global batch (each of the 2 ranks takes
half), so both configurations do the same work; under torchrun every BN layer and every gradient
adds collectives (gloo on loopback). Each configuration runs in fresh processes (``torchrun
--nproc_per_node N``), interleaved (1, 2, 1, 2, ...), ``--rounds`` times; a round reports the median
over ``--steps`` timed steps (after 2 warm-up steps) of the slowest rank, and each rank's peak
resident set (``ru_maxrss``, whole process: torch, the data set, the supernet). Printed: median and
[min, max] over the rounds.

    python benchmarks/search_ddp.py                                  # batch 32, 28 px, width 0.35
    python benchmarks/search_ddp.py --rounds 3 --steps 5 --batch-size 16

On a 2-core machine two ranks cannot be faster than one process using both cores: the point is the
overhead of the collectives and the per-rank memory, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time ``args.steps`` search steps, print one JSON line."""
    import resource

    import torch

    from latbench.space import Space
    from predictors import LUTPredictor
    from search.data import load_fashion_mnist
    from search.distributed import session
    from search.latency import flops_latencies
    from search.trainer import ProxylessSearch, SearchConfig

    torch.set_num_threads(args.threads)
    pred = LUTPredictor.from_latencies(flops_latencies(Space(224, args.width)), resolution=224,
                                       width_mult=args.width, n_classes=1000)
    data = load_fashion_mnist(args.resolution)
    config = SearchConfig(epochs=1, warmup_epochs=0, batch_size=args.batch_size, resolution=args.resolution,
                          lambda2=1.0, seed=0)
    with session("cpu") as ddp:
        s = ProxylessSearch(config, pred, data, ddp=ddp)
        train = data.train.cycle(args.batch_size, 1, shard=ddp.shard)
        valid = data.valid.cycle(args.batch_size, 2, shard=ddp.shard)
        times = []
        for i in range(args.steps + 2):
            x, y = next(train)
            xv, yv = next(valid)
            ddp.sum([0.0])  # a barrier: every rank starts the step together
            t0 = time.perf_counter()
            s.weight_step(x, y)
            s.arch_step_gradient(xv, yv)
            dt = time.perf_counter() - t0
            if i >= 2:
                times.append(dt)
        slowest = _max_over_ranks(times) if ddp.active else times  # a step is as slow as its slowest rank
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {"rank": ddp.rank, "world": ddp.world_size, "step_s": statistics.median(slowest),
                  "peak_rss_mb": round(rss_mb, 1)}
        (Path(args.result_dir) / f"rank{ddp.rank}.json").write_text(json.dumps(result))  # not stdout: ranks interleave


def _max_over_ranks(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nproc: int, args: argparse.Namespace) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
           "--batch-size", str(args.batch_size), "--resolution", str(args.resolution), "--width", str(args.width),
           "--steps", str(args.steps), "--threads", str(args.threads if nproc > 1 else args.threads * 2)]
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(cmd + ["--result-dir", d], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        if r.returncode != 0:
            raise SystemExit(f"torchrun --nproc_per_node {nproc} failed:\n{r.stderr[-3000:]}")
        return [json.loads((Path(d) / f"rank{k}.json").read_text()) for k in range(nproc)]


def fmt(values: list[float], unit: str, digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result-dir", default=".", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--width", type=float, default=0.35)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per rank (default 1; the single process gets twice as many, so both use "
                        "the same cores)")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    results: dict[int, list[list[dict]]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for nproc in (1, 2):
            results[nproc].append(launch(nproc, args))
    print(f"search step (weight + arch 'two'), global batch {args.batch_size}, {args.resolution} px, width "
          f"{args.width}, {args.rounds} rounds × {args.steps} steps, median [min, max] over rounds:")
    for nproc, rounds in results.items():
        step_ms = [rows[0]["step_s"] * 1000 for rows in rounds]
        line = f"  {nproc} process{'es' if nproc > 1 else ''} ({args.threads * (2 if nproc == 1 else 1)} thread"
        line += f"{'s' if nproc == 1 and args.threads * 2 > 1 else ''} each): step {fmt(step_ms, 'ms')}"
        for rank in range(nproc):
            line += f", rank {rank} peak RSS {fmt([rows[rank]['peak_rss_mb'] for rows in rounds], 'MB', 0)}"
        print(line)


if __name__ == "__main__":
    main()
