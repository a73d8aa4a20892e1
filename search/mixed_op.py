"""A searchable choice: α over candidates, which paths run now, and the candidate modules.

:class:`PathChoice` is one choice's α and binarization state (sampling, the two-path and full_v2
architecture steps, rescaling). :class:`MixedOp` is a choice with its own candidate modules, made by
a factory: for a ProxylessNAS :class:`~latbench.space.Layer` (:meth:`MixedOp.for_layer`) the very
:class:`~latbench.modules.MBConv` blocks that are measured, built with the layer's shapes (the
identity shortcut included where shapes allow), ``zero`` the identity (the layer is skipped).
:class:`SharedMixedOp` has its own candidate modules but follows another module's choice: the
NAS-Bench-201 supernet (:mod:`search.nb201`) has one :class:`PathChoice` per cell edge, shared by the
edge's mixed op in every cell, so one draw per step per edge sets the path of all cells. α starts as
N(0, 1e-3) (the official ``init_arch_params``), so an untouched choice's argmax is not always
candidate 0. Ways to run a choice:

* **one path** (weight steps, REINFORCE, evaluation): only ``ops[active]`` runs; the other
  candidates are never called, so their activations never exist (memory O(1) in candidates).
* **two paths** (binarize ``two``, the paper's binary-gate architecture step): two candidates are
  sampled, one of them is active. The layer returns the active output exactly, but carries the gate
  gradient ``∂L/∂g_j = <∂L/∂y, y_j>`` into α through ``∂p_j/∂α_i = p_j(δ_ij − p_i)`` with ``p`` the
  softmax over the two sampled α; :meth:`current_probs` (the official ``current_prob_over_ops``) is
  that pair softmax and zero elsewhere, so the latency term too only touches the pair, and
  :meth:`rescale` keeps every other path's probability fixed.
* **full_v2** (the official default mode): the forward runs the active path only; the backward
  computes the gate gradient of *every* candidate (each run once, without a graph, inside the
  backward) and α's gradient over the full softmax. Weights get no gradient in this mode (it is for
  architecture steps; the input's gradient flows through the active path).
* **all paths** (DARTS-style ``Σ_j p_j·op_j(x)``): only for comparison in the memory benchmark.

:meth:`MixedOp.align_init` (used by the supernet by default) initialises the candidates of a layer
so that they compute the same function at the start (see its docstring): without it the supernet
does not learn in short runs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latbench.modules import MBConv
from latbench.space import ZERO, Layer, parse_candidate

BINARIZE_MODES = ("two", "full_v2")
ALPHA_INIT_STD = 1e-3  # official: arch_init_type 'normal', arch_init_ratio 1e-3


def make_candidate(layer: Layer, name: str) -> nn.Module:
    """The module of candidate ``name`` at ``layer`` (identity for ``zero``)."""
    if name == ZERO:
        return nn.Identity()
    kernel, expand = parse_candidate(name)
    return MBConv(layer.in_ch, layer.out_ch, kernel, expand, layer.stride)


class _FullV2Gate(torch.autograd.Function):
    """Forward: the active candidate's output. Backward: the input's gradient through the active
    path, and α's gradient from the binary-gate gradients of every candidate."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, ops: nn.ModuleList, active: int) -> torch.Tensor:
        ctx.ops, ctx.active = ops, active
        xd = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = ops[active](xd)
        ctx.save_for_backward(xd, out, alpha)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None, None]:
        xd, out, alpha = ctx.saved_tensors
        grad_x = None
        if xd.requires_grad:
            (grad_x,) = torch.autograd.grad(out, xd, grad_out, allow_unused=False)
        with torch.no_grad():
            gates = torch.zeros_like(alpha)
            for k, op in enumerate(ctx.ops):
                y = out if k == ctx.active else op(xd.detach())
                gates[k] = (y * grad_out).sum()
            p = F.softmax(alpha.detach(), 0)
            grad_alpha = p * (gates - (p * gates).sum())  # Σ_j g_j p_j(δ_ij − p_i)
        return grad_x, grad_alpha, None, None


