"""``python -m search.train --arch OUT/arch.json``: retrain the network a search found.

A NAS-Bench-201 arch file (``{"space": "nasbench201", "arch_str", "arch_index"}``, what a search on a
NAS-Bench-201 predictor writes) is trained as :class:`latbench.nasbench201_net.NB201Network` with the
data's input channels and classes (default resolution 32, the space's); ``--init supernet`` takes its
stem, reduction blocks, head and every cell's chosen edge ops from the search checkpoint.

The architecture (the search's ``arch.json``, at the predictor's deployment resolution) is built at
the training data's resolution, width and classes and trained with the shape of the official
retraining recipe: SGD with Nesterov momentum, a linear warm-up then a cosine learning rate, label
smoothing, weight decay. From scratch (default) or ``--init supernet``: the stem, the chosen
candidate of every layer, the feature mix and the classifier start from the supernet checkpoint's
weights. Writes into ``--out``: ``checkpoint.pt`` (every epoch; ``--resume`` continues it),
``log.csv`` (one row per epoch) and ``summary.json`` (test accuracy). :func:`main` returns the exit
code; bad input is one line on stderr.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latbench.errors import ConfigError
from latbench.space import ZERO, Arch, Space
from latbench.spaces import DEFAULT_SPACE, NB201
from search.entry import entry_point

if TYPE_CHECKING:  # torch is imported lazily (keeps --help and argument errors instant)
    from torch import nn

    from search.data import Dataset
    from search.distributed import DistContext

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "latbench-train-checkpoint-1"
LOG_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "seconds")
RESUME_MUST_MATCH = ("arch", "init", "resolution", "batch_size", "seed", "lr", "label_smoothing")


@dataclass
class TrainConfig:
    """Every setting of a retraining (the recipe's shape: Nesterov SGD, warm-up + cosine, label smoothing)."""

    arch: str = ""  # the architecture's ops, comma-separated (set from --arch)
    init: str = "scratch"  # 'scratch' or 'supernet'
    epochs: int = 5
    train_batches: int | None = None  # per epoch; None = the whole training split
    val_batches: int | None = 20
    test_batches: int | None = None  # None = the whole test split
    batch_size: int = 64
    lr: float | None = None  # None: 0.2 per 256 images (0.05 at 64), scaled to batch_size
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    warmup_steps: int | None = None  # None: 5 % of all steps
    dropout: float = 0.0
    resolution: int = 28
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in ("scratch", "supernet"):
            raise ConfigError(f"unknown --init {self.init!r}; choose scratch or supernet")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("train_batches", "val_batches", "test_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr is None:
            self.lr = 0.2 * self.batch_size / 256
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")


def train_space(arch: Arch, data: Dataset, resolution: int) -> Space:
    """The space the network is trained in: the data's resolution, classes and channels, the arch's width."""
    space = Space(resolution, arch.width_mult, data.n_classes, data.in_channels)
    if len(arch.ops) != len(space.layers):
        raise ConfigError(f"--arch has {len(arch.ops)} ops, the space has {len(space.layers)} layers")
    for layer, op in zip(space.layers, arch.ops):
        if op not in layer.candidates:
            raise ConfigError(f"--arch layer {layer.index} is {op!r}, not one of {', '.join(layer.candidates)}")
    return space


def build_net(space: Space, ops: Sequence[str], dropout: float = 0.0) -> nn.Module:
    """A standalone network of ``ops`` in ``space`` (fresh weights), the shape of
    :class:`latbench.modules.Network` but with the space's input channels."""
    from torch import nn

    from latbench.modules import Classifier, conv_bn
    from search.mixed_op import make_candidate

    stem, mix, logits = space.fixed_ops
    return nn.Sequential(
        conv_bn(stem.in_ch, stem.out_ch, 3, stem.stride),
        nn.Sequential(*[make_candidate(layer, op) for layer, op in zip(space.layers, ops) if op != ZERO]),
        conv_bn(mix.in_ch, mix.out_ch, 1, 1),
        Classifier(logits.in_ch, logits.out_ch, dropout))


def read_search_checkpoint(checkpoint: str | Path, resolution: int, space: str = DEFAULT_SPACE) -> dict[str, Any]:
    """The search checkpoint for ``--init supernet``: readable, a search's, of the arch's ``space`` (older
    checkpoints name none: ProxylessNAS) and trained at ``resolution``; else one line."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"--init supernet: no search checkpoint at {checkpoint}") from None
    except Exception as e:
        raise ConfigError(f"--init supernet: cannot read {checkpoint}: {e}") from None
    if not isinstance(state, dict) or "net" not in state or "config" not in state:
        raise ConfigError(f"--init supernet: {checkpoint} is not a search checkpoint")
    got = state.get("space") or DEFAULT_SPACE
    if got != space:
        raise ConfigError(f"--init supernet: {checkpoint} is a {got} search, the arch is a {space} one")
    res = state["config"].get("resolution")
    if res != resolution:
        raise ConfigError(f"--init supernet: the supernet was trained at {res} px, this run at {resolution} px "
                          f"(pass --resolution {res})")
    return state


def net_from_supernet(space: Space, ops: Sequence[str], checkpoint: str | Path, dropout: float = 0.0) -> nn.Module:
    """:func:`build_net` with the supernet's weights for the path ``ops`` (search checkpoint)."""
    from torch import nn

    from latbench.modules import Classifier
    from search.supernet import Supernet

    state = read_search_checkpoint(checkpoint, space.resolution)
    sn = Supernet(space, align_init=False)
    try:
        sn.load_state_dict(state["net"])
    except RuntimeError:
        raise ConfigError(f"--init supernet: {checkpoint} holds a supernet of another width or data "
                          f"(this arch: width {space.width_mult}, {space.n_classes} classes, "
                          f"{space.in_channels} input channels)") from None
    choices = sn.indices(list(ops))
    blocks = [copy.deepcopy(m.ops[c]) for m, c, op in zip(sn.layers, choices, ops) if op != ZERO]
    classifier = copy.deepcopy(sn.classifier)
    if dropout > 0:
        classifier = Classifier(classifier.linear.in_features, classifier.linear.out_features, dropout)
        classifier.linear.load_state_dict(sn.classifier.linear.state_dict())
    return nn.Sequential(copy.deepcopy(sn.stem), nn.Sequential(*blocks), copy.deepcopy(sn.feature_mix), classifier)


class Retrainer:
    """Trains one network; ``out`` receives ``log.csv`` and ``checkpoint.pt`` after every epoch.

    ``ddp`` (under torchrun, :mod:`search.distributed`): ``config.batch_size`` is the global batch,
    each rank trains on its shard with the global batch's BN statistics and averaged gradients;
    rank 0 writes the files."""

    def __init__(self, config: TrainConfig, net: nn.Module, data: Dataset, out: str | Path | None = None,
                 ddp: DistContext | None = None) -> None:
        import torch

        from search.distributed import DistContext, convert_batchnorm

        self.ddp = ddp or DistContext()
        self.ddp.check_batch(config.batch_size)
        self.shard = self.ddp.shard
        if self.ddp.active:  # before the optimiser: the converted BN layers hold new Parameter objects
            convert_batchnorm(net)
            self.ddp.broadcast_module(net)
        self.config, self.net, self.data = config, net, data
        self.out = Path(out) if out is not None else None
        decay, no_decay = [], []
        for p in net.parameters():  # no weight decay on BN and biases (official 'bn#bias')
            (no_decay if p.ndim <= 1 else decay).append(p)
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}],
                                   lr=float(config.lr or 0), momentum=config.momentum, nesterov=True)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    def batches_per_epoch(self) -> int:
        n = len(self.data.train) // self.config.batch_size
        return min(n, self.config.train_batches) if self.config.train_batches else n

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up for ``warmup_steps``, then cosine to 0."""
        c = self.config
        lr = float(c.lr or 0)
        warm = c.warmup_steps if c.warmup_steps is not None else int(0.05 * total)
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    def train_epoch(self) -> dict[str, Any]:
        import torch.nn.functional as F

        from search.distributed import average_gradients

        c, e = self.config, self.epoch
        t0 = time.perf_counter()
        n = self.batches_per_epoch()
        total = c.epochs * n
        self.net.train()
        loss_sum = acc_sum = 0.0
        lr = 0.0
        for b, (x, y) in enumerate(self.data.train.batches(c.batch_size, seed=c.seed * 100003 + e, limit=n,
                                                           shard=self.shard)):
            lr = self.lr_at(e * n + b, total)
            for g in self.opt.param_groups:
                g["lr"] = lr
            out = self.net(x)
            loss = F.cross_entropy(out, y, label_smoothing=c.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.ddp, self.net.parameters())
            self.opt.step()
            loss_sum += loss.item()
            acc_sum += float((out.detach().argmax(1) == y).float().mean())
        if self.ddp.active:  # the global batch's means (equal shards)
            loss_sum, acc_sum = (v / self.ddp.world_size for v in self.ddp.sum([loss_sum, acc_sum]))
        self.epoch += 1
        row = {"epoch": self.epoch, "lr": round(lr, 6), "train_loss": round(loss_sum / max(n, 1), 5),
               "train_acc": round(acc_sum / max(n, 1), 5),
               "val_acc": round(self.evaluate(self.data.valid, c.val_batches), 5),
               "seconds": round(time.perf_counter() - t0, 2)}
        self.history.append(row)
        log.info("retrain epoch %d/%d: train loss %.3f acc %.3f, val acc %.3f (%.1fs)", self.epoch, c.epochs,
                 row["train_loss"], row["train_acc"], row["val_acc"], row["seconds"])
        if self.out is not None and self.ddp.is_main:
            self.write_log()
            self.save_checkpoint(self.out / "checkpoint.pt")
        return row

    def evaluate(self, split: Any, batches: int | None) -> float:
        import torch

        self.net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in split.batches(self.config.batch_size, None, batches, drop_last=False, shard=self.shard):
                if len(y):  # a rank's shard of a short last batch may be empty
                    correct += int((self.net(x).argmax(1) == y).sum())
                    total += len(y)
        correct, total = self.ddp.sum([correct, total])
        return correct / max(total, 1)

    def run(self) -> list[dict[str, Any]]:
        while self.epoch < self.config.epochs:
            self.train_epoch()
        return self.history

    # -- persistence -----------------------------------------------------------------------------
    def write_log(self) -> None:
        assert self.out is not None
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(self.history)

    def save_checkpoint(self, path: Path) -> None:
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "config": asdict(self.config),
                    "data": self.data.name, "net": self.net.state_dict(), "opt": self.opt.state_dict(),
                    "history": self.history}, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"--resume: no checkpoint at {path}; run without --resume first") from None
        except Exception as e:
            raise ConfigError(f"--resume: cannot read checkpoint {path}: {e}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"--resume: {path} is not a retraining checkpoint")
        for k in RESUME_MUST_MATCH:
            if state["config"].get(k) != getattr(self.config, k):
                raise ConfigError(f"--resume: checkpoint {path} was made with {k}={state['config'].get(k)!r}, this "
                                  f"run has {k}={getattr(self.config, k)!r}; use the same setting or another --out")
        if state["data"] != self.data.name:
            raise ConfigError(f"--resume: checkpoint {path} was trained on {state['data']}, not {self.data.name}")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        log.info("resumed %s at epoch %d", path, self.epoch)


def build_parser(add_help: bool = True, verbose: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.train", add_help=add_help,
        description="Retrain the network a search found (OUT/arch.json) on the same data: Nesterov SGD, warm-up + "
                    "cosine learning rate, label smoothing; writes checkpoint.pt, log.csv, summary.json.")
    p.add_argument("--arch", required=True, help="architecture JSON (the search's OUT/arch.json)")
    p.add_argument("--init", choices=("scratch", "supernet"), default="scratch",
                   help="scratch (default): fresh weights; supernet: the search checkpoint's weights for this path")
    p.add_argument("--supernet", default=None,
                   help="search checkpoint for --init supernet (default: checkpoint.pt beside --arch)")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--train-batches", type=int, default=None, help="batches per epoch (default: whole split)")
    p.add_argument("--val-batches", type=int, default=20, help="validation batches per epoch (default 20)")
    p.add_argument("--test-batches", type=int, default=0, help="test batches (default 0 = the whole test split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.2 per 256 images: 0.05 at batch 64)")
    p.add_argument("--weight-decay", type=float, default=4e-5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 5 %% of all)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--resolution", type=int, default=None,
                   help="training image size (default 28 for Fashion-MNIST, 32 for --data and nasbench201 archs)")
    p.add_argument("--data", default=None, help="ImageFolder tree (default: Fashion-MNIST)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="output folder (default: retrain/ beside --arch)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dist-timeout", type=float, default=120.0, metavar="S",
                   help="under torchrun: seconds before a rank that waits on the others gives up (default 120)")
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Retrain as ``args`` say; returns the summary (also OUT/summary.json). Under torchrun every
    rank runs this with the same arguments and arch (checked); rank 0 writes the files."""
    from search.distributed import session  # lazy: imports torch

    with session("cpu", args.dist_timeout) as ddp:
        return _run(args, ddp)


