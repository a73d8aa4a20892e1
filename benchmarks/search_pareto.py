"""The paper's claims at our scale: searched networks vs random and uniform baselines at matched latency.

For three latency targets T of a device's LUT (deployment 224 px; default: the 25/50/75 % quantiles of
the predicted latency of ``--pool`` seeded random networks of the space, or ``--targets``):

1. search with the binary-gate gradient and with REINFORCE (``python -m search.run --mode ...
   --target-latency T``; the gradient search uses ``add#abs`` with τ = 0.1, which steers the returned
   argmax net to T; REINFORCE the paper's reward acc·(T/LAT)^w) and take the derived ``arch.json``;
2. baselines at matched predicted latency: ``--random`` seeded random networks, drawn from the pool among
   those within ±``--match`` (5 %) of a target, spread over the targets; the uniform hand-designed nets
   (every layer one op: 3x3_MBConv3 … 7x7_MBConv6) whose predicted latency lies within
   ±``--uniform-window`` of the targets' span (each reported with its own latency, the nearest target and
   whether it is within ±5 % of it);
3. measure every network end to end on ``--target`` in one interleaved campaign
   (``python -m latbench measure --arch ... --no-ops``; rows in ``OUT/data/<device>/archs-<backend>.parquet``);
4. retrain every network with one fixed budget (``python -m search.train``, same seed, same steps);
5. print the table (network, kind, target, predicted ms, measured ms, test accuracy) and, per target and
   method, whether the searched net's accuracy is on or above the best baseline's among the baselines at
   ≤ its measured latency. ``--json`` (default ``OUT/pareto.json``) and a plot of accuracy vs measured
   latency (``OUT/pareto.png``).

Every step is a subprocess with a timeout. ``OUT/journal.jsonl`` holds one line per finished network
(after its retraining); ``--resume`` skips those (and continues an interrupted search / retraining from
its checkpoint); the measurement campaign is resumable by itself.

    python benchmarks/search_pareto.py --predictor runs/demo/lut.pkl --budget smoke --out runs/pareto-smoke
    python benchmarks/search_pareto.py --predictor runs/demo/lut.pkl --budget default --out runs/pareto --resume

First run here (2026-12-02, demo LUT of this machine, 2 cores shared with 2 other workers, load 4–9;
``--budget short --search-batches 20 --train-batches 100 --jobs 2 --threads 1``: searches 2 epochs × 20
batches of 32 with 1 warm-up, retraining 100 steps of 32, test on 2560 images): no searched net reached the
best baseline at ≤ its measured latency (best: random 0.688 @ 16.0 ms; gradient 0.616–0.676, REINFORCE 0.592
— REINFORCE returned the same net for all three targets: T only scales the reward acc·(T/LAT)^w by a
constant). Measured ≈ 2.1× predicted on the loaded box (Spearman 0.85). Budgets this small rank nets by
noise; they check the pipeline, not the paper's claim.

Without ``--predictor``, a LUT is built as ``latbench demo`` does: the space's ops measured at 224 px on
``--target`` (``OUT/data``), fitted, and calibrated on 3 measured random networks (``OUT/lut.pkl``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latbench.space import Arch, Space, random_archs  # noqa: E402

log = logging.getLogger("pareto")

KINDS = ("searched-gradient", "searched-reinforce", "random", "uniform")
UNIFORM_OPS = ("3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "5x5_MBConv6", "7x7_MBConv3", "7x7_MBConv6")
JOURNAL = "journal.jsonl"


@dataclass(frozen=True)
class Budget:
    """What every search and every retraining of one benchmark run costs (the same for all networks)."""

    search_epochs: int
    search_warmup: int
    search_batches: int
    search_val_batches: int
    search_test_batches: int
    train_epochs: int
    train_batches: int
    train_val_batches: int
    train_test_batches: int  # 0 = the whole test split
    n_random: int
    batch_size: int = 64
    arch_lr: float = 0.05  # short searches only move α with a larger arch lr and a step every batch
    arch_every: int = 1
    measure_rounds: int | None = None  # None: the device's default plan


BUDGETS: dict[str, Budget] = {
    # a few minutes: checks that every step runs and the table prints
    "smoke": Budget(search_epochs=2, search_warmup=1, search_batches=3, search_val_batches=2,
                    search_test_batches=2, train_epochs=1, train_batches=8, train_val_batches=2,
                    train_test_batches=8, n_random=3, batch_size=16, measure_rounds=1),
    # what fits ~45 min on 2 shared cores (with --jobs 2 --threads 1)
    "short": Budget(search_epochs=2, search_warmup=1, search_batches=40, search_val_batches=5,
                    search_test_batches=10, train_epochs=1, train_batches=150, train_val_batches=5,
                    train_test_batches=80, n_random=10, batch_size=32),
    # the real run
    "default": Budget(search_epochs=8, search_warmup=2, search_batches=200, search_val_batches=20,
                      search_test_batches=50, train_epochs=3, train_batches=400, train_val_batches=20,
                      train_test_batches=0, n_random=12),
}


@dataclass
class Net:
    """One network of the benchmark."""

    name: str
    kind: str
    target: float  # the target it belongs to (nearest target for uniform nets)
    arch: Arch | None = None  # None for searched nets until their search ran
    predicted_ms: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def searched(self) -> bool:
        return self.kind.startswith("searched")


# -- networks of the benchmark -------------------------------------------------------------------
def pool_latencies(predictor: Any, space: Space, n: int, seed: int) -> tuple[list[Arch], list[float]]:
    """``n`` distinct seeded random archs of ``space`` and their predicted latency (ms)."""
    archs = random_archs(space, n, seed)
    return archs, [float(v) for v in predictor.predict(archs)]


def quantile_targets(latencies: Sequence[float], qs: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    s = sorted(latencies)
    out = []
    for q in qs:
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 3))
    return out


def matched_random(archs: Sequence[Arch], lats: Sequence[float], targets: Sequence[float], n: int,
                   match: float, seed: int) -> list[Net]:
    """``n`` random nets spread over ``targets`` (round robin), each within ±``match`` of its target's
    predicted latency; deterministic per seed; a net is used for one target only."""
    rng = random.Random(seed)
    pools = []
    for t in targets:
        idx = [i for i, v in enumerate(lats) if abs(v - t) <= match * t]
        rng.shuffle(idx)
        pools.append(idx)
    used: set[int] = set()
    counts = [0] * len(targets)
    out: list[Net] = []
    while len(out) < n:
        progressed = False
        for j, t in enumerate(targets):
            if len(out) >= n:
                break
            while pools[j] and pools[j][0] in used:
                pools[j].pop(0)
            if not pools[j]:
                continue
            i = pools[j].pop(0)
            used.add(i)
            counts[j] += 1
            out.append(Net(f"random-T{j + 1}-{counts[j]}", "random", t, archs[i], lats[i], {"pool_index": i}))
            progressed = True
        if not progressed:
            log.warning("only %d random nets within ±%.0f %% of the targets (wanted %d); enlarge --pool",
                        len(out), 100 * match, n)
            break
    return out


def uniform_nets(predictor: Any, space: Space, targets: Sequence[float], ops: Sequence[str],
                 window: float, match: float) -> list[Net]:
    """The uniform nets whose predicted latency lies in [(1-window)·min T, (1+window)·max T]."""
    out = []
    lo, hi = (1 - window) * min(targets), (1 + window) * max(targets)
    for op in ops:
        a = space.uniform(op)
        ms = float(predictor.predict(a))
        t = min(targets, key=lambda t: abs(t - ms))
        if lo <= ms <= hi:
            out.append(Net(f"uniform-{op}", "uniform", t, a, ms, {"matched": abs(ms - t) <= match * t}))
        else:
            log.info("uniform %s: predicted %.2f ms, outside %.2f–%.2f ms: left out", op, ms, lo, hi)
    return out


# -- the journal ---------------------------------------------------------------------------------
class Journal:
    """JSON lines: a header ``{"config": ...}`` then one record per finished network."""

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        self.path, self.lock = path, threading.Lock()
        self.done: dict[str, dict[str, Any]] = {}
        if path.exists() and path.stat().st_size:
            if not resume:
                raise SystemExit(f"{path} exists: pass --resume to continue that run, or another --out")
            lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
            old = lines[0].get("config") if lines else None
            if old != config:
                diff = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
                raise SystemExit(f"--resume: {path} was made with other settings ({', '.join(diff)}); "
                                 f"use the same options or another --out")
            self.done = {r["name"]: r for r in lines[1:] if "name" in r}
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config": config}) + "\n")

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.done[record["name"]] = record


# -- subprocesses --------------------------------------------------------------------------------
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def run_cmd(cmd: list[str], timeout: float, log_path: Path) -> None:
    """Run ``cmd`` (output to ``log_path``); raise RuntimeError on failure or timeout (the child is killed)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.debug("$ %s", " ".join(cmd))
    with open(log_path, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} … (log {log_path})") from None
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    if code:
        tail = log_path.read_text().strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {code}: {' '.join(cmd[:4])} … {tail[0]} (log {log_path})")