class PathChoice(nn.Module):
    """One searchable choice among ``candidates``: its architecture parameters ``alpha`` and which
    paths run now (set by the sampling methods, read by the mixed ops that follow the choice)."""

    def __init__(self, candidates: Sequence[str], alpha_std: float = ALPHA_INIT_STD, index: int = 0) -> None:
        super().__init__()
        self.index = index
        self.candidates: tuple[str, ...] = tuple(candidates)
        self.alpha = nn.Parameter(torch.randn(len(self.candidates)) * alpha_std)
        self.active: int = 0
        #: ``(active, other)`` during a two-path architecture step, else ``()``.
        self.involved: tuple[int, ...] = ()
        self.full_v2 = False
        self.all_paths = False
        self._alpha_before: torch.Tensor | None = None

    # -- distribution --------------------------------------------------------------------------
    @property
    def probs(self) -> torch.Tensor:
        """Path probabilities ``softmax(alpha)`` (differentiable)."""
        return F.softmax(self.alpha, dim=0)

    def current_probs(self, temperature: float = 1.0) -> torch.Tensor:
        """The probabilities the latency term uses now (official ``current_prob_over_ops``): in a
        two-path step the softmax over the two sampled α (zero elsewhere), otherwise the full
        softmax; both under ``α / temperature``. Differentiable in α."""
        if not self.involved:
            return F.softmax(self.alpha / temperature, dim=0)
        idx = list(self.involved)
        pair = F.softmax(self.alpha[idx] / temperature, dim=0)
        out = torch.zeros_like(self.alpha)
        return out.index_put((torch.tensor(idx, device=self.alpha.device),), pair)

    def entropy(self) -> float:
        """Entropy (nats) of the path distribution."""
        with torch.no_grad():
            logp = F.log_softmax(self.alpha, dim=0)
            return float(-(logp.exp() * logp).sum())

    def argmax(self) -> int:
        return int(torch.argmax(self.alpha.detach()))

    # -- binarization --------------------------------------------------------------------------
    def set_active(self, index: int) -> None:
        """Run only candidate ``index`` from now on."""
        self.active, self.involved, self.all_paths, self.full_v2 = int(index), (), False, False

    def sample(self, gen: torch.Generator | None = None) -> int:
        """Binarize: draw one path from ``p`` and make it the only one that runs."""
        idx = int(torch.multinomial(self.probs.detach().cpu(), 1, generator=gen))
        self.set_active(idx)
        return idx

    def sample_two(self, gen: torch.Generator | None = None) -> tuple[int, int]:
        """Draw two distinct paths from ``p``, then the active one from the softmax over their α
        (as the official 'two' mode); remembers their α for :meth:`rescale`."""
        two = torch.multinomial(self.probs.detach().cpu(), 2, replacement=False, generator=gen)
        pair = F.softmax(self.alpha.detach().cpu()[two], dim=0)
        k = int(torch.multinomial(pair, 1, generator=gen))
        self.set_active(int(two[k]))
        self.involved = (int(two[k]), int(two[1 - k]))
        self._alpha_before = self.alpha.detach()[list(self.involved)].clone()
        return self.involved  # type: ignore[return-value]

    def sample_full_v2(self, gen: torch.Generator | None = None) -> int:
        """Draw the active path from ``p`` for a full_v2 architecture step."""
        idx = self.sample(gen)
        self.full_v2 = True
        return idx

    @torch.no_grad()
    def rescale(self) -> None:
        """After an architecture update, shift the two sampled α by a common offset so that their
        total probability mass, hence every unsampled path's probability, is unchanged."""
        if not self.involved or self._alpha_before is None:
            return
        idx = list(self.involved)
        offset = torch.logsumexp(self.alpha[idx], 0) - torch.logsumexp(self._alpha_before, 0)
        self.alpha[idx] -= offset
        self._alpha_before = None

    def end_arch_step(self) -> None:
        """Back to one-path mode after an architecture step."""
        self.involved, self.full_v2, self._alpha_before = (), False, None



