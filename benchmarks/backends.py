"""Benchmark: ops and whole networks of the space under several runtimes on this CPU, interleaved.

Each backend runs in a worker process of its own (thread pools of TVM, PyTorch and ONNX Runtime
never overlap), with ``TVM_NUM_THREADS`` / ``torch.set_num_threads`` / ONNX Runtime's intra-op
threads set to ``--threads``. Every worker first builds (or loads from its cache) and checks every
item against PyTorch, then the coordinator asks for one timed *visit* per (backend, item) per round,
all visits of a round in one shuffled order, so a burst of load from other processes hits every
backend alike. A visit is the median of 5 repeats of >= 20 ms, ``--gap-ms`` after the last one (the
thread pools of TVM, PyTorch and ONNX Runtime spin-wait for a while after a run; a visit right after
another backend's shared the cores with those spinning threads); an item's figure is the median over
the rounds, its spread (max-min)/median over the rounds is printed too. The summary also gives every ratio on
*floors* (each visit's fastest repeat, median over the rounds): on a host whose bursts slow a few repeats of a
backend 3-4x (ONNX Runtime's visits on a 2-vCPU EPYC, December 7), medians and floors disagree and both are shown.

* ``tvm``          latbench's schedule rules (no tuning)
* ``onnxruntime``  ONNX Runtime CPU provider on the op exported with ``torch.onnx``
* ``torch``        PyTorch eager, ``inference_mode``
* ``tvm-untuned``  TVM's default pipeline; ``tvm-tuned`` MetaSchedule seeded with the rules' schedules,
  ``--trials`` per op, on every ``--tuned-every``-th op only (no networks: tuning is slow);
  ``tvm-tuned-noseed`` the same without the seeds. Each tunes into a database of its own under ``--cache``.
* ``tvm@1``        (with ``--speedup N``) the ``tvm`` code on 1 thread, on the N largest ops (FLOPs)

Items: the space's distinct ops at ``--resolution``/``--width-mult`` (72 at 224, 1.0), ``--nets``
random networks of the space (seeded) plus a MobileNetV2-style net (every layer ``3x3_MBConv6``).
Roofline: a FMA-throughput probe (``torch.mm`` 1024², ``--threads`` threads) and a stream probe
(``torch.add`` on 64 MiB arrays, 3 streams) run before and after; each item gets achieved GFLOP/s
(2·MACs/time) and GB/s (compulsory fp32 traffic: input + output + weights, intermediates assumed
on chip) and their share of the probes' best.

    .venv/bin/python benchmarks/backends.py --backends tvm,onnxruntime,torch --speedup 12   # ~20-40 min
    .venv/bin/python benchmarks/backends.py --every 8 --nets 2 --rounds 2 --backends tvm,onnxruntime
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VISIT_REPEAT, VISIT_MIN_MS = 5, 20


# -- items ----------------------------------------------------------------------------------------
def op_cost(op: Any) -> tuple[float, float]:
    """(MACs, compulsory fp32 bytes: input + output + weights) of one op."""
    hi, wi, ho, wo = op.in_h, op.in_w, op.out_h, op.out_w
    if op.kind == "expanded_conv":
        mid = op.mid_ch
        macs = (hi * wi * op.in_ch * mid if op.expand > 1 else 0) + ho * wo * mid * op.kernel ** 2 \
            + ho * wo * mid * op.out_ch
        weights = (op.in_ch * mid if op.expand > 1 else 0) + mid * op.kernel ** 2 + mid * op.out_ch
    elif op.kind == "Conv":
        macs = ho * wo * op.out_ch * op.in_ch * 9
        weights = op.out_ch * op.in_ch * 9
    elif op.kind == "Conv_1":
        macs = ho * wo * op.in_ch * op.out_ch
        weights = op.in_ch * op.out_ch
    else:  # Logits
        macs = hi * wi * op.in_ch + op.in_ch * op.out_ch
        weights = op.in_ch * op.out_ch
    out = op.out_ch if op.kind == "Logits" else ho * wo * op.out_ch
    return float(macs), 4.0 * (hi * wi * op.in_ch + out + weights)


def make_items(args: argparse.Namespace) -> list[dict[str, Any]]:
    from latbench.space import Space

    space = Space(args.resolution, args.width_mult)
    items = []
    for op in space.distinct_ops()[:: args.every][: args.limit]:
        macs, nbytes = op_cost(op)
        items.append({"key": op.key, "what": "ops", "macs": macs, "bytes": nbytes,
                      "kind": "pointwise" if op.kind == "Conv_1" else op.kind})
    rng = random.Random(args.seed)
    archs = [(f"net{i:02d}", space.sample(rng)) for i in range(args.nets)]
    archs.append(("mbv2-3x3_MBConv6", space.uniform("3x3_MBConv6")))
    for name, arch in archs if args.nets >= 0 else []:
        costs = [op_cost(op) for op in arch.op_specs]
        items.append({"key": name, "what": "nets", "arch": arch.to_dict(), "arch_key": arch.key,
                      "macs": sum(c[0] for c in costs), "bytes": sum(c[1] for c in costs), "kind": "net"})
    return items


def module_and_input(item: dict[str, Any]) -> tuple[Any, Any]:
    from latbench.jobs import Job

    return Job(item["key"], item["what"], item.get("arch")).module_and_input()


# -- workers --------------------------------------------------------------------------------------
def visit_stats(runs: list[float]) -> dict[str, float]:
    return {"ms": statistics.median(runs), "min_ms": min(runs)}


def host_timer(fn: Any) -> Any:
    """A visit of a host callable: VISIT_REPEAT repeats of >= VISIT_MIN_MS each."""
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    fn()
    number = max(1, int(VISIT_MIN_MS / 1e3 / max(time.perf_counter() - t0, 1e-6)) + 1)

    def visit() -> dict[str, float]:
        runs = []
        for _ in range(VISIT_REPEAT):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            runs.append((time.perf_counter() - t0) / number * 1e3)
        return visit_stats(runs)

    return visit


def load_host(backend: str, item: dict, workdir: Path, threads: int) -> tuple[Any, dict]:
    import numpy as np
    import torch

    from latbench.backends.base import get_backend

    m, x = module_and_input(item)
    with torch.inference_mode():
        ref = m(x).numpy()
    workdir.mkdir(parents=True, exist_ok=True)
    fn = get_backend(backend).make_callable(m, x, workdir, threads)
    err = float(np.abs(np.asarray(fn()) - ref).max())
    return host_timer(fn), {"max_abs_err": err}


def load_tvm(backend: str, item: dict, cache: Path, trials: int) -> tuple[Any, dict]:
    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from latbench.backends.base import get_backend
    from latbench.devices import get_device

    tuned = backend.startswith("tvm-tuned")
    be = get_backend("tvm-tuned" if tuned else backend,
                     **({"trials_per_op": trials, "seed": backend == "tvm-tuned", "db_dir": cache / "tuning" / backend}
                        if tuned else {}))
    device = get_device("local-cpu")
    m, x = module_and_input(item)
    ident = json.dumps([backend, be.settings(), device.resolved_target(), item.get("arch_key", item["key"]),
                        tvm.__version__], sort_keys=True, default=str)
    lib = cache / f"{backend}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.so"
    notes: dict[str, Any] = {"cached": lib.exists()}
    t0 = time.perf_counter()
    extents = lib.with_suffix(".parallel.json")  # the rules' parallel loop extents, kept beside the library
    if not lib.exists() or not extents.exists():
        built = be.build(m, x, device, lib)
        notes["fallbacks"] = len(built.get("fallbacks", []))
        notes["generic_conv"] = len(built.get("generic_conv", []))
        if tuned:  # which schedule the database ranked best per task, and which one the build kept per function
            notes["db_best"] = [s.get("best") for s in built.get("seeds", [])]
            notes["kept"] = [v["kept"] for v in built.get("vs_rules", [])]
        extents.write_text(json.dumps(built.get("parallel", {})))
    notes["parallel"] = json.loads(extents.read_text())
    notes["build_s"] = round(time.perf_counter() - t0, 2)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
    xt = tvm.runtime.tensor(x.numpy(), dev)
    with torch.no_grad():
        notes["max_abs_err"] = float(np.abs(vm["main"](xt).numpy() - m(x).numpy()).max())
    evaluator = vm.time_evaluator("main", dev, number=1, repeat=VISIT_REPEAT, min_repeat_ms=VISIT_MIN_MS)

    def visit() -> dict[str, float]:
        r = evaluator(xt)
        return visit_stats([v * 1e3 for v in r.results])

    return visit, notes


def probe() -> dict[str, float]:
    """Peak FMA throughput (GFLOP/s, sgemm 1024²) and stream bandwidth (GB/s, c = a + b on 64 MiB)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = min(_best_of(lambda: torch.mm(a, b), 15))
    x, y, z = (torch.empty(16 << 20) for _ in range(3))
    x.normal_(), y.normal_()
    bw = min(_best_of(lambda: torch.add(x, y, out=z), 15))
    return {"peak_gflops": 2 * 1024 ** 3 / best / 1e9, "stream_gbs": 3 * 4 * (16 << 20) / bw / 1e9}