def stop_children(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT: end the running subprocesses (their checkpoints let --resume continue), then exit."""
    with _CHILDREN_LOCK:
        for proc in _CHILDREN:
            proc.terminate()
    log.warning("signal %d: stopped %d subprocess(es); rerun with --resume to continue", signum, len(_CHILDREN))
    os._exit(128 + signum)


def search_net(net: Net, args: argparse.Namespace, b: Budget, out: Path) -> None:
    """Run (or reuse) the search of ``net``; sets its arch and predicted latency."""
    d = out / "search" / net.name
    if not (d / "summary.json").exists():
        mode = net.kind.split("-")[1]
        cmd = [sys.executable, "-m", "search.run", "--predictor", str(args.predictor), "--mode", mode,
               "--target-latency", str(net.target), "--out", str(d), "--epochs", str(b.search_epochs),
               "--warmup-epochs", str(b.search_warmup), "--train-batches", str(b.search_batches),
               "--val-batches", str(b.search_val_batches), "--test-batches", str(b.search_test_batches),
               "--arch-lr", str(b.arch_lr), "--arch-every", str(b.arch_every), "--batch-size", str(b.batch_size),
               "--seed", str(args.seed)]
        if mode == "gradient":
            cmd += ["--latency-loss", "add#abs", "--lambda2", str(args.abs_lambda),
                    "--latency-temperature", str(args.temperature)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if (d / "checkpoint.pt").exists() and args.resume:
            cmd.append("--resume")
        t0 = time.perf_counter()
        run_cmd(cmd, args.timeout_search, d / "stdout.log")
        log.info("searched %s (T = %.2f ms) in %.0f s", net.name, net.target, time.perf_counter() - t0)
    s = json.loads((d / "summary.json").read_text())
    net.arch = Arch.load(d / "arch.json")
    net.predicted_ms = float(s["predicted_ms"])
    net.extra.update({"expected_latency_ms": s.get("expected_latency_ms"), "supernet_test_acc": s.get("test_acc"),
                      "search_seconds": s.get("seconds")})


def retrain(net: Net, args: argparse.Namespace, b: Budget, out: Path) -> dict[str, Any]:
    """Retrain ``net`` from scratch with the budget; returns its summary."""
    assert net.arch is not None
    d = out / "train" / net.name
    arch_file = out / "archs" / f"{net.name}.json"
    net.arch.save(arch_file)
    cmd = [sys.executable, "-m", "search.train", "--arch", str(arch_file), "--out", str(d),
           "--epochs", str(b.train_epochs), "--train-batches", str(b.train_batches),
           "--val-batches", str(b.train_val_batches), "--test-batches", str(b.train_test_batches),
           "--batch-size", str(b.batch_size), "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if (d / "checkpoint.pt").exists() and args.resume:
        cmd.append("--resume")
    run_cmd(cmd, args.timeout_train, d / "stdout.log")
    return dict(json.loads((d / "summary.json").read_text()))


def measure_all(nets: Sequence[Net], args: argparse.Namespace, b: Budget, out: Path) -> dict[str, float]:
    """Measure every net in one campaign (``latbench measure --arch ... --no-ops``); key → median ms."""
    import pandas as pd

    files = []
    for n in nets:
        assert n.arch is not None
        files.append(n.arch.save(out / "archs" / f"{n.name}.json"))
    cmd = [sys.executable, "-m", "latbench", "measure", "--target", args.target, "--out", str(out / "data"),
           "--no-ops"]
    for f in files:
        cmd += ["--arch", str(f)]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.cache:
        cmd += ["--cache", args.cache]
    if b.measure_rounds:
        cmd += ["--rounds", str(b.measure_rounds)]
    t0 = time.perf_counter()
    while True:
        left = args.timeout_measure - (time.perf_counter() - t0)
        try:
            run_cmd(cmd, left, out / "measure.log")
        except RuntimeError as e:  # some nets may have failed; take what came back
            if "is busy" in str(e) and left > 60:  # another campaign times on the device: one at a time
                log.info("device %s busy with another campaign; retrying in 30 s", args.target)
                time.sleep(30)
                continue
            log.warning("measurement: %s", e)
        break
    from latbench.tables import ok_rows, read_table

    tables = sorted((out / "data").glob("*/archs-*.parquet")) + sorted((out / "data").glob("*/archs-*.journal*"))
    frames = []
    for p in tables:
        try:
            frames.append(read_table(p.with_suffix(".parquet") if p.suffix != ".parquet" else p))
        except Exception as e:  # noqa: BLE001 - a table that cannot be read is reported, not fatal
            log.warning("cannot read %s: %s", p, e)
    if not frames:
        return {}
    df = ok_rows(pd.concat(frames, ignore_index=True)).drop_duplicates("key", keep="last")
    log.info("measured %d of %d networks in %.0f s", sum(n.arch.key in set(df["key"]) for n in nets if n.arch),
             len(nets), time.perf_counter() - t0)
    return {str(k): float(v) for k, v in zip(df["key"], df["median_ms"])}


def build_lut(args: argparse.Namespace, out: Path) -> Path:
    """A LUT as ``latbench demo`` makes it: the space's ops at 224 px measured on the device, fitted,
    calibrated on 3 measured random networks (disjoint seeds from the benchmark's)."""
    from predictors import LUTPredictor, save_predictor
    from latbench.tables import ok_rows, read_table

    path = out / "lut.pkl"
    if path.exists():
        return path
    data = out / "data"
    common = ["--target", args.target, "--out", str(data)] + (["--cache", args.cache] if args.cache else []) + (
        ["--backend", args.backend] if args.backend else [])
    log.info("no --predictor: measuring the space's ops at 224 px on %s (like latbench demo) …", args.target)
    run_cmd([sys.executable, "-m", "latbench", "measure", "--resolution", "224", *common],
            args.timeout_measure, out / "lut-ops.log")
    cal = random_archs(Space(resolution=224), 3, 10_000)
    files = [a.save(out / "archs" / f"calibration-{i}.json") for i, a in enumerate(cal)]
    run_cmd([sys.executable, "-m", "latbench", "measure", "--no-ops", *common,
             *[x for f in files for x in ("--arch", str(f))]], args.timeout_measure, out / "lut-cal.log")
    ops_table = sorted(data.glob("*/ops-*.parquet"))[0]
    lut = LUTPredictor().fit(ops_table)
    nets = ok_rows(read_table(sorted(data.glob("*/archs-*.parquet"))[0])).set_index("key")
    ok = [a for a in cal if a.key in nets.index]
    if ok:
        lut.fit_calibration(ok, [float(nets.loc[a.key, "median_ms"]) for a in ok])
    save_predictor(lut, path)
    log.info("LUT: %s (calibrated on %d networks)", path, len(ok))
    return path


# -- the verdict, the table, the plot ------------------------------------------------------------
def verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per searched net: the best baseline (random/uniform, any target) at ≤ its measured latency, and
    whether the searched net's test accuracy is on or above it (None: no such baseline or no figures)."""
    base = [r for r in rows if r["kind"] in ("random", "uniform") and _finite(r.get("measured_ms"))
            and _finite(r.get("test_acc"))]
    out = []
    for r in rows:
        if not r["kind"].startswith("searched"):
            continue
        v: dict[str, Any] = {"name": r["name"], "kind": r["kind"], "target": r["target"],
                             "measured_ms": r.get("measured_ms"), "test_acc": r.get("test_acc"),
                             "best_baseline": None, "ok": None}
        if _finite(r.get("measured_ms")) and _finite(r.get("test_acc")):
            cands = [b for b in base if b["measured_ms"] <= r["measured_ms"]]
            if cands:
                best = max(cands, key=lambda b: b["test_acc"])
                v["best_baseline"] = {k: best[k] for k in ("name", "measured_ms", "test_acc")}
                v["ok"] = r["test_acc"] >= best["test_acc"]
        out.append(v)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: Any, spec: str, width: int) -> str:
    return format(x, spec).rjust(width) if _finite(x) else "-".rjust(width)


def table(rows: Sequence[dict[str, Any]], match: float) -> str:
    lines = [f"{'network':<28} {'kind':<19} {'target':>7} {'pred ms':>8} {'vs T':>7} {'meas ms':>8} {'test acc':>8}"]
    for r in sorted(rows, key=lambda r: (r["target"], KINDS.index(r["kind"]), r["predicted_ms"])):
        dev = 100 * (r["predicted_ms"] - r["target"]) / r["target"]
        flag = "" if abs(dev) <= 100 * match or r["kind"].startswith("searched") else "*"
        lines.append(f"{r['name']:<28} {r['kind']:<19} {r['target']:7.2f} {r['predicted_ms']:8.2f} "
                     f"{dev:+6.1f}%{flag or ' '}{_fmt(r.get('measured_ms'), '.2f', 8)} "
                     f"{_fmt(r.get('test_acc'), '.4f', 8)}")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], targets: Sequence[float], path: Path, title: str) -> Path | None:
    """Test accuracy vs measured latency, one marker per kind; targets as dotted lines (latbench.plots style)."""
    try:
        from latbench.plots import plt, to_png
    except ImportError as e:  # pragma: no cover - matplotlib missing
        log.warning("no plot: %s", e)
        return None
    style = {"searched-gradient": ("*", "crimson", 160), "searched-reinforce": ("P", "darkorange", 110),
             "random": ("o", "steelblue", 40), "uniform": ("s", "seagreen", 60)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for kind, (marker, color, size) in style.items():
        pts = [r for r in rows if r["kind"] == kind and _finite(r.get("measured_ms")) and _finite(r.get("test_acc"))]
        if pts:
            ax.scatter([r["measured_ms"] for r in pts], [r["test_acc"] for r in pts], marker=marker, c=color,
                       s=size, label=kind, edgecolors="black", linewidths=0.4, zorder=3)
            plotted = True
    for i, t in enumerate(targets):
        ax.axvline(t, color="grey", ls=":", lw=1, label="targets (LUT ms)" if i == 0 else None)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("test accuracy (retrained)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if not plotted:
        ax.text(0.5, 0.5, "no measured and retrained network", ha="center", transform=ax.transAxes)
    to_png(fig, path)
    return path


# -- main ----------------------------------------------------------------------------------------
def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--predictor", default=None, help="LUT .pkl (default: build one like latbench demo, OUT/lut.pkl)")
    p.add_argument("--targets", type=floats, default=None,
                   help="target latencies in ms (default: the 25/50/75 %% quantiles of the pool's predictions)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="default",
                   help="search/retraining budget preset: smoke (minutes), short (~45 min), default (the real run)")
    p.add_argument("--search-epochs", type=int, default=None, help="override the preset")
    p.add_argument("--search-batches", type=int, default=None, help="override the preset")
    p.add_argument("--train-batches", type=int, default=None, help="override the preset (steps per epoch)")
    p.add_argument("--train-epochs", type=int, default=None, help="override the preset")
    p.add_argument("--random", type=int, default=None, help="random baselines (default: the preset's, >= 10 but smoke)")
    p.add_argument("--methods", default="gradient,reinforce", help="search methods (comma separated)")
    p.add_argument("--uniform", default=",".join(UNIFORM_OPS), help="uniform nets' ops (comma separated)")
    p.add_argument("--uniform-window", type=float, default=0.2,
                   help="uniform nets within this fraction below the lowest / above the highest target (default 0.2)")
    p.add_argument("--match", type=float, default=0.05, help="random nets within ±this of a target (default 0.05)")
    p.add_argument("--pool", type=int, default=5000, help="random archs predicted to pick from (default 5000)")
    p.add_argument("--abs-lambda", type=float, default=20.0, help="gradient search: λ of add#abs (default 20)")
    p.add_argument("--temperature", type=float, default=0.1, help="gradient search: τ of the latency term (0.1)")
    p.add_argument("--target", default="local-cpu", help="device to measure on (default local-cpu)")
    p.add_argument("--backend", default=None)
    p.add_argument("--cache", default=None, help="artifact cache (default $LATBENCH_CACHE)")
    p.add_argument("--no-measure", dest="measure", action="store_false", help="skip the measurement")
    p.add_argument("--measure-alongside", action="store_true",
                   help="measure while the networks retrain (saves wall time; timing shares the CPU with them)")
    p.add_argument("--jobs", type=int, default=1, help="searches / retrainings in parallel (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per search/retraining")
    p.add_argument("--timeout-search", type=float, default=3600.0, help="seconds per search (default 3600)")
    p.add_argument("--timeout-train", type=float, default=3600.0, help="seconds per retraining (default 3600)")
    p.add_argument("--timeout-measure", type=float, default=3600.0, help="seconds for the measurement (default 3600)")
    p.add_argument("--out", default="runs/search_pareto")
    p.add_argument("--json", default=None, help="results JSON (default OUT/pareto.json)")
    p.add_argument("--plot", default=None, help="plot PNG (default OUT/pareto.png)")
    p.add_argument("--resume", action="store_true", help="skip the networks OUT/journal.jsonl says are done")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def budget_of(args: argparse.Namespace) -> Budget:
    b = asdict(BUDGETS[args.budget])
    for opt, key in (("search_epochs", "search_epochs"), ("search_batches", "search_batches"),
                     ("train_batches", "train_batches"), ("train_epochs", "train_epochs"), ("random", "n_random")):
        if getattr(args, opt) is not None:
            b[key] = getattr(args, opt)
    return Budget(**b)


def plan(args: argparse.Namespace, b: Budget, methods: Sequence[str], out: Path
         ) -> tuple[Any, Space, list[float], list[float], list[Net], dict[str, Any]]:
    """The predictor, its deployment space, the targets, the pool's predicted latencies, the networks
    of the run (searched ones without arch yet) and the run's config (the journal's header)."""
    if args.predictor is None:
        args.predictor = str(build_lut(args, out))
    from predictors import load_predictor

    predictor = load_predictor(args.predictor)
    space = predictor.deployment_space()
    t0 = time.perf_counter()
    pool, lats = pool_latencies(predictor, space, args.pool, args.seed)
    targets = args.targets or quantile_targets(lats)
    log.info("LUT %s at %d px: %d random nets %.2f–%.2f ms predicted (%.1f s); targets %s ms", args.predictor,
             space.resolution, len(pool), min(lats), max(lats), time.perf_counter() - t0, targets)

    nets = [Net(f"{m}-T{j + 1}", f"searched-{m}", t) for j, t in enumerate(targets) for m in methods]
    nets += matched_random(pool, lats, targets, b.n_random, args.match, args.seed)
    nets += uniform_nets(predictor, space, targets, [o for o in args.uniform.split(",") if o], args.uniform_window,
                         args.match)
    config = {"predictor": str(args.predictor), "targets": targets, "budget": asdict(b), "seed": args.seed,
              "methods": methods, "abs_lambda": args.abs_lambda, "temperature": args.temperature,
              "nets": [n.name for n in nets]}
    return predictor, space, targets, lats, nets, config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t_all = time.perf_counter()
    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b = budget_of(args)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in ("gradient", "reinforce"):
            raise SystemExit(f"--methods: unknown {m!r}")
    predictor, space, targets, lats, nets, config = plan(args, b, methods, out)
    journal = Journal(out / JOURNAL, config, args.resume)
    log.info("%d networks: %s; budget %s %s", len(nets), ", ".join(n.name for n in nets), args.budget, asdict(b))

    # 1. searches (the searched nets' archs)
    failed: dict[str, str] = {}
    n_total = len(nets)
    searched = [n for n in nets if n.searched]
    n_searched = [0]

    def search_one(n: Net) -> None:
        if n.name in journal.done:
            rec = journal.done[n.name]
            n.arch, n.predicted_ms = Arch.from_dict(rec["arch"]), rec["predicted_ms"]
            return
        try:
            search_net(n, args, b, out)
        except RuntimeError as e:
            failed[n.name] = str(e)
            log.error("search %s failed: %s", n.name, e)
            return
        n_searched[0] += 1
        log.info("[search %d/%d] %s: predicted %.2f ms (T %.2f, %+.1f %%), E[LAT] %.2f ms", n_searched[0],
                 len(searched), n.name, n.predicted_ms, n.target, 100 * (n.predicted_ms - n.target) / n.target,
                 n.extra.get("expected_latency_ms") or float("nan"))

    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        list(ex.map(search_one, searched))
    ready = [n for n in nets if n.arch is not None]

    # 2. one measurement campaign for all networks (drift hits all alike; resumable)
    #    With --measure-alongside it runs while the networks retrain (compiling whole nets dominates it
    #    and is CPU work like retraining; the rounds' reference op normalises the timing on a busy box).
    measured: dict[str, float] = {}
    measurer: threading.Thread | None = None
    if args.measure:
        def measure_job() -> None:
            measured.update(measure_all(ready, args, b, out))

        measurer = threading.Thread(target=measure_job, name="measure")
        measurer.start()
        if not args.measure_alongside:
            measurer.join()

    # 3. retrain every network with the same budget
    done_count = [sum(n.name in journal.done for n in ready)]

    def train_one(n: Net) -> None:
        if n.name in journal.done:
            return
        t1 = time.perf_counter()
        try:
            s = retrain(n, args, b, out)
        except RuntimeError as e:
            failed[n.name] = str(e)
            log.error("retraining %s failed: %s", n.name, e)
            return
        assert n.arch is not None
        rec = {"name": n.name, "kind": n.kind, "target": n.target, "arch": n.arch.to_dict(),
               "predicted_ms": n.predicted_ms, "test_acc": s["test_acc"], "val_acc": s.get("val_acc"),
               "params": s.get("params"), "train_seconds": round(time.perf_counter() - t1, 1), **n.extra}
        journal.add(rec)
        done_count[0] += 1
        log.info("[%d/%d] %-26s %-18s T %.2f  predicted %.2f ms  measured %s ms  test acc %.4f  (%.0f s)",
                 done_count[0], n_total, n.name, n.kind, n.target, n.predicted_ms,
                 _fmt(measured.get(n.arch.key), ".2f", 0).strip() or "?", s["test_acc"], rec["train_seconds"])

    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        list(ex.map(train_one, ready))
    if measurer is not None:
        measurer.join()

    # 4. results
    rows = []
    for n in ready:
        rec = dict(journal.done.get(n.name, {"name": n.name, "kind": n.kind, "target": n.target,
                                             "arch": n.arch.to_dict() if n.arch else None,
                                             "predicted_ms": n.predicted_ms}))
        rec["measured_ms"] = measured.get(n.arch.key) if n.arch else None
        if n.kind == "uniform":
            rec["matched"] = abs(n.predicted_ms - n.target) <= args.match * n.target
        rows.append(rec)
    vs = verdicts(rows)
    title = (f"{Path(args.predictor).name}, {space.resolution} px on {args.target}: budget {args.budget} "
             f"(search {b.search_epochs}×{b.search_batches}, retrain {b.train_epochs}×{b.train_batches} steps)")
    print(f"\n{title}\ntargets {', '.join(f'{t:.2f}' for t in targets)} ms; "
          f"* = predicted latency more than ±{100 * args.match:.0f} % from the target")
    print(table(rows, args.match))
    for v in vs:
        if v["ok"] is None:
            why = "no figures" if not _finite(v["test_acc"]) or not _finite(v["measured_ms"]) else \
                "no baseline at ≤ its measured latency"
            print(f"{v['name']:<16} T {v['target']:.2f}: n/a ({why})")
        else:
            bb = v["best_baseline"]
            print(f"{v['name']:<16} T {v['target']:.2f}: acc {v['test_acc']:.4f} @ {v['measured_ms']:.2f} ms vs best "
                  f"baseline {bb['name']} {bb['test_acc']:.4f} @ {bb['measured_ms']:.2f} ms → "
                  f"{'ON/ABOVE' if v['ok'] else 'BELOW'}")
    for name, why in failed.items():
        print(f"FAILED {name}: {why}")
    png = plot(rows, targets, Path(args.plot) if args.plot else out / "pareto.png", title)
    summary = {"config": config, "args": {k: v for k, v in vars(args).items()}, "targets": targets,
               "pool": {"n": len(lats), "min_ms": min(lats), "max_ms": max(lats)}, "results": rows,
               "verdicts": vs, "failed": failed, "plot": str(png) if png else None,
               "seconds": round(time.perf_counter() - t_all, 1)}
    json_path = Path(args.json) if args.json else out / "pareto.json"
    json_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"written {json_path}" + (f", {png}" if png else "") + f" ({summary['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
