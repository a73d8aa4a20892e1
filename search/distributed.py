"""Data parallelism under ``torchrun`` for the search and the retraining (gloo on CPU, nccl on CUDA).

``torchrun --nproc_per_node N -m search.run ...`` starts N processes (ranks); :func:`session` sees
torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, starts the process group with a timeout
(:data:`DEFAULT_TIMEOUT_S`, so a rank that dies or never comes cannot hang the others forever) and
destroys it at the end. Without torchrun (or with one process) nothing changes.

Conventions (the point: N ranks compute what one process computes with the same arguments):

* ``--batch-size`` is the **global** batch: every rank takes its ``1/N`` shard of every batch
  (:meth:`DistContext.shard` for :meth:`search.data.Split.batches`; the shards of one batch are
  cut from the same shuffled order and augmented with the same flips as the single process's
  batch). The learning rate, the schedule and the steps per epoch are those of the global batch.
* Every rank seeds the path-sampling generator, the weights and α identically, so all ranks
  sample the same paths; rank 0's parameters and buffers are broadcast once at the start anyway.
* Gradients (weights in weight steps, α in architecture steps) are averaged over the ranks by an
  explicit all-reduce after the backward (:func:`average_gradients`), not by wrapping the net in
  :class:`torch.nn.parallel.DistributedDataParallel`. Why: a ProxylessNAS step runs one sampled
  path (or two, or full_v2's backward that runs every candidate), so most parameters are unused
  in any one step; the optimisers rely on their gradient being ``None`` (SGD's momentum and weight
  decay, Adam's moments skip them: zeros instead would move every unsampled candidate). Since all
  ranks sample the same paths, the set of parameters with a gradient is the same on every rank,
  so reducing exactly those (one flat buffer) is correct and leaves the others ``None``. DDP would
  need ``find_unused_parameters`` (a graph walk per step), does not support the weights being
  frozen and unfrozen between weight and architecture steps, and re-broadcasts BN buffers.
* BatchNorm statistics in training mode are those of the global batch (:class:`DistBatchNorm2d`:
  sums all-reduced with autograd, so the gradient is that of the global batch too); torch's
  ``SyncBatchNorm`` works on GPUs only. Without it, N ranks would normalise with per-shard
  statistics and not compute the single process's step.
* Only rank 0 writes files (checkpoints, logs, summaries, arch files) and logs at INFO; the other
  ranks log warnings only. A resumed run reads the checkpoint on every rank (one machine, or a
  shared ``--out``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from latbench.errors import ConfigError, LatbenchError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RankMismatchError(ConfigError):
    """The ranks of one run disagree (arch, settings, data): every rank raises it, rank 0 prints it."""

    main_rank_only = True


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``world_size`` 1 = not distributed (every method is then a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` for :meth:`search.data.Split.batches`, None when not distributed."""
        return (self.rank, self.world_size) if self.active else None

    def check_batch(self, batch_size: int) -> None:
        """``--batch-size`` is the global batch: it must split evenly over the ranks."""
        if self.active and batch_size % self.world_size:
            raise RankMismatchError(f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                                    f"{self.world_size} torchrun processes")

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        _collective(dist.all_reduce, t)
        return [float(v) for v in t.cpu()]

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def agree(self, what: str, value: str) -> None:
        """Raise :class:`RankMismatchError` unless every rank passes the same ``value`` (a digest is
        compared; the message names ``what`` and the ranks that differ)."""
        if not self.active:
            return
        mine = hashlib.sha256(value.encode()).hexdigest()[:12]
        digests: list[Any] = [None] * self.world_size
        _collective(dist.all_gather_object, digests, mine)
        if len(set(digests)) > 1:
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            raise RankMismatchError(f"torchrun ranks disagree on {what}: rank 0 has {digests[0]}, rank "
                                    f"{odd[0]} has {digests[odd[0]]} (sha256 prefixes); give every rank the same")

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                _collective(dist.broadcast, t.data, 0)


