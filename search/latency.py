"""The predictor's latencies as tensors the search can differentiate through.

The search depends on predictors only through :class:`LatencyPredictor`, the few methods it calls
(``predictors.LUTPredictor`` and ``GBDTPredictor`` implement it): for its deployment space, one
``{candidate: ms}`` dict per searchable layer and the fixed layers' ms. :class:`LatencyModel` turns that into per-layer
vectors aligned with the supernet's candidates, so E[LAT] = fixed + Σ_l p_l · lat_l is one
dot product per layer. The latency is always that of the deployment space (e.g. 224×224, 1000
classes), whatever resolution the training data has: only the layer choices are shared.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable
from collections.abc import Sequence

import torch

from latbench.errors import ConfigError, LatbenchError
from latbench.features import op_features
from latbench.space import Arch, Space


@runtime_checkable
class LatencyPredictor(Protocol):
    """What the search needs of a latency predictor."""

    def deployment_space(self) -> Space:
        """The space whose latencies the predictor gives (resolution, width, classes)."""
        ...

    def layer_latencies(self, space: Space) -> list[dict[str, float]]:
        """Per searchable layer of ``space``: candidate name -> ms (``zero`` -> 0)."""
        ...

    def fixed_latency(self, space: Space) -> float:
        """ms of the layers every architecture of ``space`` has (stem, feature mix, logits)."""
        ...

    def predict(self, archs: Arch) -> float:
        """ms of one architecture."""
        ...


class LatencyModel:
    """Per-layer candidate latencies (ms) of ``predictor`` at its deployment space."""

    def __init__(self, predictor: LatencyPredictor, train_space: Space | None = None) -> None:
        self.predictor = predictor
        self.space: Space = predictor.deployment_space()
        if train_space is not None:
            check_same_choices(train_space, self.space)
        rows = predictor.layer_latencies(self.space)
        if len(rows) != len(self.space.layers):
            raise LatbenchError(f"predictor gave latencies for {len(rows)} layers, the space has "
                                f"{len(self.space.layers)}")
        self.tables: list[torch.Tensor] = []
        for layer, row in zip(self.space.layers, rows):
            vals = []
            for cand in layer.candidates:
                if cand not in row:
                    op = layer.op(cand)
                    raise LatbenchError(f"predictor has no latency for layer {layer.index} candidate {cand!r} "
                                        f"(op {op.key if op else cand}); profile that op or use another predictor")
                v = float(row[cand])
                if not math.isfinite(v) or v < 0:
                    raise LatbenchError(f"predictor latency of layer {layer.index} {cand!r} is {v}; expected ms >= 0")
                vals.append(v)
            self.tables.append(torch.tensor(vals, dtype=torch.float32))
        self.fixed = float(predictor.fixed_latency(self.space))

    def expected(self, alphas: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """E[LAT] in ms under ``softmax(α / temperature)``, differentiable in every α.

        ``temperature`` 1 is the paper's E[LAT]; a smaller one tends to the latency of the argmax
        network, the one the search returns."""
        return self.expected_from_probs([torch.softmax(a / temperature, 0) for a in alphas])

    def expected_from_probs(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """fixed + Σ_l p_l · lat_l for given per-layer probabilities (e.g. a two-path step's
        probabilities over the sampled pair only, zero elsewhere)."""
        total = torch.tensor(self.fixed, device=probs[0].device)
        for p, lat in zip(probs, self.tables):
            total = total + (p * lat.to(p.device)).sum()
        return total

    def of_choices(self, choices: Sequence[int]) -> float:
        """Latency (ms) of one architecture given as candidate indices, from the per-layer table."""
        return self.fixed + sum(float(t[c]) for t, c in zip(self.tables, choices))

    def deployment_arch(self, names: Sequence[str]) -> Arch:
        return self.space.arch(list(names))

    def predict(self, arch: Arch) -> float:
        """The predictor's own latency of an architecture (must be a deployment-space arch)."""
        return float(self.predictor.predict(arch))

    def bounds(self) -> tuple[float, float]:
        """Latency of the fastest and the slowest architecture (ms)."""
        return (self.fixed + sum(float(t.min()) for t in self.tables),
                self.fixed + sum(float(t.max()) for t in self.tables))

    def fingerprint(self) -> list[list[float]]:
        """The tables as plain lists (stored in checkpoints to detect a changed predictor)."""
        return [[self.fixed]] + [t.tolist() for t in self.tables]


def check_same_choices(a: Space, b: Space) -> None:
    """Two spaces must offer the same candidates layer by layer (resolution may differ)."""
    if len(a.layers) != len(b.layers) or any(x.candidates != y.candidates for x, y in zip(a.layers, b.layers)):
        raise ConfigError(f"training space (width {a.width_mult}) and the predictor's deployment space "
                          f"(width {b.width_mult}) have different layer choices; use the predictor's width")


def flops_latencies(space: Space, ms_per_gflop: float = 10.0, overhead_ms: float = 0.02) -> dict[str, float]:
    """Synthetic op latencies from FLOPs (for tests/benchmarks without a profiled device);
    ``predictors.LUTPredictor.from_latencies`` turns them into a predictor."""
    return {op.key: overhead_ms + ms_per_gflop * op_features(op)["flops"] / 1e9 for op in space.distinct_ops()}