def _run(args: argparse.Namespace, ddp: DistContext) -> dict[str, Any]:
    import torch

    from search.data import load_dataset
    from search.nb201 import load_nb201_arch, nb201_net

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    arch_path = Path(args.arch)
    if not arch_path.exists():
        raise ConfigError(f"--arch {arch_path}: no such file (a search writes OUT/arch.json)")
    nb = load_nb201_arch(arch_path)  # None: a ProxylessNAS arch
    arch: Arch | None = None
    if nb is None:
        arch = Arch.load(arch_path)
        arch_dict, arch_text = arch.to_dict(), ",".join(arch.ops)
    else:
        arch_dict, arch_text = nb, nb["arch_str"]
        if args.dropout:
            raise ConfigError(f"--dropout: the {NB201} network has no dropout layer")
    out = Path(args.out) if args.out else arch_path.parent / "retrain"
    resolution = args.resolution or (28 if args.data is None and arch is not None else 32)
    config = TrainConfig(arch=arch_text, init=args.init, epochs=args.epochs,
                         train_batches=args.train_batches, val_batches=args.val_batches,
                         test_batches=args.test_batches or None, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                         warmup_steps=args.warmup_steps, dropout=args.dropout, resolution=resolution, seed=args.seed)
    ddp.agree(f"the arch (--arch {arch_path})", json.dumps(arch_dict, sort_keys=True))
    ddp.agree("the retraining settings",
              json.dumps([asdict(config), args.data, args.init, args.resume], sort_keys=True))
    ddp.check_batch(config.batch_size)
    data = load_dataset(args.data, resolution, seed=args.seed)
    ckpt = Path(args.supernet) if args.supernet else arch_path.parent / "checkpoint.pt"
    net: nn.Module
    if arch is None:
        state = read_search_checkpoint(ckpt, resolution, NB201)["net"] if args.init == "supernet" else None
        torch.manual_seed(args.seed)
        net = nb201_net(arch_dict, data.in_channels, data.n_classes, state, str(ckpt))
    else:
        space = train_space(arch, data, resolution)
        torch.manual_seed(args.seed)
        if args.init == "supernet":
            net = net_from_supernet(space, arch.ops, ckpt, args.dropout)
        else:
            net = build_net(space, arch.ops, args.dropout)
    trainer = Retrainer(config, net, data, out, ddp=ddp)
    if args.resume:
        trainer.load_checkpoint(out / "checkpoint.pt")
    elif (out / "checkpoint.pt").exists() and ddp.is_main:
        log.warning("%s holds a checkpoint; starting afresh (use --resume to continue it)", out)
    trainer.run()
    summary = {"arch": arch_dict, "init": args.init, "epochs": trainer.epoch, "data": data.name,
               "train_resolution": resolution, "params": sum(p.numel() for p in net.parameters()),
               "val_acc": trainer.history[-1]["val_acc"] if trainer.history else None,
               "test_acc": trainer.evaluate(data.test, config.test_batches), "config": asdict(config),
               "seconds": round(time.perf_counter() - t0, 1)}
    if not ddp.is_main:
        return summary
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def result_line(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    return (f"retrained {args.arch} ({summary['init']}, {summary['epochs']} epochs): "
            f"test acc {summary['test_acc']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (errors: one line on stderr)."""
    return entry_point(build_parser(), run, result_line, argv)


__all__ = ["TrainConfig", "Retrainer", "build_net", "net_from_supernet", "main"]

if __name__ == "__main__":
    sys.exit(main())
