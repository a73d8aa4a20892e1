"""Profile the space's ops on a CUDA GPU: TVM, PyTorch eager and torch.compile, batch 1 and 32.

Run on a GPU host (with TVM, torch and nvcc installed)::

    .venv/bin/python benchmarks/gpu_profile.py                       # all 72 ops at 224, batch 1 and 32
    .venv/bin/python benchmarks/gpu_profile.py --limit 10 --batches 1 --backends tvm,torch
    .venv/bin/python benchmarks/gpu_profile.py --target h100 --peak-tflops 67 --peak-gbs 3350

Each backend runs in its own process. Times are medians over ``--repeat`` repeats of
``--number`` calls each, after ``--warmup`` calls, with device synchronisation (CUDA events for
PyTorch, TVM's time evaluator for TVM). Per op it prints achieved FLOP/s and bytes/s — FLOPs
from :func:`latbench.features.op_features`, bytes = weights + batch × (input + output), the
minimal traffic of a fused implementation — as a fraction of the GPU's fp32 (non-tensor-core)
peak and memory bandwidth. On a machine without a GPU it exits with one line and status 2.
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

#: fp32 (CUDA cores) TFLOP/s and memory GB/s by device-name substring; --peak-* override.
PEAKS = {
    "H100 SXM": (66.9, 3350), "H100 NVL": (60.0, 3900), "H100 PCIe": (51.2, 2000), "H100": (51.2, 2000),
    "H200": (66.9, 4800), "A100-SXM4-80GB": (19.5, 2039), "A100": (19.5, 1555), "A10G": (31.2, 600),
    "A10": (31.2, 600), "L40S": (91.6, 864), "L4": (30.3, 300), "V100": (15.7, 900), "T4": (8.1, 320),
    "RTX 4090": (82.6, 1008), "RTX 3090": (35.6, 936),
}


def gpu_or_exit() -> tuple[str, tuple[int, int]]:
    """Name and compute capability of GPU 0, or exit 2 with one line."""
    try:
        import torch
    except ImportError:
        print("gpu_profile: torch is not installed; install a CUDA build of torch on the GPU host", file=sys.stderr)
        raise SystemExit(2) from None
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA GPU on this host (torch.cuda.is_available() is False); run it on a GPU server",
              file=sys.stderr)
        raise SystemExit(2)
    return torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)


def peaks(name: str, args: argparse.Namespace) -> tuple[float, float, str]:
    """(peak FLOP/s, peak bytes/s, where from)."""
    if args.peak_tflops and args.peak_gbs:
        return args.peak_tflops * 1e12, args.peak_gbs * 1e9, "command line"
    for sub, (tf, gbs) in PEAKS.items():
        if sub in name:
            return (args.peak_tflops or tf) * 1e12, (args.peak_gbs or gbs) * 1e9, f"table ({sub})"
    import torch

    p = torch.cuda.get_device_properties(0)
    # Estimate: 128 fp32 lanes/SM x 2 FLOPs x ~1.7 GHz; bandwidth unknown without the table.
    return p.multi_processor_count * 128 * 2 * 1.7e9, (args.peak_gbs or 1000) * 1e9, "estimate (pass --peak-*)"


def op_cost(op, batch: int) -> tuple[float, float]:
    from latbench.features import op_features

    f = op_features(op)
    return f["flops"] * batch, f["weight_bytes"] + batch * (f["in_bytes"] + f["out_bytes"])


def time_torch_cuda(fn, x, warmup: int, number: int, repeat: int) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn(x)
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end) / number)
    return statistics.median(runs)


def worker(backend: str, keys: list[str], batch: int, args: argparse.Namespace, out: Path) -> None:
    """Time every op with one backend at one batch size; write JSON rows."""
    import torch

    from latbench.modules import build_op_module, example_input
    from latbench.ops import OpSpec

    rows = []
    dev_t = torch.device("cuda")
    tmp = Path(tempfile.mkdtemp(prefix=f"gpu-{backend}-"))
    if backend == "tvm":
        import tvm
        from tvm import relax

        from latbench.backends.base import get_backend
        from latbench.devices import device_from_dict, get_device

        cc = torch.cuda.get_device_capability(0)
        device = get_device(args.target) if args.target else device_from_dict(
            {"name": "this-gpu", "target": {"kind": "cuda", "arch": f"sm_{cc[0]}{cc[1]}"}})
        be = get_backend("tvm")
        tdev = tvm.cuda(0)
    for i, key in enumerate(keys):
        op = OpSpec.parse(key)
        m = build_op_module(op)
        x = example_input((batch,) + op.input_shape[1:], op.key)
        row = {"key": key, "backend": backend, "batch": batch}
        try:
            if backend == "tvm":
                lib = tmp / f"op{i}.so"
                be.build(m, x, device, lib)
                vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tdev)
                xt = tvm.runtime.tensor(x.numpy(), tdev)
                with torch.no_grad():
                    ref = m(x).numpy()
                row["max_abs_err"] = float(abs(vm["main"](xt).numpy() - ref).max())
                for _ in range(args.warmup):
                    vm["main"](xt)
                r = vm.time_evaluator("main", tdev, number=args.number, repeat=args.repeat)(xt)
                row["ms"] = r.median * 1e3
            else:
                mc = m.to(dev_t)
                fn = torch.compile(mc) if backend == "torch.compile" else mc
                row["ms"] = time_torch_cuda(fn, x.to(dev_t), args.warmup, args.number, args.repeat)
        except Exception as exc:  # noqa: BLE001 - torch.compile or a build may fail for an op
            row["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        rows.append(row)
        print(f"  {backend} b{batch} {row.get('ms', float('nan')):.4f} ms {row.get('error', '')} {key}", flush=True)
    out.write_text(json.dumps(rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--backends", default="tvm,torch,torch.compile")
    ap.add_argument("--target", default=None, help="latbench device for TVM builds (default: this GPU's sm_XY)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--peak-gbs", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    name, cc = gpu_or_exit()
    if args.worker:
        worker(args.worker, json.loads(args.keys.read_text()), args.batch, args, args.out)
        return 0

    from latbench.ops import OpSpec
    from latbench.space import Space

    keys = [op.key for op in Space(args.resolution, args.width_mult).distinct_ops()][: args.limit]
    pf, pb, src = peaks(name, args)
    print(f"GPU: {name} (sm_{cc[0]}{cc[1]}); peak fp32 {pf / 1e12:.1f} TFLOP/s, {pb / 1e9:.0f} GB/s [{src}]")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    passthrough = ["--warmup", str(args.warmup), "--number", str(args.number), "--repeat", str(args.repeat)]
    if args.target:
        passthrough += ["--target", args.target]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as td:
        kf = Path(td) / "keys.json"
        kf.write_text(json.dumps(keys))
        for batch in [int(b) for b in args.batches.split(",")]:
            for be in [b for b in args.backends.split(",") if b]:
                of = Path(td) / f"{be}-{batch}.json"
                print(f"[{be} batch {batch}]", flush=True)
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, __file__, "--worker", be, "--batch", str(batch), "--keys", str(kf),
                                    "--out", str(of)] + passthrough, env=env)
                if r.returncode != 0 or not of.exists():
                    print(f"  {be} batch {batch}: worker failed (rc {r.returncode})")
                    continue
                results += json.loads(of.read_text())
                print(f"  ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"gpu": name, "cc": cc, "peak_flops": pf, "peak_bytes": pb, "rows": results},
                                        indent=1))

    print(f"\n{'op':<82}{'backend':>14}{'batch':>6}{'ms':>10}{'TFLOP/s':>9}{'%peak':>7}{'GB/s':>8}{'%bw':>6}")
    by_cfg: dict[tuple, list[float]] = {}
    for r in results:
        op = OpSpec.parse(r["key"])
        if "ms" not in r:
            print(f"{r['key']:<82}{r['backend']:>14}{r['batch']:>6}  failed: {r.get('error', '')}")
            continue
        flops, nbytes = op_cost(op, r["batch"])
        fps, bps = flops / (r["ms"] / 1e3), nbytes / (r["ms"] / 1e3)
        by_cfg.setdefault((r["backend"], r["batch"]), []).append(fps / pf)
        print(f"{r['key']:<82}{r['backend']:>14}{r['batch']:>6}{r['ms']:>10.4f}{fps / 1e12:>9.2f}"
              f"{100 * fps / pf:>6.1f}%{bps / 1e9:>8.0f}{100 * bps / pb:>5.0f}%")
    print("\nmedian fraction of fp32 peak per backend/batch:")
    for (be, b), fr in sorted(by_cfg.items()):
        print(f"  {be:>14} batch {b:>3}: {100 * statistics.median(fr):5.1f}% over {len(fr)} ops")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
