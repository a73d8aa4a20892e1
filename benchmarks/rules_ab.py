"""Benchmark: the ``tvm`` rules of this checkout vs those of an earlier git revision, side by side.

Each revision's latbench (``git archive REV`` into a temporary directory; this checkout for ``HEAD``) builds the same
networks in a process of its own — the 10 seeded random networks of ``backends.py`` and the MobileNetV2-style net —
then one process loads every library and times them interleaved: ``--rounds`` rounds, each visiting every
(revision, network) once in a shuffled order, ``--gap-ms`` apart; a visit is the median of 5 repeats of >= 20 ms.
Each build also says how many functions its rules left unscheduled (a rule that raised falls back to TVM's
unscheduled code, which only the timing would otherwise show) and its largest error against PyTorch.
Printed per network: both medians and the ratio new/old (median over the rounds' ratios, min-max), then the
median ratio over the networks. ``--ops`` A/Bs whole ops of the space (at 224) instead, each on its own input.
``TVM_NUM_THREADS`` = ``--threads``.

    .venv/bin/python benchmarks/rules_ab.py --old cdbd7d2          # the rules before December 3 vs now
    .venv/bin/python benchmarks/rules_ab.py --old 6a0a7d2 --rounds 7 --ops 112x112x16-output:56 56x56x24-output:28
                                                                    # whole ops instead (key substrings)
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUILD = r"""
import random, sys
from pathlib import Path
src, out, nets, seed, rest = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
ops = [a for a in rest if "=" not in a]  # op keys; NAME=VALUE sets a constant of the rules before the builds
sys.path.insert(0, src)
import latbench
assert latbench.__file__.startswith(src), latbench.__file__
import latbench.backends.tvm_schedules as rules
for name, value in (a.split("=", 1) for a in rest if "=" in a):
    assert hasattr(rules, name), name
    setattr(rules, name, int(value))
from latbench.backends.base import get_backend
from latbench.devices import get_device
from latbench.jobs import Job
from latbench.space import Space
space = Space(224, 1.0)
rng = random.Random(seed)
archs = [(f"net{i:02d}", space.sample(rng)) for i in range(nets)]
archs.append(("mbv2-3x3_MBConv6", space.arch([l.candidates[0] if l.index == 0 else "3x3_MBConv6"
                                              for l in space.layers])))
jobs = [(f"op{i:02d}", Job(key, "ops")) for i, key in enumerate(ops)] if ops else \
    [(name, Job(name, "nets", arch.to_dict())) for name, arch in archs]
out.mkdir(parents=True, exist_ok=True)
import numpy as np, torch, tvm
from tvm import relax
fallbacks, worst = 0, 0.0
for name, job in jobs:
    module, x = job.module_and_input()
    notes = get_backend("tvm").build(module, x, get_device("local-cpu"), out / f"{name}.so")
    np.save(out / f"{name}.npy", x.numpy())
    fallbacks += len(notes.get("fallbacks") or [])
    with torch.no_grad():
        want = module(x).numpy()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / f"{name}.so")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu())).numpy()
    worst = max(worst, float(np.abs(got - want).max() / max(1e-6, float(np.abs(want).max()))))
print(f"  {len(jobs)} {'ops' if ops else 'networks'}: {fallbacks} functions left unscheduled (a rule raised), "
      f"max error vs PyTorch {worst:.1e} of the output's range", flush=True)
"""


def checkout(rev: str, into: Path) -> Path:
    """The source tree of ``rev`` (this checkout itself for HEAD's working tree: ``--new .``)."""
    if rev == ".":
        return ROOT
    into.mkdir(parents=True)
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True, timeout=120)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def build_libraries(src: Path, out: Path, nets: int = 0, seed: int = 15, ops: Sequence[str] = (),
                    overrides: Sequence[str] = ()) -> None:
    """Build (in a process of its own, with ``src``'s latbench) the ops, else the networks, into ``out``:
    ``<name>.so`` and its input ``<name>.npy``; each checked against PyTorch. ``overrides``: ``NAME=VALUE``
    constants of the rules set before the builds."""
    subprocess.run([sys.executable, "-c", BUILD, str(src), str(out), str(nets), str(seed), *ops, *overrides],
                   check=True, timeout=3600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def time_interleaved(dirs: dict[str, Path], rounds: int, gap_ms: float) -> dict[tuple[str, str], list[float]]:
    """(tag, name) → ms per round of every library of ``dirs`` (tag → directory of :func:`build_libraries`),
    all loaded in this process and visited once per round in a shuffled order, ``gap_ms`` apart; a visit is
    the median of 5 repeats of >= 20 ms in the Relax VM."""
    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    evals, inputs = {}, {}
    for tag, d in dirs.items():
        for lib in sorted(d.glob("*.so")):
            vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
            evals[(tag, lib.stem)] = vm.time_evaluator("main", dev, number=1, repeat=5, min_repeat_ms=20)
            inputs[(tag, lib.stem)] = tvm.runtime.tensor(np.load(lib.with_suffix(".npy")), dev)
    ms: dict[tuple[str, str], list[float]] = {k: [] for k in evals}
    for r in range(rounds):
        for key in random.Random(r).sample(list(evals), len(evals)):
            time.sleep(gap_ms / 1e3)
            ms[key].append(statistics.median(evals[key](inputs[key]).results) * 1e3)
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision of the old rules")
    ap.add_argument("--new", default=".", help="git revision of the new rules ('.': this working tree)")
    ap.add_argument("--nets", type=int, default=10, help="random networks (+ the MobileNetV2-style net)")
    ap.add_argument("--seed", type=int, default=15, help="seed of the random networks (backends.py's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--ops", nargs="+", metavar="SUBSTRING",
                    help="whole ops instead of networks: the space's ops at 224 whose key contains any of these")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from latbench.space import Space

    keys = [op.key for op in Space(224, 1.0).distinct_ops() if any(s in op.key for s in args.ops)] if args.ops else []
    if args.ops and not keys:
        print(f"no op of the space matches {args.ops}", file=sys.stderr)
        return 2
    labels = {f"op{i:02d}": key for i, key in enumerate(keys)}
    with tempfile.TemporaryDirectory() as tmp:
        libs: dict[str, Path] = {}
        for tag, rev in (("old", args.old), ("new", args.new)):
            src = checkout(rev, Path(tmp) / f"src-{tag}")
            libs[tag] = Path(tmp) / f"libs-{tag}"
            t0 = time.perf_counter()
            build_libraries(src, libs[tag], args.nets, args.seed, keys)
            print(f"built {tag} ({rev}) in {time.perf_counter() - t0:.0f} s", flush=True)
        ms = time_interleaved(libs, args.rounds, args.gap_ms)
    from latbench.facts import host_facts

    facts = host_facts()
    print(f"{args.rounds} interleaved rounds, {args.threads} threads, visits {args.gap_ms:g} ms apart; "
          f"{facts.get('cpu_model')} ({facts.get('llvm_cpu')}), load avg {os.getloadavg()[0]:.1f}")
    medians = []
    for net in sorted({n for _, n in ms}):
        ratios = [b / a for a, b in zip(ms[("old", net)], ms[("new", net)])]
        medians.append(statistics.median(ratios))
        old, new = statistics.median(ms[("old", net)]), statistics.median(ms[("new", net)])
        print(f"  {labels.get(net, net)[:80]:18s} old {old:7.3f} ms  new {new:7.3f} ms  new/old {medians[-1]:.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")
    print(f"new/old over {len(medians)} {'ops' if keys else 'networks'}: median {statistics.median(medians):.3f}, "
          f"min {min(medians):.3f}, max {max(medians):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