def _best_of(fn: Any, n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def worker(backend: str, items: list[dict], threads: int, trials: int, cache: Path) -> None:
    """Load every item, report, then answer one visit per line read from stdin (a key)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    out, sys.stdout = sys.stdout, sys.stderr  # only protocol lines on the real stdout
    visits, notes = {}, {}
    work = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-"))
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        try:
            if backend in ("torch", "onnxruntime", "torch-compile"):
                visits[item["key"]], notes[item["key"]] = load_host(backend, item, work / f"i{i}", threads)
            else:
                visits[item["key"]], notes[item["key"]] = load_tvm(backend, item, cache, trials)
        except Exception as exc:  # noqa: BLE001 - record and go on
            notes[item["key"]] = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]}
        print(f"  [{backend}] {i + 1}/{len(items)} {time.perf_counter() - t0:5.1f}s {item['key'][:70]} "
              f"{notes[item['key']]}", file=sys.stderr, flush=True)
    out.write(json.dumps({"ready": notes}) + "\n")
    out.flush()
    for line in sys.stdin:
        key = line.strip()
        if key == "probe":
            res: dict[str, Any] = probe()
        else:
            res = visits[key]() if key in visits else {"error": "not loaded"}
        out.write(json.dumps(res) + "\n")
        out.flush()


class Worker:
    def __init__(self, name: str, backend: str, items: list[dict], threads: int, args: argparse.Namespace,
                 td: Path) -> None:
        self.name, self.items = name, items
        (td / f"{name}.json").write_text(json.dumps(items))
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", backend, "--items", str(td / f"{name}.json"),
             "--threads", str(threads), "--trials", str(args.trials), "--cache", str(args.cache)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.notes: dict[str, Any] = {}
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit(f"worker {self.name} died while loading (rc {self.proc.wait()})")
        self.notes, self.ready = json.loads(line)["ready"], True

    def ask(self, key: str) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(key + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} died (rc {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- coordinator ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--backends", default="tvm,onnxruntime,torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one visit per backend and item)")
    ap.add_argument("--nets", type=int, default=10, help="random networks (+ the MobileNetV2-style net); -1: none")
    ap.add_argument("--seed", type=int, default=15, help="seed of the random networks")
    ap.add_argument("--speedup", type=int, default=12, help="time the N largest ops on 1 thread too (0: off)")
    ap.add_argument("--trials", type=int, default=16, help="tvm-tuned trial budget per op")
    ap.add_argument("--tuned-every", type=int, default=6, help="tune every N-th op only (tuning is slow)")
    ap.add_argument("--gap-ms", type=float, default=50,
                    help="pause before each visit, so the thread pool of the last backend has stopped spinning")
    ap.add_argument("--limit", type=int, default=None, help="only the first N ops")
    ap.add_argument("--every", type=int, default=1, help="only every N-th op (a quick spread over the space)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="built TVM libraries (default $LATBENCH_CACHE/bench-backends)")
    ap.add_argument("--json", type=Path, default=None, help="also write all visits and results to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--items", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cache is None:
        args.cache = Path(os.environ.get("LATBENCH_CACHE", Path.home() / ".cache" / "latbench")) / "bench-backends"
    if args.worker:
        args.cache.mkdir(parents=True, exist_ok=True)
        worker(args.worker, json.loads(args.items.read_text()), args.threads, args.trials, args.cache)
        return 0

    from latbench.facts import host_facts

    items = make_items(args)
    ops = [it for it in items if it["what"] == "ops"]
    backends = [b for b in args.backends.split(",") if b]
    plan: dict[str, tuple[str, list[dict], int]] = {}
    for be in backends:
        sel = ops[:: args.tuned_every] if be.startswith("tvm-tuned") else items
        plan[be] = (be, sel, args.threads)
    if args.speedup and "tvm" in backends:
        largest = sorted(ops, key=lambda it: -it["macs"])[: args.speedup]
        plan["tvm@1"] = ("tvm", largest, 1)
    print(f"{len(ops)} ops + {len(items) - len(ops)} nets; workers {list(plan)}; {args.threads} threads; "
          f"{args.rounds} rounds; visit = median of {VISIT_REPEAT} x >= {VISIT_MIN_MS} ms, {args.gap_ms:g} ms apart",
          flush=True)
    t_start = time.perf_counter()
    visits: dict[str, dict[str, list[dict]]] = {w: {} for w in plan}
    probes: list[dict] = []
    with tempfile.TemporaryDirectory() as tdir:
        workers: dict[str, Worker] = {}
        try:
            # Tuning times its candidates: each tuned worker loads alone, before the others start building.
            for w, (be, sel, thr) in sorted(plan.items(), key=lambda kv: not kv[1][0].startswith("tvm-tuned")):
                workers[w] = Worker(w, be, sel, thr, args, Path(tdir))
                if be.startswith("tvm-tuned"):
                    workers[w].wait_ready()
            for w in workers.values():
                w.wait_ready()
            t_loaded = time.perf_counter()
            host = workers.get("torch") or workers.get("onnxruntime") or next(iter(workers.values()))
            probes.append(host.ask("probe"))
            for r in range(args.rounds):
                order = [(w, it["key"]) for w, wk in workers.items() for it in wk.items
                         if "error" not in wk.notes.get(it["key"], {})]
                random.Random(1000 + r).shuffle(order)
                for w, key in order:
                    time.sleep(args.gap_ms / 1e3)
                    visits[w].setdefault(key, []).append(workers[w].ask(key))
                print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
            probes.append(host.ask("probe"))
        finally:
            for w in workers.values():
                w.close()
        notes = {w: wk.notes for w, wk in workers.items()}
    facts = host_facts()
    result = summarise(items, list(plan), visits, notes, probes)
    result.update(args={k: str(v) for k, v in vars(args).items()}, machine=facts, load_avg=os.getloadavg(),
                  load_s=round(t_loaded - t_start, 1), total_s=round(time.perf_counter() - t_start, 1))
    print(f"\nmachine: {facts.get('cpu_model')} ({facts.get('llvm_cpu')}), {facts.get('cpu_count')} cpus, "
          f"load avg {result['load_avg'][0]:.1f}/{result['load_avg'][1]:.1f}/{result['load_avg'][2]:.1f} at the end; "
          f"loading {result['load_s']:.0f} s, total {result['total_s']:.0f} s")
    report(items, list(plan), result)
    if args.json:
        args.json.write_text(json.dumps({"result": result, "visits": visits, "notes": notes}, indent=1,
                                        default=str))
    return 0


def summarise(items: list[dict], workers: list[str], visits: dict, notes: dict, probes: list[dict]) -> dict:
    med: dict[str, dict[str, float]] = {}
    floor: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for w in workers:
        med[w], floor[w], spread[w] = {}, {}, {}
        for key, vs in visits[w].items():
            ms = [v["ms"] for v in vs if "ms" in v]
            if ms:
                med[w][key] = statistics.median(ms)
                floor[w][key] = statistics.median(v.get("min_ms", v["ms"]) for v in vs if "ms" in v)
                spread[w][key] = (max(ms) - min(ms)) / med[w][key]
    peak = max(p["peak_gflops"] for p in probes)
    bw = max(p["stream_gbs"] for p in probes)
    return {"median_ms": med, "floor_ms": floor, "spread": spread, "probes": probes, "peak_gflops": peak,
            "stream_gbs": bw,
            "errors": {w: {k: n["error"] for k, n in notes[w].items() if "error" in n} for w in workers},
            "max_abs_err": {w: max([n.get("max_abs_err", 0.0) for n in notes[w].values()] or [0.0])
                            for w in workers},
            "parallel": {k: n["parallel"] for k, n in notes.get("tvm", {}).items() if "parallel" in n}}


def parallel_bound(extents: dict[str, list[int]], threads: int) -> float | None:
    """The speed-up an op's worst-balanced kernel allows on ``threads`` threads (None: no parallel loops). A
    kernel's work is its largest parallel loop (the conv's; epilogues run inside it, a small pad may have its own)."""
    from latbench.backends.tvm_schedules import parallel_speedup_bound

    mains = [max(es) for es in extents.values() if es]
    return min(parallel_speedup_bound(e, threads) for e in mains) if mains else None


def _q(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def report(items: list[dict], workers: list[str], res: dict) -> None:
    med, spread = res["median_ms"], res["spread"]
    cols = [w for w in workers if w != "tvm@1"]
    peak, bw = res["peak_gflops"], res["stream_gbs"]
    probe_list = ", ".join(f"{p['peak_gflops']:.0f}/{p['stream_gbs']:.1f}" for p in res["probes"])
    print(f"\nprobes: FMA peak {peak:.0f} GFLOP/s (sgemm 1024², best of before/after), stream {bw:.1f} GB/s "
          f"({probe_list})")
    ratio_cols = [b for b in ("onnxruntime", "torch") if b in cols and "tvm" in cols]
    head = f"{'item':<80}" + "".join(f"{c:>12}" for c in cols) + "".join(f"  tvm/{b[:4]:<4}" for b in ratio_cols)
    print("\nmedian over rounds (ms); roofline of tvm: GFLOP/s (% of peak), GB/s (% of stream)")
    print(head + "   GFLOP/s        GB/s")
    ratios: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for it in items:
        k = it["key"]
        cells = "".join(f"{med[c][k]:>12.3f}" if k in med.get(c, {}) else f"{'-':>12}" for c in cols)
        extra = ""
        for b in ratio_cols:
            if k in med["tvm"] and k in med[b]:
                r = med["tvm"][k] / med[b][k]
                ratios.setdefault((it["what"], b), []).append((r, k))
                extra += f"  {r:9.2f}"
            else:
                extra += f"  {'-':>9}"
        if k in med.get("tvm", {}):
            t = med["tvm"][k] / 1e3
            g, gb = 2 * it["macs"] / t / 1e9, it["bytes"] / t / 1e9
            extra += f"  {g:6.1f} ({100 * g / peak:3.0f}%) {gb:6.1f} ({100 * gb / bw:3.0f}%)"
        label = k if it["what"] == "ops" else f"{k} ({len(it['arch_key'])} chars key, {it['macs'] / 1e6:.0f} MMAC)"
        print(f"{label[:80]:<80}{cells}{extra}")
    print()
    for (what, b), rs in sorted(ratios.items()):
        vals = [r for r, _ in rs]
        worst = max(rs)
        bar = 1.3 if what == "ops" else 1.0
        print(f"tvm/{b} over {len(vals)} {what}: median {statistics.median(vals):.2f}, min {min(vals):.2f}, "
              f"max {worst[0]:.2f} ({worst[1][:60]}), above {bar}: {sum(v > bar for v in vals)}")
        floors = res.get("floor_ms", {})
        fl = [floors["tvm"][k] / floors[b][k] for _, k in rs if k in floors.get("tvm", {}) and k in floors.get(b, {})]
        if fl:  # robust to a backend's occasional slow repeats (a visit's median is hit when 3 of 5 are slow)
            print(f"  on floors (each visit's fastest repeat, median over rounds): median {statistics.median(fl):.2f}, "
                  f"min {min(fl):.2f}, max {max(fl):.2f}, above {bar}: {sum(v > bar for v in fl)}")
    for w in cols:
        if w.startswith("tvm-tuned") and "tvm" in med:
            rs = [(med[w][k] / med["tvm"][k], k) for k in med[w] if k in med["tvm"]]
            if rs:
                vals = [r for r, _ in rs]
                print(f"{w}/tvm over {len(rs)} ops: median {statistics.median(vals):.2f}, min {min(vals):.2f}, "
                      f"max {max(vals):.2f} ({max(rs)[1][:60]})")
    if "tvm@1" in med:
        sp = [(med["tvm@1"][k] / med["tvm"][k], k) for k in med["tvm@1"] if k in med.get("tvm", {})]
        if sp:
            vals = [s for s, _ in sp]
            print(f"1 -> {res['args']['threads']} threads speed-up of tvm on the {len(sp)} largest ops: median "
                  f"{statistics.median(vals):.2f}, min {min(vals):.2f} ({min(sp)[1][:60]}), max {max(vals):.2f}")
            for threads in (2, 4):  # what the rules' parallel loops allow (a Pi 4 has 4 cores)
                bounds = [parallel_bound(res["parallel"].get(k, {}), threads) for _, k in sp]
                bounds = [b for b in bounds if b is not None]
                if bounds:
                    print(f"  parallel loops of those ops on {threads} threads allow (worst kernel of each op): "
                          f"median "
                          f"{statistics.median(bounds):.2f}x, min {min(bounds):.2f}x of {threads}")
    for w in workers:
        sp = list(spread.get(w, {}).values())
        if sp:
            print(f"noise {w:>12}: spread (max-min)/median over rounds per item: median {statistics.median(sp):.0%}, "
                  f"p90 {_q(sp, 0.9):.0%}, max {max(sp):.0%}; max abs err vs torch {res['max_abs_err'][w]:.1e}; "
                  f"failed {len(res['errors'][w])}")
    for w, errs in res["errors"].items():
        for k, e in list(errs.items())[:5]:
            print(f"  {w} FAILED {k[:60]}: {e}")


if __name__ == "__main__":
    raise SystemExit(main())