def _collective(fn: Any, *args: Any) -> Any:
    """A collective; a failure (another rank died, the timeout passed) is one line, not a traceback."""
    try:
        return fn(*args)
    except (RuntimeError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LatbenchError(f"torchrun: a collective failed ({first}); did another rank stop?") from None


def torchrun_env(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, None when they are not set."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("torchrun: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          + ", ".join(f"{k}={env.get(k)!r}" for k in ENV_VARS)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun: inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


@contextmanager
def session(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """The process group for the run (gloo for ``cpu``, nccl for ``cuda``), destroyed on exit; a
    :class:`DistContext` of one process outside torchrun."""
    env = torchrun_env()
    if env is None or env[1] == 1:
        yield DistContext()
        return
    if not timeout_s > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    rank, world, local = env
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available to torch; use --device cpu")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LatbenchError(f"torchrun: cannot start the {backend} process group: {first}") from None
    try:
        yield DistContext(rank, world, local, backend)
        # Every rank done before any tears down: a rank destroying its gloo group while another still
        # finished its run aborted the latter now and then at exit ("terminate called without an active
        # exception", SIGABRT after the last epoch; seen once in CI).
        _collective(dist.barrier)
    finally:
        dist.destroy_process_group()


def device_for(ctx: DistContext, device: str) -> str:
    """The rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    return f"cuda:{ctx.local_rank}" if ctx.active and device == "cuda" else device


def average_gradients(ctx: DistContext, params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over the ranks for the parameters that have one (one flat all-reduce).

    Parameters whose gradient is ``None`` stay ``None`` (see the module docstring: every rank ran
    the same paths, so the set is the same everywhere)."""
    if not ctx.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective(dist.all_reduce, flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


class DistBatchNorm2d(nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` that, in training mode under torchrun, normalises with the
    statistics of the global batch (all ranks' shards) on any device, gloo included (torch's
    ``SyncBatchNorm`` needs a GPU). Each rank's count, mean and variance (two-pass, as batch norm
    computes them) are all-gathered, with autograd, and combined in float64 by the parallel-variance
    formula (as ``SyncBatchNorm``): one collective forward, one backward (which carries the other
    ranks' share of the gradient). Running statistics are updated as batch norm does (unbiased
    variance; ``momentum`` None = cumulative average). One process: plain batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        if not use_batch or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        var_r, mean_r = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        count = torch.full((1,), float(x.numel() // c), dtype=torch.float64, device=x.device)
        local = torch.cat([count, mean_r.double(), var_r.double()])
        rows = _AllGather.apply(local) if torch.is_grad_enabled() else _all_gather(local)  # world × (1 + 2c)
        n_r, m_r, v_r = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
        n = n_r.sum()
        mean64 = (n_r * m_r).sum(0) / n
        var64 = (n_r * (v_r + (m_r - mean64).square())).sum(0) / n
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                assert self.running_mean is not None and self.running_var is not None
                unbiased = (var64 * (n / (n - 1).clamp_min(1.0))).to(x.dtype)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.detach(), alpha=f)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (1-D), stacked: world × len(t)."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    _collective(dist.all_gather, out, t.detach().contiguous())
    return torch.stack(out)


class _AllGather(torch.autograd.Function):
    """:func:`_all_gather`, differentiable: a rank's input gradient is the sum over the ranks of the
    gradient of its row (every rank's loss depends on every rank's statistics)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return _all_gather(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _reduce_nograd(grad)[dist.get_rank()]


def _reduce_nograd(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone(memory_format=torch.contiguous_format)
    _collective(dist.all_reduce, t)
    return t


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every :class:`~torch.nn.BatchNorm2d` replaced by a :class:`DistBatchNorm2d`
    holding the same parameters and buffers (state-dict keys unchanged); in place, returns it."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, DistBatchNorm2d):
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats, device=child.weight.device if child.affine else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """A digest of the tensors' bytes (to check that ranks still hold the same α)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = ["DistContext", "DistBatchNorm2d", "RankMismatchError", "session", "average_gradients",
           "convert_batchnorm", "device_for", "torchrun_env", "tensor_digest", "DEFAULT_TIMEOUT_S"]