def mixed_forward(path: PathChoice, ops: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Run the candidate modules ``ops`` (aligned with ``path.candidates``) as ``path`` says: one
    path, the two-path binary gates, full_v2, or all paths."""
    if path.all_paths:
        p = path.probs
        return sum(p[j] * op(x) for j, op in enumerate(ops))
    if path.full_v2:
        out: torch.Tensor = _FullV2Gate.apply(x, path.alpha, ops, path.active)
        return out
    if not path.involved:
        return ops[path.active](x)
    a, b = path.involved
    p = F.softmax(path.alpha[[a, b]], dim=0)
    st = p - p.detach()  # value 0, gradient ∂p/∂α: gates g = onehot + st
    y_a = ops[a](x)
    with torch.no_grad():
        y_b = ops[b](x)
    return y_a * (1 + st[0]) + y_b * st[1]


class MixedOp(PathChoice):
    """A choice with its own candidate modules, ``factory(name)`` for each candidate name."""

    def __init__(self, candidates: Sequence[str], factory: Callable[[str], nn.Module],
                 alpha_std: float = ALPHA_INIT_STD, index: int = 0) -> None:
        ops = [factory(c) for c in candidates]  # before α: the random draws of the weights come first
        super().__init__(candidates, alpha_std, index)
        self.ops = nn.ModuleList(ops)

    @classmethod
    def for_layer(cls, layer: Layer, alpha_std: float = ALPHA_INIT_STD) -> MixedOp:
        """All candidates of one searchable ProxylessNAS layer (:func:`make_candidate`)."""
        return cls(layer.candidates, partial(make_candidate, layer), alpha_std, layer.index)

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def align_init(self) -> None:
        """Make every candidate compute the same function at initialisation (ours, not the official
        code): the smallest MBConv (3×3, lowest expand) is the base; every other MBConv gets the
        base's expand rows, the base's 3×3 depthwise kernel zero-padded to k×k on the base's channels
        and the base's projection, with zero projection weights on its extra channels; the last BN of
        a candidate with the identity shortcut starts at γ = 0, so it, like ``zero``, is the identity.

        Why: with independently initialised candidates every sampled path sees other, unrelated
        features in every layer and a short supernet training stays at chance (train loss above
        ln 10). Started equal, the candidates diverge only by what each one learns. The extra taps and
        channels still receive gradients, so every candidate can become different."""
        mb = [(op, *parse_candidate(c)) for op, c in zip(self.ops, self.candidates) if isinstance(op, MBConv)]
        for op, _, _ in mb:
            if op.residual:
                nn.init.zeros_(op.project[1].weight)
        if len(mb) < 2:
            return
        e0 = min(e for _, _, e in mb)
        base = min((t for t in mb if t[2] == e0), key=lambda t: t[1])[0]
        bw = base.depthwise[0].weight
        mid0, bk = bw.shape[0], bw.shape[-1]
        for op, k, _ in mb:
            if op is base or k < bk:
                continue
            if isinstance(op.expand, nn.Sequential) and isinstance(base.expand, nn.Sequential):
                op.expand[0].weight[:mid0] = base.expand[0].weight
            dw = op.depthwise[0].weight
            off = (k - bk) // 2
            dw[:mid0] = 0
            dw[:mid0, :, off:off + bk, off:off + bk] = bw
            op.project[0].weight[:, :mid0] = base.project[0].weight
            op.project[0].weight[:, mid0:] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mixed_forward(self, self.ops, x)


class SharedMixedOp(nn.Module):
    """Candidate modules of its own (``factory(name)`` per candidate of ``path``) that run as another
    module's :class:`PathChoice` says: the choice (its α) is shared, the weights are not. The choice is
    not a submodule (its owner registers it once), so α is in one place of the state dict."""

    def __init__(self, path: PathChoice, factory: Callable[[str], nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleList([factory(c) for c in path.candidates])
        self._path = (path,)  # a tuple: not registered as a submodule

    @property
    def path(self) -> PathChoice:
        return self._path[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mixed_forward(self.path, self.ops, x)
