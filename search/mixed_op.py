"""A searchable layer: every candidate of a :class:`~latbench.space.Layer` plus its α.

The candidates are the very :class:`~latbench.modules.MBConv` blocks that are measured, built
with the layer's shapes (the identity shortcut included where shapes allow); ``zero`` is the
identity (the layer is skipped). Three ways to run the layer:

* **one path** (weight steps, REINFORCE, evaluation): only ``ops[active]`` runs; the other
  candidates are never called, so their activations never exist (memory O(1) in candidates).
* **two paths** (the paper's binary-gate architecture step): two candidates are sampled, one of
  them is active. The layer returns the active output exactly, but carries the gate gradient
  ``∂L/∂g_j = <∂L/∂y, y_j>`` into α through ``∂p_j/∂α_i = p_j(δ_ij − p_i)`` with ``p`` the
  softmax over the two sampled α. The unsampled path's output is computed without a graph.
* **all paths** (DARTS-style ``Σ_j p_j·op_j(x)``): only for comparison in the memory benchmark.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latbench.modules import MBConv
from latbench.space import ZERO, Layer, parse_candidate


def make_candidate(layer: Layer, name: str) -> nn.Module:
    """The module of candidate ``name`` at ``layer`` (identity for ``zero``)."""
    if name == ZERO:
        return nn.Identity()
    kernel, expand = parse_candidate(name)
    return MBConv(layer.in_ch, layer.out_ch, kernel, expand, layer.stride)


class MixedOp(nn.Module):
    """All candidates of one searchable layer and their architecture parameters ``alpha``."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.index = layer.index
        self.candidates: tuple[str, ...] = tuple(layer.candidates)
        self.ops = nn.ModuleList([make_candidate(layer, c) for c in self.candidates])
        self.alpha = nn.Parameter(torch.zeros(len(self.candidates)))
        self.active: int = 0
        #: ``(active, other)`` during a two-path architecture step, else ``()``.
        self.involved: tuple[int, ...] = ()
        self.all_paths = False
        self._alpha_before: torch.Tensor | None = None

    # -- distribution --------------------------------------------------------------------------
    @property
    def probs(self) -> torch.Tensor:
        """Path probabilities ``softmax(alpha)`` (differentiable)."""
        return F.softmax(self.alpha, dim=0)

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
        self.active, self.involved, self.all_paths = int(index), (), False

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
        self.active = int(two[k])
        self.involved = (int(two[k]), int(two[1 - k]))
        self.all_paths = False
        self._alpha_before = self.alpha.detach()[list(self.involved)].clone()
        return self.involved  # type: ignore[return-value]

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

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.all_paths:
            p = self.probs
            return sum(p[j] * op(x) for j, op in enumerate(self.ops))
        if not self.involved:
            return self.ops[self.active](x)
        a, b = self.involved
        p = F.softmax(self.alpha[[a, b]], dim=0)
        st = p - p.detach()  # value 0, gradient ∂p/∂α: gates g = onehot + st
        y_a = self.ops[a](x)
        with torch.no_grad():
            y_b = self.ops[b](x)
        return y_a * (1 + st[0]) + y_b * st[1]
