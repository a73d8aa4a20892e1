"""``python -m search.run --predictor lut.pkl``: a ProxylessNAS search with a latency predictor.

The space is the predictor's: ProxylessNAS, or NAS-Bench-201's cells for a ``--space nasbench201``
predictor (:mod:`search.nb201`). Writes into ``--out``: ``arch.json`` (the derived architecture at the
predictor's deployment resolution, argmax of α per layer; for NAS-Bench-201 ``{"space", "arch_str",
"arch_index"}``), ``log.csv`` (one row per epoch), ``checkpoint.pt`` (every
epoch; ``--resume`` continues from it) and ``summary.json`` (predicted latency, accuracy, and the
measured latency with ``--measure``). :func:`main` is callable from Python and returns the exit code.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

from latbench.campaign import measure_archs
from latbench.errors import ConfigError, LatbenchError
from latbench.nasbench201 import NB201_CLASSES, NB201_RESOLUTION
from latbench.netconfig import NetConfig
from latbench.space import Arch
from latbench.spaces import NB201, get_space
from predictors import load_predictor
from search.entry import entry_point
from search.losses import LOSS_FORMS

if TYPE_CHECKING:  # search.latency and search.distributed import torch, which run() defers
    from search.distributed import DistContext
    from search.latency import LatencyPredictor, OpLatencyPredictor

log = logging.getLogger(__name__)


def build_parser(add_help: bool = True, verbose: bool = True) -> argparse.ArgumentParser:
    """The search's options (``add_help``/``verbose`` False: as a parent of ``latbench search``)."""
    p = argparse.ArgumentParser(
        prog="python -m search.run", add_help=add_help,
        description="ProxylessNAS search on the predictor's space (ProxylessNAS or NAS-Bench-201 cells) with a "
                    "latency predictor (the latency is that of the predictor's deployment resolution).")
    p.add_argument("--predictor", required=True,
                   help="predictor file (lut.pkl / xgb.pkl from 'latbench fit-predictor'); its space is searched")
    p.add_argument("--space", default=None,
                   help="search space (proxylessnas, nasbench201); default and checked: the predictor's")
    p.add_argument("--mode", choices=("gradient", "reinforce"), default="gradient",
                   help="architecture update: binary-gate gradient (default) or REINFORCE")
    p.add_argument("--binarize", choices=("two", "full_v2"), default="two",
                   help="gradient mode's architecture step: two = two sampled paths per layer, rescaled; "
                        "full_v2 = the active path forward, every candidate's gate gradient backward "
                        "(the official default). Default two (see search/README.md)")
    p.add_argument("--latency-loss", choices=LOSS_FORMS, default=None,
                   help="objective: paper = CE + λ2·E[LAT]; add#linear = CE + λ(E−T)/T; mul#log = "
                        "CE·α·(log E/log T)^β; add#abs = CE + λ|E−T|/T (ours; steers E[LAT] to T). "
                        "Default: mul#log with --target-latency, else paper")
    p.add_argument("--lambda2", type=float, default=None,
                   help="latency weight λ (default: paper 0.01/ms, add#linear 0.1, add#abs 0.5)")
    p.add_argument("--target-latency", type=float, default=None, metavar="T",
                   help="reference latency T in ms at the deployment resolution")
    p.add_argument("--latency-temperature", type=float, default=1.0, metavar="TAU",
                   help="the latency term uses softmax(α/τ): 1 = the paper's E[LAT]; e.g. 0.3 makes it follow "
                        "the argmax net, so a target T applies to the derived net (ours)")
    p.add_argument("--mul-alpha", type=float, default=0.2, help="α of mul#log (default 0.2)")
    p.add_argument("--mul-beta", type=float, default=0.3, help="β of mul#log (default 0.3)")
    p.add_argument("--epochs", type=int, default=10, help="total epochs, warm-up included (default 10)")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="weights-only epochs first (default: a quarter of --epochs)")
    p.add_argument("--train-batches", type=int, default=None, help="weight steps per epoch (default: whole split)")
    p.add_argument("--val-batches", type=int, default=20, help="held-out batches to validate each epoch (default 20)")
    p.add_argument("--test-batches", type=int, default=50,
                   help="test batches for the final accuracy (default 50; 0 = the whole test split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="weight learning rate, cosine schedule (default: the official 0.025 per 256 images, "
                        "scaled to --batch-size)")
    p.add_argument("--weight-decay", type=float, default=4e-5, help="λ1 of the paper's λ1‖w‖²")
    p.add_argument("--arch-lr", type=float, default=1e-3, help="Adam learning rate of α (default 1e-3)")
    p.add_argument("--arch-every", type=int, default=5, help="an architecture step every N weight steps (default 5)")
    p.add_argument("--rl-samples", type=int, default=10, help="REINFORCE: nets sampled per step (default 10)")
    p.add_argument("--rl-baseline", choices=("official", "ema"), default="official",
                   help="REINFORCE baseline: official = update b first, then advantages R-b; ema = advantages "
                        "with the old b, then b = 0.99 b + 0.01 mean(R)")
    p.add_argument("--independent-init", action="store_true",
                   help="initialise every candidate independently (default: the candidates of a layer start "
                        "as one function, without which short supernet trainings stay at chance)")
    p.add_argument("--rl-tradeoff", type=float, default=0.1, help="REINFORCE: w in acc·(T/LAT)^w (default 0.1)")
    p.add_argument("--resolution", type=int, default=None,
                   help="training image size (default 28 for Fashion-MNIST, 32 for --data and for nasbench201)")
    p.add_argument("--data", default=None, help="ImageFolder tree (default: Fashion-MNIST from dataset-fashion-mnist)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="search_out", help="output folder (default search_out)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--measure", action="store_true", help="measure the derived net on --target")
    p.add_argument("--target", default="local-cpu", help="device for --measure (default local-cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dist-timeout", type=float, default=120.0, metavar="S",
                   help="under torchrun: seconds before a rank that waits on the others gives up (default 120)")
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    return p


def load_predictor_file(path: str | Path) -> LatencyPredictor | OpLatencyPredictor:
    """The predictor saved at ``path`` (the ``predictors`` package's safe loader); one that cannot give
    per-layer latencies (a whole-network ``xgb-arch`` predictor) is a one-line error."""
    if not Path(path).exists():
        raise LatbenchError(f"--predictor {path}: no such file; make one with 'latbench fit-predictor'")
    predictor = load_predictor(path)
    try:
        predictor.check_decomposable()
    except LatbenchError as e:
        raise type(e)(f"--predictor {path}: {e}") from None
    return predictor


def check_space(args: argparse.Namespace, space: str) -> None:
    """``--space`` (if given) must be the predictor's; ``--measure`` is ProxylessNAS only."""
    if args.space is not None and get_space(args.space).name != space:
        raise ConfigError(f"--space {get_space(args.space).name}: the predictor {args.predictor} is for the {space} "
                          "space; pass a predictor of that space (fit-predictor --space NAME) or drop --space")
    if args.measure and space == NB201:
        raise ConfigError(f"--measure measures ProxylessNAS nets only; measure the found {NB201} cell with "
                          "'latbench measure --space nasbench201 --space-arch ARCH_STR'")


def write_arch(arch: Arch | dict[str, Any], out: Path) -> None:
    """OUT/arch.json (and for ProxylessNAS OUT/net.config, the official format that ``latbench measure
    --net-config`` takes); a NAS-Bench-201 arch is its dict (what ``latbench predict --space-arch`` reads)."""
    if isinstance(arch, Arch):
        arch.save(out / "arch.json")
        NetConfig.from_arch(arch).save(out / "net.config")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "arch.json").write_text(json.dumps(arch, indent=1) + "\n")


def deployment(arch: Arch | dict[str, Any]) -> dict[str, Any]:
    """The shape the predicted latency is for."""
    if isinstance(arch, Arch):
        return {"resolution": arch.resolution, "width_mult": arch.width_mult, "n_classes": arch.n_classes}
    return {"space": NB201, "resolution": NB201_RESOLUTION, "n_classes": NB201_CLASSES}


def measure(arch: Arch, device: str, out_dir: Path) -> float:
    """Median latency (ms) of ``arch`` on ``device`` through the project's profiling path."""
    df = measure_archs([arch], device, out_dir)
    if len(df) == 0 or "median_ms" not in df.columns:
        raise LatbenchError(f"--measure: no measurement came back for the derived net on {device}")
    row = df.iloc[0]
    if "status" in df.columns and row["status"] != "ok":
        why = row.get("error", row["status"])
        raise LatbenchError(f"--measure: measuring the derived net on {device} failed: {why}")
    return float(row["median_ms"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the search described by parsed ``args``; returns the summary (also OUT/summary.json).

    Under ``torchrun`` every rank runs this with the same arguments (``--batch-size`` is the global
    batch; see :mod:`search.distributed`); rank 0 writes the files."""
    from search.distributed import session  # lazy: imports torch

    with session(args.device, args.dist_timeout) as ddp:
        return _run(args, ddp)


def _run(args: argparse.Namespace, ddp: DistContext) -> dict[str, Any]:
    # Deferred: torch (and search.data/search.trainer, which import it) take seconds to import;
    # `--help` and argument errors stay instant.
    import torch

    from search.data import load_dataset  # lazy: imports torch
    from search.distributed import device_for  # lazy: imports torch
    from search.latency import search_space_of  # lazy: imports torch
    from search.trainer import ProxylessSearch, SearchConfig, check_epochs  # lazy: imports torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    predictor = load_predictor_file(args.predictor)
    space = search_space_of(predictor)
    check_space(args, space)
    resolution = args.resolution or (28 if args.data is None and space != NB201 else 32)
    config = SearchConfig(
        mode=args.mode, binarize=args.binarize, rl_baseline=args.rl_baseline,
        align_init=not args.independent_init, latency_loss=args.latency_loss, lambda2=args.lambda2,
        target_latency=args.target_latency,
        latency_temperature=args.latency_temperature, mul_alpha=args.mul_alpha, mul_beta=args.mul_beta,
        epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        train_batches=args.train_batches, val_batches=args.val_batches, test_batches=args.test_batches or None,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, arch_lr=args.arch_lr,
        arch_every=args.arch_every, rl_samples=args.rl_samples, rl_tradeoff=args.rl_tradeoff,
        resolution=resolution, seed=args.seed, device=device_for(ddp, args.device))
    ddp.check_batch(config.batch_size)
    settings = {k: v for k, v in asdict(config).items() if k != "device"}
    ddp.agree("the search settings", json.dumps([settings, args.data, args.resume], sort_keys=True, default=str))
    if ddp.is_main:
        check_epochs(config)
    data = load_dataset(args.data, resolution, seed=args.seed)
    searcher = ProxylessSearch(config, predictor, data, out, ddp=ddp)
    ddp.agree("the predictor's latencies", json.dumps(searcher.latency.fingerprint()))
    if args.resume:
        searcher.load_checkpoint(out / "checkpoint.pt")
    elif (out / "checkpoint.pt").exists() and ddp.is_main:
        log.warning("%s holds a checkpoint; starting afresh (use --resume to continue it)", out)
    searcher.check_ranks_agree("α and the path generator at the start")
    searcher.run()

    arch = searcher.derived_arch()
    if ddp.is_main:
        write_arch(arch, out)
    summary: dict[str, Any] = {
        "arch": arch.to_dict() if isinstance(arch, Arch) else arch, "space": space,
        "predicted_ms": searcher.latency.predict(arch),  # type: ignore[arg-type]  # the model's own arch kind
        "expected_latency_ms": searcher.expected_latency().item(),
        "deployment": deployment(arch),
        "latency_bounds_ms": searcher.latency.bounds(),
        "val_acc": searcher.history[-1]["val_acc"] if searcher.history else None,
        "test_acc": searcher.evaluate(data.test, config.test_batches),
        "data": data.name, "train_resolution": resolution,
        "epochs": searcher.epoch, "config": asdict(config), "predictor": str(args.predictor),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if not ddp.is_main:  # rank 0 measures and writes the files
        return summary
    if args.measure and isinstance(arch, Arch):
        summary["measured_ms"] = measure(arch, args.target, out / "measure")
        summary["measured_on"] = args.target
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (errors: one line on stderr)."""
    return entry_point(build_parser(), run, result_line, argv)


def result_line(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """One line saying what was found."""
    line = (f"{Path(args.out) / 'arch.json'}: predicted {summary['predicted_ms']:.2f} ms at "
            f"{summary['deployment']['resolution']}px, test acc {summary['test_acc']:.3f}")
    if "arch_str" in summary["arch"]:
        line += f", {summary['arch']['arch_str']} (index {summary['arch']['arch_index']})"
    if "measured_ms" in summary:
        line += f", measured {summary['measured_ms']:.2f} ms on {summary['measured_on']}"
    return line


if __name__ == "__main__":
    sys.exit(main())
