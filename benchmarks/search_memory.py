"""Peak memory and time of one training step: binarized supernet vs single network vs all paths.

Three ways to train the same sampled architecture for one step (forward, backward, SGD):

* ``single``     the stand-alone network (``latbench.modules.Network``) of the sampled arch;
* ``binarized``  the ProxylessNAS supernet with that path active (the other candidates exist
                 but never run);
* ``all-paths``  the supernet as a DARTS-style mixed op: every candidate runs, weighted by p.

Goal: binarized ≤ 1.3× single in memory and ≤ 2× in time; all-paths ≈ N× (N = 6–7 candidates).

Each variant runs in its own process. On CPU the step's peak is the rise of the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set before
the step, with glibc told to return every large block to the OS on free so that the resident set
follows the live tensors; on CUDA it is ``torch.cuda.max_memory_allocated`` over the allocated
memory before the step.

    python benchmarks/search_memory.py                      # batch 32, 64x64, width 1.0, CPU
    python benchmarks/search_memory.py --resolution 224 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("single", "binarized", "all-paths")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_variant(variant: str, batch: int, resolution: int, width: float, repeats: int, device: str,
                    seed: int) -> dict:
    """Run in the child process: build the variant, then time and measure its training steps."""
    import torch
    import torch.nn.functional as F

    from latbench.modules import Network
    from latbench.space import Space
    from search.supernet import Supernet

    torch.manual_seed(seed)
    dev = torch.device(device)
    space = Space(resolution, width, 10)
    arch = space.sample(seed)
    if variant == "single":
        net = Network(arch)
    else:
        net = Supernet(space)
        net.set_choices(net.indices(arch.ops))
        if variant == "all-paths":
            net.set_all_paths(True)
    net = net.to(dev).train()
    params = [p for n, p in net.named_parameters() if not n.endswith(".alpha")]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
    x = torch.randn(batch, 3, resolution, resolution, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    n_params = sum(p.numel() for p in params)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # allocate momentum buffers, warm up kernels
    times, peaks = [], []
    for _ in range(repeats):
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _status_kb("VmRSS") * 1024
            if not _reset_peak():
                raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); run on Linux >= 4.0")
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status_kb("VmHWM") * 1024
        peaks.append(peak - before)
    return {"variant": variant, "peak_step_mb": statistics.median(peaks) / 2**20,
            "step_ms": statistics.median(times) * 1e3, "params_m": n_params / 1e6,
            "memory_source": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "VmHWM-VmRSS",
            "arch": arch.to_dict()}


def run_child(variant: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    # Every block >= 64 KiB gets its own mmap and goes back to the OS on free: RSS tracks live tensors.
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", MALLOC_ARENA_MAX="2")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--child", variant, "--batch-size", str(args.batch_size),
           "--resolution", str(args.resolution), "--width", str(args.width), "--repeats", str(args.repeats),
           "--device", args.device, "--seed", str(args.seed)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=64, help="input size (224 needs ~20 GB for all-paths on CPU)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="OMP threads of each child")
    p.add_argument("--seed", type=int, default=0, help="which architecture is sampled")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure_variant(args.child, args.batch_size, args.resolution, args.width, args.repeats,
                                         args.device, args.seed)))
        return 0

    rows = {v: run_child(v, args) for v in VARIANTS}
    single = rows["single"]
    print(f"one training step, batch {args.batch_size}, {args.resolution}x{args.resolution}, width {args.width}, "
          f"{args.device} ({single['memory_source']}), median of {args.repeats}")
    print(f"{'variant':<11} {'peak MB':>9} {'x single':>9} {'step ms':>9} {'x single':>9} {'params M':>9}")
    for v, r in rows.items():
        print(f"{v:<11} {r['peak_step_mb']:9.1f} {r['peak_step_mb'] / single['peak_step_mb']:9.2f} "
              f"{r['step_ms']:9.1f} {r['step_ms'] / single['step_ms']:9.2f} {r['params_m']:9.2f}")
    b = rows["binarized"]
    mem_ok = b["peak_step_mb"] <= 1.3 * single["peak_step_mb"]
    time_ok = b["step_ms"] <= 2.0 * single["step_ms"]
    print(f"goal binarized <= 1.3x single memory: {'PASS' if mem_ok else 'FAIL'}; "
          f"<= 2x single time: {'PASS' if time_ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "mem_ok": mem_ok,
                                               "time_ok": time_ok}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
