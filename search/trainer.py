"""The search loop: weight steps on one sampled path, architecture steps by binary-gate gradient
or REINFORCE, per-epoch log, checkpoints and resume.

Each epoch runs ``train_batches`` weight steps (SGD, Nesterov, cosine learning rate, weight decay
= the paper's λ1‖w‖²). After the ``warmup_epochs`` weights-only epochs, every ``arch_every``-th
weight step is followed by an architecture step on a held-out batch (Adam on α, β1 = 0, as the
official code). The derived architecture is the argmax of α per layer.

The space is the predictor's (:func:`build_supernet`): ProxylessNAS (:class:`~search.supernet.Supernet`,
:class:`~search.latency.LatencyModel`) or NAS-Bench-201 (:class:`~search.nb201.NB201Supernet`, one α per
cell edge shared by every cell, :class:`~search.latency.NB201LatencyModel`); the loop is the same.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from latbench.errors import ConfigError, LatbenchError
from latbench.space import Arch, Space
from latbench.spaces import DEFAULT_SPACE, NB201
from search.data import Dataset, Split
from search.distributed import DistContext, average_gradients, convert_batchnorm, tensor_digest
from search.latency import LatencyModel, LatencyPredictor, NB201LatencyModel, OpLatencyPredictor, search_space_of
from search.losses import DEFAULT_LAMBDA, check_form, latency_loss, mul_log_unit, reinforce_reward
from search.mixed_op import BINARIZE_MODES
from search.nb201 import NB201Supernet
from search.supernet import ChoiceNet, Supernet

log = logging.getLogger(__name__)

MODES = ("gradient", "reinforce")
#: REINFORCE baselines: ``official`` updates b ← b + decay·(R̄ − b) first, then takes R − b (the
#: official code); ``ema`` takes R − b with the old b, then b ← decay·b + (1 − decay)·R̄ (ours before).
RL_BASELINES = ("official", "ema")
CHECKPOINT_FORMAT = "latbench-search-checkpoint-1"
#: Settings a resumed run must share with its checkpoint (others, e.g. ``epochs``, may change).
RESUME_MUST_MATCH = ("mode", "binarize", "resolution", "batch_size", "seed", "latency_loss", "target_latency",
                     "lambda2")
LOG_FIELDS = ("epoch", "phase", "lr", "train_loss", "train_acc", "val_acc", "expected_latency_ms",
              "derived_latency_ms", "alpha_entropy", "arch_steps", "arch_loss", "reward", "baseline",
              "seconds", "arch")


@dataclass
class SearchConfig:
    """Every setting of a search (defaults follow the official code where it has one)."""

    mode: str = "gradient"
    binarize: str = "two"  # 'two' or 'full_v2' (gradient mode's architecture step)
    latency_loss: str | None = None  # None: 'mul#log' with a target latency, else 'paper'
    lambda2: float | None = None  # None: the form's default (see search.losses.DEFAULT_LAMBDA)
    target_latency: float | None = None  # ms, at the predictor's deployment resolution
    mul_alpha: float = 0.2
    mul_beta: float = 0.3
    latency_temperature: float = 1.0  # <1: the latency term sees softmax(α/τ), closer to the argmax net
    epochs: int = 10
    warmup_epochs: int | None = None  # None: a quarter of the epochs (the official 40 of 160)
    train_batches: int | None = None  # per epoch; None = the whole training split
    val_batches: int | None = 20  # per-epoch validation of the derived net
    test_batches: int | None = None  # final test of the derived net; None = whole test split
    bn_calib_batches: int = 10  # recompute BN statistics of the derived net before evaluating it
    batch_size: int = 64
    lr: float | None = None  # None: the official 0.025 per 256 images, scaled to batch_size
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 1e-3
    arch_every: int = 5
    rl_samples: int = 10
    rl_tradeoff: float = 0.1
    rl_baseline_decay: float = 0.99
    rl_baseline: str = "official"
    align_init: bool = True  # start every layer's candidates as one function (MixedOp.align_init)
    resolution: int = 28
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown --mode {self.mode!r}; choose gradient or reinforce")
        if self.binarize not in BINARIZE_MODES:
            raise ConfigError(f"unknown --binarize {self.binarize!r}; choose one of {', '.join(BINARIZE_MODES)}")
        if self.rl_baseline not in RL_BASELINES:
            raise ConfigError(f"unknown --rl-baseline {self.rl_baseline!r}; choose one of {', '.join(RL_BASELINES)}")
        if self.latency_loss is None:
            self.latency_loss = "mul#log" if self.target_latency is not None else "paper"
        check_form(self.latency_loss, self.target_latency)
        if self.mode == "reinforce" and self.target_latency is None:
            raise ConfigError("--mode reinforce needs --target-latency T (ms): the reward is acc·(T/LAT)^w")
        for name in ("epochs", "batch_size", "arch_every", "rl_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("train_batches", "val_batches", "test_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if not self.latency_temperature > 0:
            raise ConfigError(f"--latency-temperature must be > 0, got {self.latency_temperature}")
        if self.lr is None:
            self.lr = 0.025 * self.batch_size / 256
        if self.warmup_epochs is None:
            self.warmup_epochs = int(round(self.epochs * 0.25))
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")

    @property
    def lam(self) -> float:
        return DEFAULT_LAMBDA[self.latency_loss] if self.lambda2 is None else self.lambda2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def build_supernet(predictor: LatencyPredictor | OpLatencyPredictor, config: SearchConfig, data: Dataset,
                   ) -> tuple[ChoiceNet, LatencyModel | NB201LatencyModel, Space | None]:
    """The supernet, its latency model and (ProxylessNAS) the training space, for the predictor's space.

    ProxylessNAS: the training space has the data's resolution, classes and channels at the predictor's
    width. NAS-Bench-201: the standard skeleton (C = 16, 5 cells per stage) with the data's input channels
    and classes (no training space: the cells are resolution-free); the latencies are those of 32×32×3."""
    if search_space_of(predictor) == NB201:
        nb_latency = NB201LatencyModel(cast(OpLatencyPredictor, predictor))
        torch.manual_seed(config.seed)
        return NB201Supernet(data.in_channels, data.n_classes), nb_latency, None
    deploy: Space = cast(LatencyPredictor, predictor).deployment_space()
    train_space = Space(config.resolution, deploy.width_mult, data.n_classes, data.in_channels)
    latency = LatencyModel(cast(LatencyPredictor, predictor), train_space)
    torch.manual_seed(config.seed)
    return Supernet(train_space, align_init=config.align_init), latency, train_space


def reinforce_update(net: ChoiceNet, reward_fn: Callable[[list[int]], float], optimizer: torch.optim.Optimizer,
                     n_samples: int, gen: torch.Generator | None, baseline: float | None,
                     decay: float = 0.99, kind: str = "official") -> tuple[float, float, float]:
    """One REINFORCE step on α: sample ``n_samples`` architectures, ascend
    ``Σ_i (R_i − b)·∇α log p(arch_i)`` and update the moving-average baseline ``b``.

    ``kind`` ``official``: b ← b + decay·(R̄ − b) first (b = R̄ on the first step), then the
    advantages R_i − b with the new b, as the official ``rl_update_step``. ``ema``: advantages with
    the old b (R̄ on the first step), then b ← decay·b + (1 − decay)·R̄.

    Returns ``(new baseline, mean reward, surrogate loss)``."""
    optimizer.zero_grad(set_to_none=True)
    samples = []
    for _ in range(n_samples):
        choices = net.sample(gen)
        samples.append((choices, float(reward_fn(choices))))
    rewards = [r for _, r in samples]
    mean_r = sum(rewards) / len(rewards)
    if kind == "official":
        new_b = mean_r if baseline is None else baseline + decay * (mean_r - baseline)
        b = new_b
    elif kind == "ema":
        b = mean_r if baseline is None else baseline
        new_b = mean_r if baseline is None else decay * baseline + (1 - decay) * mean_r
    else:
        raise ConfigError(f"unknown REINFORCE baseline {kind!r}; choose one of {', '.join(RL_BASELINES)}")
    loss = torch.zeros((), device=net.choices[0].alpha.device)
    for choices, r in samples:
        logp = sum(F.log_softmax(m.alpha, 0)[c] for m, c in zip(net.choices, choices))
        loss = loss - (r - b) * logp
    loss = loss / n_samples
    loss.backward()
    optimizer.step()
    return new_b, mean_r, loss.item()


class ProxylessSearch:
    """A ProxylessNAS search on ``data`` with the latencies of ``predictor``.

    ``out`` (optional) receives ``log.csv`` and ``checkpoint.pt`` after every epoch (rank 0 only).

    ``ddp`` (under torchrun, see :mod:`search.distributed`): ``config.batch_size`` is the global
    batch, each rank trains on its shard; BN statistics and the gradients of the weights and of α
    are those of the global batch, every rank samples the same paths (the same seeded generator),
    REINFORCE rewards use the accuracy on the global batch. One process: ``ddp`` None."""

    def __init__(self, config: SearchConfig, predictor: LatencyPredictor | OpLatencyPredictor, data: Dataset,
                 out: str | Path | None = None, ddp: DistContext | None = None) -> None:
        self.config = config
        self.ddp = ddp or DistContext()
        self.ddp.check_batch(config.batch_size)
        self.shard = self.ddp.shard
        self.data = data
        self.out = Path(out) if out is not None else None
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available to torch; use --device cpu")
        self.space = search_space_of(predictor)
        net, self.latency, self.train_space = build_supernet(predictor, config, data)
        self.net = net.to(self.device)
        if self.ddp.active:  # before the optimisers: the converted BN layers hold new Parameter objects
            convert_batchnorm(self.net)
            self.ddp.broadcast_module(self.net)
        self.mul_unit = mul_log_unit(self.latency.bounds()[0], config.target_latency or 2.0)
        self.w_opt = torch.optim.SGD(list(self.net.weight_parameters()), lr=config.lr, momentum=config.momentum,
                                     nesterov=True, weight_decay=config.weight_decay)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=config.arch_lr, betas=(0.0, 0.999), eps=1e-8)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.baseline: float | None = None
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []

    # -- steps -----------------------------------------------------------------------------------
    def _train_mode(self) -> None:
        if not self.net.training:  # .train() walks every module of every candidate: skip if already set
            self.net.train()

    def _to(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Train the weights of one sampled path (the others are not run); returns (loss, acc)."""
        self._train_mode()
        self.net.sample(self.gen)
        out = self.net(x)
        loss = F.cross_entropy(out, y)
        self.w_opt.zero_grad(set_to_none=True)  # unsampled paths keep grad None: SGD skips them
        loss.backward()
        average_gradients(self.ddp, self.net.weight_parameters())  # torchrun: the same paths on every rank
        self.w_opt.step()
        return loss.item(), _accuracy(out.detach(), y)

    def expected_latency(self) -> torch.Tensor:
        """E[LAT] (ms) at the deployment resolution, differentiable in α."""
        return self.latency.expected(self.net.arch_parameters())

    def _freeze_weights(self, frozen: bool) -> None:
        for p in self.net.weight_parameters():
            p.requires_grad_(not frozen)

    def arch_step_gradient(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Binary-gate update of α on a held-out batch, Adam on α.

        ``two``: two sampled paths per layer; E[LAT] under the probabilities over the sampled pair
        only (official ``current_prob_over_ops``), so α outside the pairs get no gradient at all;
        then the rescaling that keeps unsampled paths' probabilities. ``full_v2``: one active path,
        every candidate's gate gradient in the backward, E[LAT] over the full softmax."""
        c = self.config
        self._train_mode()
        self.net.sample_arch(c.binarize, self.gen)
        self._freeze_weights(True)  # only α needs gradients here
        try:
            ce = F.cross_entropy(self.net(x), y)
            lat = self.latency.expected_from_probs(self.net.current_probs(c.latency_temperature))
            loss = latency_loss(ce, lat, c.latency_loss, c.lam, c.target_latency,
                                c.mul_alpha, c.mul_beta, self.mul_unit)
            self.a_opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.ddp, self.net.arch_parameters())
            self.a_opt.step()
            if c.binarize == "two":
                self.net.rescale()
        finally:
            self._freeze_weights(False)
            self.net.end_arch_step()
        return loss.item()

    def arch_step_reinforce(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """REINFORCE update of α: reward acc·(T/LAT)^w of ``rl_samples`` sampled nets on the batch."""
        c = self.config
        self._train_mode()  # batch statistics: running ones are a mix over paths

        def reward(choices: list[int]) -> float:
            with torch.no_grad():
                correct = float((self.net(x).argmax(1) == y).sum())
            hits, n = self.ddp.sum([correct, len(y)])  # torchrun: the accuracy on the global batch
            acc = hits / max(n, 1)
            return reinforce_reward(acc, self.latency.of_choices(choices), c.target_latency, c.rl_tradeoff)

        self.baseline, mean_r, loss = reinforce_update(self.net, reward, self.a_opt, c.rl_samples, self.gen,
                                                       self.baseline, c.rl_baseline_decay, c.rl_baseline)
        return loss, mean_r

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate_bn(self, split: Split, batches: int, seed: int) -> None:
        """Recompute BN running statistics for the currently active paths (a cumulative average
        over ``batches`` training batches): running statistics gathered while paths changed
        every step do not fit any one network."""
        bns = [m for m in self.net.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        self.net.train()
        for x, _ in split.batches(self.config.batch_size, seed, batches, shard=self.shard):
            self.net(x.to(self.device))
        for m, mom in zip(bns, saved):
            m.momentum = mom

    @torch.no_grad()
    def evaluate(self, split: Split, batches: int | None, choices: Sequence[int] | None = None) -> float:
        """Accuracy of one architecture (default: the derived one) with the supernet's weights."""
        if choices is None:
            self.net.set_argmax()
        else:
            self.net.set_choices(choices)
        if self.config.bn_calib_batches:
            self.calibrate_bn(self.data.train, self.config.bn_calib_batches, self.config.seed + 7919)
        self.net.eval()
        correct = total = 0
        for x, y in split.batches(self.config.batch_size, None, batches, drop_last=False, shard=self.shard):
            if len(y):  # a rank's shard of a short last batch may be empty (eval mode: no collective)
                x, y = self._to(x, y)
                correct += int((self.net(x).argmax(1) == y).sum())
                total += len(y)
        correct, total = self.ddp.sum([correct, total])
        return correct / max(total, 1)

    # -- derived architecture --------------------------------------------------------------------
    def derived_arch(self) -> Arch | dict[str, Any]:
        """The argmax architecture at the predictor's deployment resolution (NAS-Bench-201: its dict)."""
        return self.latency.deployment_arch(self.net.names(self.net.argmax()))

    def derived_latency(self) -> float:
        """Table latency (ms) of the derived architecture."""
        return self.latency.of_choices(self.net.argmax())

    # -- epochs ----------------------------------------------------------------------------------
    def _lr(self, step: int, total: int) -> float:
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * step / max(total, 1)))

    def batches_per_epoch(self) -> int:
        n = len(self.data.train) // self.config.batch_size
        return min(n, self.config.train_batches) if self.config.train_batches else n

    def train_epoch(self) -> dict[str, Any]:
        """One epoch (weight steps, and architecture steps after the warm-up); returns its log row."""
        c, e = self.config, self.epoch
        t0 = time.perf_counter()
        search = e >= c.warmup_epochs
        n = self.batches_per_epoch()
        total = c.epochs * n
        valid = self.data.valid.cycle(c.batch_size, seed=c.seed * 100003 + 2 * e + 1, shard=self.shard)
        loss_sum = acc_sum = 0.0
        arch_losses, rewards = [], []
        lr = c.lr
        for b, (x, y) in enumerate(self.data.train.batches(c.batch_size, seed=c.seed * 100003 + 2 * e, limit=n,
                                                           shard=self.shard)):
            lr = self._lr(e * n + b, total)
            for g in self.w_opt.param_groups:
                g["lr"] = lr
            loss, acc = self.weight_step(*self._to(x, y))
            loss_sum += loss
            acc_sum += acc
            if search and (b + 1) % c.arch_every == 0:
                xv, yv = self._to(*next(valid))
                if c.mode == "gradient":
                    arch_losses.append(self.arch_step_gradient(xv, yv))
                else:
                    loss, r = self.arch_step_reinforce(xv, yv)
                    arch_losses.append(loss)
                    rewards.append(r)
        if self.ddp.active:  # the global batch's means (equal shards), and a check that α did not diverge
            w = self.ddp.world_size
            loss_sum, acc_sum, arch_sum = (v / w for v in self.ddp.sum([loss_sum, acc_sum, sum(arch_losses)]))
            arch_losses = [arch_sum / len(arch_losses)] * len(arch_losses)
            self.check_ranks_agree(f"α after epoch {e + 1}")
        val_acc = self.evaluate(self.data.valid, c.val_batches)
        self.epoch += 1
        row = {
            "epoch": self.epoch, "phase": "search" if search else "warmup", "lr": round(lr, 6),
            "train_loss": round(loss_sum / max(n, 1), 5), "train_acc": round(acc_sum / max(n, 1), 5),
            "val_acc": round(val_acc, 5),
            "expected_latency_ms": round(self.expected_latency().item(), 4),
            "derived_latency_ms": round(self.derived_latency(), 4),
            "alpha_entropy": round(self.net.entropy(), 5),
            "arch_steps": len(arch_losses),
            "arch_loss": round(sum(arch_losses) / len(arch_losses), 5) if arch_losses else "",
            "reward": round(sum(rewards) / len(rewards), 5) if rewards else "",
            "baseline": round(self.baseline, 5) if self.baseline is not None else "",
            "seconds": round(time.perf_counter() - t0, 2),
            "arch": ",".join(self.net.names(self.net.argmax())),
        }
        self.history.append(row)
        log.info("epoch %d/%d %s: train acc %.3f val acc %.3f E[LAT] %.2f ms derived %.2f ms H %.3f (%.1fs)",
                 self.epoch, c.epochs, row["phase"], row["train_acc"], val_acc, row["expected_latency_ms"],
                 row["derived_latency_ms"], row["alpha_entropy"], row["seconds"])
        if self.out is not None and self.ddp.is_main:
            self.write_log()
            self.save_checkpoint(self.out / "checkpoint.pt")
        return row

    def check_ranks_agree(self, what: str) -> None:
        """Under torchrun: one clear error unless every rank holds the same α and path generator."""
        self.ddp.agree(what, tensor_digest(self.net.arch_parameters()) + tensor_digest([self.gen.get_state()]))

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done (continuing from a resumed epoch)."""
        while self.epoch < self.config.epochs:
            self.train_epoch()
        return self.history

    # -- persistence -----------------------------------------------------------------------------
    def write_log(self) -> Path:
        assert self.out is not None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "log.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(self.history)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "space": self.space, "epoch": self.epoch, "config": asdict(self.config),
            "data": self.data.name, "latency": self.latency.fingerprint(),
            "net": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
            "gen": self.gen.get_state(), "baseline": self.baseline, "history": self.history,
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the whole search state (atomically: a crash never leaves half a checkpoint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint of the same search (settings, data and predictor)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"--resume: no checkpoint at {path}; run without --resume first") from None
        except Exception as e:  # a truncated or foreign file
            raise ConfigError(f"--resume: cannot read checkpoint {path}: {e}") from None
        self.load_state_dict(state, source=str(path))
        log.info("resumed %s at epoch %d", path, self.epoch)

    def load_state_dict(self, state: dict[str, Any], source: str = "state", check: bool = True) -> None:
        """Restore a :meth:`state_dict`. ``check=False`` skips the same-settings check (the latency
        sweep starts every point from one shared warm-up)."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"--resume: {source} is not a search checkpoint")
        got = state.get("space") or DEFAULT_SPACE  # older checkpoints: ProxylessNAS
        if got != self.space:
            raise ConfigError(f"--resume: checkpoint {source} is a {got} search, this one searches {self.space}")
        if check:
            old = state["config"]
            defaults = {f.name: f.default for f in fields(SearchConfig)}
            for k in RESUME_MUST_MATCH:
                if old.get(k, defaults[k]) != getattr(self.config, k):
                    raise ConfigError(f"--resume: checkpoint {source} was made with {k}={old.get(k)!r}, this run "
                                      f"has {k}={getattr(self.config, k)!r}; use the same setting or another --out")
        if state["data"] != self.data.name:
            raise ConfigError(f"--resume: checkpoint {source} was trained on {state['data']}, not {self.data.name}")
        if state["latency"] != self.latency.fingerprint():
            raise ConfigError(f"--resume: checkpoint {source} was made with another predictor's latencies")
        self.net.load_state_dict(state["net"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.gen.set_state(state["gen"])
        self.baseline = state["baseline"]
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])


def check_epochs(config: SearchConfig) -> None:
    if config.warmup_epochs >= config.epochs:
        log.warning("warm-up (%d epochs) covers all %d epochs: α will not be trained",
                    config.warmup_epochs, config.epochs)


__all__ = ["SearchConfig", "ProxylessSearch", "build_supernet", "reinforce_update", "MODES", "LatbenchError"]
