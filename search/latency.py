"""The predictor's latencies as tensors the search can differentiate through.

A predictor (see ``predictors``) gives, for its deployment space, one ``{candidate: ms}`` dict per
searchable layer and the fixed layers' ms. :class:`LatencyModel` turns that into per-layer
vectors aligned with the supernet's candidates, so E[LAT] = fixed + Σ_l p_l · lat_l is one
dot product per layer. The latency is always that of the deployment space (e.g. 224×224, 1000
classes), whatever resolution the training data has: only the layer choices are shared.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from latbench.errors import ConfigError, LatbenchError
from latbench.space import Arch, Space


class LatencyModel:
    """Per-layer candidate latencies (ms) of ``predictor`` at its deployment space."""

    def __init__(self, predictor: Any, train_space: Space | None = None) -> None:
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
        total = torch.tensor(self.fixed, device=alphas[0].device)
        for a, lat in zip(alphas, self.tables):
            total = total + (torch.softmax(a / temperature, 0) * lat.to(a.device)).sum()
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


class TablePredictor:
    """A minimal predictor from ``{op_key: ms}`` implementing the protocol the search uses
    (``deployment_space``, ``layer_latencies``, ``fixed_latency``, ``predict``).

    For tests and benchmarks; the project's real predictors live in ``predictors``."""

    def __init__(self, latencies: Mapping[str, float], resolution: int = 224, width_mult: float = 1.0,
                 n_classes: int = 1000) -> None:
        self.latencies_ = dict(latencies)
        self.space_ = Space(resolution, width_mult, n_classes)

    def _ms(self, key: str) -> float:
        try:
            return float(self.latencies_[key])
        except KeyError:
            raise LatbenchError(f"no latency for op {key}; profile it first") from None

    def deployment_space(self) -> Space:
        return self.space_

    def layer_latencies(self, space: Space) -> list[dict[str, float]]:
        return [{c: (0.0 if op is None else self._ms(op.key)) for c, op in zip(layer.candidates, row)}
                for layer, row in zip(space.layers, space.candidate_ops())]

    def fixed_latency(self, space: Space) -> float:
        return sum(self._ms(op.key) for op in space.fixed_ops)

    def predict(self, arch: Arch | Sequence[Arch]):
        if isinstance(arch, Arch):
            return sum(self._ms(op.key) for op in arch.op_specs)
        import numpy as np
        return np.array([self.predict(a) for a in arch])


def flops_latencies(space: Space, ms_per_gflop: float = 10.0, overhead_ms: float = 0.02) -> dict[str, float]:
    """Synthetic op latencies from FLOPs (for tests/benchmarks without a profiled device)."""
    from latbench.features import op_features

    return {op.key: overhead_ms + ms_per_gflop * op_features(op)["flops"] / 1e9 for op in space.distinct_ops()}
