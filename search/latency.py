"""The predictor's latencies as tensors the search can differentiate through.

The search depends on predictors only through two protocols, the few methods it calls
(``predictors.LUTPredictor`` and ``GBDTPredictor`` implement both):

* ProxylessNAS, :class:`LatencyPredictor`: for its deployment space, one ``{candidate: ms}`` dict per
  searchable layer and the fixed layers' ms. :class:`LatencyModel` turns that into per-layer vectors
  aligned with the supernet's candidates.
* NAS-Bench-201, :class:`OpLatencyPredictor`: the ms of op keys. :class:`NB201LatencyModel` sums, per
  cell edge and candidate, the candidate's ms over the 15 cells of the standard network (5 per stage at
  its C and resolution); the identity (``skip_connect``, :data:`~latbench.nasbench201.NB201_FREE_OPS`) is
  0 ms, every other op (``none`` too, which the network computes as ``x·0``) comes from the predictor,
  exactly the ops :func:`~latbench.nasbench201.nb201_arch_ops` gives ``predict``. The fixed part is the
  stem, the two reduction blocks and the head, plus the calibration offset.

Both are :class:`ChoiceLatencies`: E[LAT] = fixed + Σ_l p_l · lat_l is one dot product per choice,
and the latency of the argmax architecture equals the predictor's ``predict`` of it. The latency is always
that of the deployment space (e.g. 224×224 and 1000 classes, or NAS-Bench-201's 32×32×3, 10 classes),
whatever resolution and channels the training data has: only the choices are shared.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from latbench.errors import ConfigError, LatbenchError
from latbench.features import op_features
from latbench.nasbench201 import (NB201_C, NB201_EDGES, NB201_FREE_OPS, NB201_N, NB201_OPS, NB201_RESOLUTION, NB201Op,
                                  nb201_measured_ops, nb201_ops, nb201_str)
from latbench.space import Arch, Space
from latbench.spaces import DEFAULT_SPACE, NB201, nb201_arch


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


@runtime_checkable
class OpLatencyPredictor(Protocol):
    """What the NAS-Bench-201 search needs of a latency predictor (ms of op keys)."""

    @property
    def search_space(self) -> str:
        """The registered space (:mod:`latbench.spaces`) of the predictor's ops."""
        ...

    def predict_ops(self, ops: Sequence[str]) -> np.ndarray:
        """ms of each op key (the calibration scale applied, not the per-network offset)."""
        ...

    def predict_network(self, ops: Sequence[str]) -> float:
        """ms of a network of these ops (their sum + the calibration offset)."""
        ...

    def predict(self, archs: Any) -> float | np.ndarray:
        """ms of one architecture (for NAS-Bench-201 its dict, string or index)."""
        ...


def search_space_of(predictor: object) -> str:
    """The registered space a predictor is for (a predictor without ``search_space``: ProxylessNAS)."""
    return str(getattr(predictor, "search_space", None) or DEFAULT_SPACE)


def _check_ms(v: float, where: str) -> float:
    if not math.isfinite(v) or v < 0:
        raise LatbenchError(f"predictor latency of {where} is {v}; expected ms >= 0")
    return float(v)


class ChoiceLatencies:
    """Candidate latencies (ms) per choice as tensors, plus the fixed part every architecture has:
    E[LAT] = fixed + Σ_l p_l · lat_l. Subclasses fill :attr:`tables` and :attr:`fixed` from a predictor
    and say what a derived architecture is (``deployment_arch``, ``predict``)."""

    tables: list[torch.Tensor]
    fixed: float

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

    def bounds(self) -> tuple[float, float]:
        """Latency of the fastest and the slowest architecture (ms)."""
        return (self.fixed + sum(float(t.min()) for t in self.tables),
                self.fixed + sum(float(t.max()) for t in self.tables))

    def fingerprint(self) -> list[list[float]]:
        """The tables as plain lists (stored in checkpoints to detect a changed predictor)."""
        return [[self.fixed]] + [t.tolist() for t in self.tables]


class LatencyModel(ChoiceLatencies):
    """Per-layer candidate latencies (ms) of a ProxylessNAS ``predictor`` at its deployment space."""

    def __init__(self, predictor: LatencyPredictor, train_space: Space | None = None) -> None:
        self.predictor = predictor
        self.space: Space = predictor.deployment_space()
        if train_space is not None:
            check_same_choices(train_space, self.space)
        rows = predictor.layer_latencies(self.space)
        if len(rows) != len(self.space.layers):
            raise LatbenchError(f"predictor gave latencies for {len(rows)} layers, the space has "
                                f"{len(self.space.layers)}")
        self.tables = []
        for layer, row in zip(self.space.layers, rows):
            vals = []
            for cand in layer.candidates:
                if cand not in row:
                    op = layer.op(cand)
                    raise LatbenchError(f"predictor has no latency for layer {layer.index} candidate {cand!r} "
                                        f"(op {op.key if op else cand}); profile that op or use another predictor")
                vals.append(_check_ms(float(row[cand]), f"layer {layer.index} {cand!r}"))
            self.tables.append(torch.tensor(vals, dtype=torch.float32))
        self.fixed = float(predictor.fixed_latency(self.space))

    def deployment_arch(self, names: Sequence[str]) -> Arch:
        return self.space.arch(list(names))

    def predict(self, arch: Arch) -> float:
        """The predictor's own latency of an architecture (must be a deployment-space arch)."""
        return float(self.predictor.predict(arch))


def nb201_stage_ops(op: str, c: int = NB201_C, resolution: int = NB201_RESOLUTION) -> list[NB201Op]:
    """The cell-edge op ``op`` at each of the three stages (C, 2C, 4C channels at resolution, /2, /4)."""
    return [NB201Op(op, resolution >> s, c << s, resolution >> s, c << s) for s in range(3)]


class NB201LatencyModel(ChoiceLatencies):
    """Per cell edge (6, :data:`~latbench.nasbench201.NB201_EDGES` order) and candidate
    (:data:`~latbench.nasbench201.NB201_OPS` order), the ms of that candidate summed over the 15 cells of
    the standard network (one α per edge is shared by every cell, so one edge choice costs 15 ops); the
    identity is free (0 ms). ``fixed`` = the stem, the two reduction blocks and the head + the calibration
    offset, so ``of_choices`` of an architecture equals ``predictor.predict`` of it (up to rounding)."""

    def __init__(self, predictor: OpLatencyPredictor) -> None:
        if search_space_of(predictor) != NB201:
            raise ConfigError(f"expected a {NB201} predictor, this one is for the {search_space_of(predictor)} space")
        self.predictor = predictor
        keys = [o.key for op in NB201_OPS if op not in NB201_FREE_OPS for o in nb201_stage_ops(op)]
        ms = dict(zip(keys, (float(v) for v in predictor.predict_ops(keys))))  # a missing op: one line naming it
        row = [0.0 if op in NB201_FREE_OPS else
               NB201_N * sum(_check_ms(ms[o.key], f"op {o.key}") for o in nb201_stage_ops(op)) for op in NB201_OPS]
        self.tables = [torch.tensor(row, dtype=torch.float32) for _ in NB201_EDGES]
        fixed_keys = [o.key for o in nb201_ops() if o.kind not in NB201_OPS]
        self.fixed = float(predictor.predict_network(fixed_keys))

    def deployment_arch(self, names: Sequence[str]) -> dict[str, Any]:
        """The architecture of 6 edge ops as the dict jobs carry (official string and index)."""
        return nb201_arch(nb201_str(list(names)))

    def predict(self, arch: dict[str, Any]) -> float:
        """The predictor's own latency of an architecture."""
        return float(self.predictor.predict(arch))


def check_same_choices(a: Space, b: Space) -> None:
    """Two spaces must offer the same candidates layer by layer (resolution may differ)."""
    if len(a.layers) != len(b.layers) or any(x.candidates != y.candidates for x, y in zip(a.layers, b.layers)):
        raise ConfigError(f"training space (width {a.width_mult}) and the predictor's deployment space "
                          f"(width {b.width_mult}) have different layer choices; use the predictor's width")


def flops_latencies(space: Space, ms_per_gflop: float = 10.0, overhead_ms: float = 0.02) -> dict[str, float]:
    """Synthetic op latencies from FLOPs (for tests/benchmarks without a profiled device);
    ``predictors.LUTPredictor.from_latencies`` turns them into a predictor."""
    return {op.key: overhead_ms + ms_per_gflop * op_features(op)["flops"] / 1e9 for op in space.distinct_ops()}


def nb201_flops_latencies(ms_per_gflop: float = 10.0, overhead_ms: float = 0.02) -> dict[str, float]:
    """Synthetic latencies of every timed NAS-Bench-201 op from its FLOPs (MACs), for tests/benchmarks
    without a profiled device; ``LUTPredictor.from_latencies(..., resolution=None, width_mult=None,
    n_classes=None)`` turns them into a ``nasbench201`` predictor."""
    return {op.key: overhead_ms + ms_per_gflop * op.cost()["flops"] / 1e9 for op in nb201_measured_ops()}
