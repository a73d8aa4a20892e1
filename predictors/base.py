"""The base of latency predictors: per-layer matrix of a space, prediction of architectures, calibration.

A predictor estimates the latency (ms) of one op; an architecture's latency is the sum over its ops
(ProxylessNAS' method), optionally calibrated as ``scale * sum + offset`` from a few measured whole
networks. Calibration is folded into the outputs consistently::

    predict_ops(ops)        = scale * raw(op)                    (per op)
    layer_latencies(space)  = [{cand: scale * raw(op)}, ...]     (per searchable layer, zero -> 0)
    fixed_latency(space)    = scale * (stem + mix + logits) + offset
    predict(arch)           = fixed_latency + sum of the chosen layer entries

so the search's expected latency, built from the matrix, equals ``predict`` on a derived net.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from latbench.errors import LatbenchError
from latbench.ops import OpSpec
from latbench.nasbench201 import NB201_CLASSES, NB201_RESOLUTION, nb201_arch_ops
from latbench.space import FIRST_BLOCK_CANDIDATES, MBCONV_CANDIDATES, ZERO, Arch, Space, infer_space, space_to_dict
from latbench.spaces import DEFAULT_SPACE, NB201, SpaceError, arch_key, get_space, nb201_arch, space_of
from predictors.calibration import check_calibration, fit_calibration_line
from predictors.data import OpData, check_latency, op_data, parse_op
from predictors.io import save_predictor

log = logging.getLogger(__name__)

#: Every candidate name of the space gets a fixed column in the per-space matrix.
CANDIDATE_NAMES: tuple[str, ...] = FIRST_BLOCK_CANDIDATES + MBCONV_CANDIDATES + (ZERO,)
_CAND_COL: dict[str, int] = {name: i for i, name in enumerate(CANDIDATE_NAMES)}

class NotFittedError(LatbenchError, ValueError):
    """A predictor used before ``fit``."""


class MissingOpError(LatbenchError, KeyError):
    """A LUT has no latency for an op an architecture needs."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# -- per-space lookup ----------------------------------------------------------------------------
@dataclass
class _SpaceTable:
    """Raw (uncalibrated) op latencies of one space laid out for vectorised prediction."""

    matrix: np.ndarray          # (n_layers, len(CANDIDATE_NAMES)); NaN = missing or not allowed
    missing: dict[tuple[int, int], str]   # (layer, col) -> op key the predictor lacks
    fixed: float                # stem + mix + logits (NaN if one is missing)
    fixed_missing: str | None


class BasePredictor(RegressorMixin, BaseEstimator):
    """Base of latency predictors, scikit-learn estimators: ``__init__`` stores params, ``fit`` returns
    self, fitted state ends in ``_`` (``get_params``/``set_params``/``repr`` are scikit-learn's).

    Subclasses implement :meth:`_fit_ops` and :meth:`_raw_op_ms`, and their extra state in
    :meth:`_state` / :meth:`_load_state` (plain data only: see :mod:`predictors.io`).
    """

    kind: ClassVar[str] = ""

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "space_")

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(...) first "
                                 "(or load a fitted one with predictors.load_predictor)")

    @property
    def search_space(self) -> str:
        """The registered search space (:mod:`latbench.spaces`) whose ops the predictor was fitted on."""
        self._check_fitted()
        return str(getattr(self, "search_space_", None) or DEFAULT_SPACE)

    def fit(self, X: Any, y: Any = None, **kwargs: Any) -> BasePredictor:
        """Fit on op tables (paths, a DataFrame, a list of them) or on ``(ops, ms)``.

        Keyword ``resolution``/``width_mult``/``n_classes`` override the inferred deployment space.
        Keyword ``space`` (a registered search space name, see :mod:`latbench.spaces`) checks that the ops are
        that space's (by default the space is the one the op keys belong to).
        """
        space_kw = {k: kwargs.pop(k) for k in ("resolution", "width_mult", "n_classes") if k in kwargs}
        want = kwargs.pop("space", None)
        data = op_data(X, y, stat=getattr(self, "stat", "median_ms"),
                       space=get_space(want).name if want is not None else None)
        if kwargs:
            raise LatbenchError(f"unknown fit arguments: {', '.join(kwargs)}")
        if want is not None and get_space(want).name != data.space:
            raise SpaceError(f"{data.source}: these are {data.space} op tables, not {get_space(want).name} ones; "
                             f"pass --space {data.space} or that space's tables")
        if data.space != DEFAULT_SPACE and {k: v for k, v in space_kw.items() if v is not None}:
            raise SpaceError(f"the {data.space} space has a fixed skeleton; resolution/width/classes apply to "
                             f"{DEFAULT_SPACE} only")
        self._reset()
        self.search_space_ = data.space
        self._fit_ops(data)
        if data.space == DEFAULT_SPACE:
            self.space_ = space_to_dict(infer_space([o.key for o in data.ops], **space_kw))
        else:
            self.space_ = {"resolution": NB201_RESOLUTION, "width_mult": 1.0, "n_classes": NB201_CLASSES}
        self.device_, self.backend_, self.target_ = data.device, data.backend, data.target
        self.n_train_ = len(data.ops)
        self.calibration_ = {"scale": 1.0, "offset": 0.0, "n": 0}
        log.info("fitted %s on %d ops from %s (device %s)", type(self).__name__, self.n_train_, data.source,
                 data.device)
        return self

    def _reset(self) -> None:
        """Forget fitted state (a failed refit must not leave a half-fitted predictor behind)."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)
        self._tables: dict[Space, _SpaceTable] = {}

    def check_decomposable(self) -> None:
        """Nothing for a predictor of op latencies (it gives per-layer tables and per-op latencies, what the
        gradient search needs); a one-line error for one that predicts only whole networks."""

    def _fit_ops(self, data: OpData) -> None:
        raise NotImplementedError

    def _raw_op_ms(self, ops: Sequence[OpSpec]) -> np.ndarray:
        """Uncalibrated latency of each op (ms); NaN where unknown (a LUT's missing ops)."""
        raise NotImplementedError

    # -- ops -----------------------------------------------------------------------------------------
    @property
    def scale_(self) -> float:
        return float(self.calibration_["scale"])

    @property
    def offset_(self) -> float:
        return float(self.calibration_["offset"])

    def predict_ops(self, ops: Sequence[OpSpec | str]) -> np.ndarray:
        """Latency (ms) of each op (calibration scale applied; the per-network offset is not)."""
        self._check_fitted()
        specs = [parse_op(o, self.search_space) for o in ops]
        raw = self._raw_op_ms(specs)
        bad = np.flatnonzero(np.isnan(raw))
        if bad.size:
            raise self._missing(specs[bad[0]].key, None)
        return raw * self.scale_

    def predict_network(self, ops: Sequence[OpSpec | str]) -> float:
        """Latency (ms) of a whole network given its ops (e.g. ``Net.op_specs`` of an official net config,
        widths outside the space allowed): the calibrated sum, equal to :meth:`predict` for an arch."""
        return float(np.sum(self.predict_ops(ops)) + self.offset_)

    def _missing(self, key: str, space: Space | None) -> MissingOpError:
        dep = self.deployment_space() if space is not None else None
        where = ""
        if dep is not None and space is not None and space != dep:
            where = (f" (the architecture is at resolution {space.resolution}, width {space.width_mult:g}, "
                     f"{space.n_classes} classes; the table covers resolution {dep.resolution}, width "
                     f"{dep.width_mult:g}, {dep.n_classes} classes)")
        return MissingOpError(f"{type(self).__name__} has no latency for op {key}{where}; measure it, "
                              "or set a fallback predictor (LUTPredictor(fallback=GBDTPredictor()))")

    # -- spaces ----------------------------------------------------------------------------------------
    def deployment_space(self) -> Space:
        """The space the predictor was fitted for (resolution, width multiplier, classes); ProxylessNAS
        predictors only (the per-layer matrix the search uses)."""
        self._check_fitted()
        if self.search_space != DEFAULT_SPACE:
            raise SpaceError(f"this predictor is for the {self.search_space} space; the ProxylessNAS search, net "
                             f"configs and per-layer tables need a {DEFAULT_SPACE} predictor")
        s = self.space_
        return Space(int(s["resolution"]), float(s["width_mult"]), int(s["n_classes"]))

    def _table(self, space: Space | None) -> tuple[Space, _SpaceTable]:
        self._check_fitted()
        space = space or self.deployment_space()
        if not isinstance(space, Space):
            raise LatbenchError(f"expected a latbench.space.Space, got {type(space).__name__}")
        tables = self.__dict__.setdefault("_tables", {})
        if space not in tables:
            cand_ops = space.candidate_ops()
            flat = [(li, _CAND_COL[c], op) for li, layer in enumerate(space.layers)
                    for c, op in zip(layer.candidates, cand_ops[li]) if op is not None]
            fixed_ops = list(space.fixed_ops)
            raw = self._raw_op_ms([op for *_, op in flat] + fixed_ops)
            m = np.full((len(space.layers), len(CANDIDATE_NAMES)), np.nan)
            missing = {}
            for (li, col, op), v in zip(flat, raw):
                m[li, col] = v
                if np.isnan(v):
                    missing[(li, col)] = op.key
            for li, layer in enumerate(space.layers):
                if layer.can_skip:
                    m[li, _CAND_COL[ZERO]] = 0.0
            fixed_raw = raw[len(flat):]
            fm = next((o.key for o, v in zip(fixed_ops, fixed_raw) if np.isnan(v)), None)
            tables[space] = _SpaceTable(m, missing, float(fixed_raw.sum()), fm)
        return space, tables[space]

    def layer_latencies(self, space: Space | None = None) -> list[dict[str, float]]:
        """Per searchable layer of ``space`` (default: the deployment space): candidate -> ms (``zero`` -> 0)."""
        space, t = self._table(space)
        if t.missing:
            raise self._missing(next(iter(t.missing.values())), space)
        out = []
        for li, layer in enumerate(space.layers):
            out.append({c: (0.0 if c == ZERO else float(t.matrix[li, _CAND_COL[c]] * self.scale_))
                        for c in layer.candidates})
        return out

    def fixed_latency(self, space: Space | None = None) -> float:
        """Latency of the layers every architecture has (stem, feature mix, logits), offset included."""
        space, t = self._table(space)
        if t.fixed_missing:
            raise self._missing(t.fixed_missing, space)
        return float(t.fixed * self.scale_ + self.offset_)

    # -- architectures ---------------------------------------------------------------------------------
    @staticmethod
    def _as_arch(a: Any) -> Arch:
        if isinstance(a, Arch):
            return a
        if isinstance(a, dict):
            return Arch.from_dict(a)
        if isinstance(a, str):
            try:
                return Arch.from_dict(json.loads(a))
            except json.JSONDecodeError:
                pass
        raise LatbenchError(f"expected an Arch (or its dict/JSON), got {type(a).__name__}")

    def _as_space_arch(self, a: Any) -> Any:
        """An architecture of the predictor's search space: an :class:`Arch` for ProxylessNAS, for another
        space its plain dict (:func:`latbench.spaces.nb201_arch`: from that dict, an official string or
        index); an architecture of another space is a one-line :class:`SpaceError`."""
        space = self.search_space
        if space == DEFAULT_SPACE:
            if isinstance(a, dict) and space_of(a) != DEFAULT_SPACE or isinstance(a, int) or \
                    isinstance(a, str) and a.strip().startswith("|"):
                theirs = space_of(a) if isinstance(a, dict) else NB201
                raise SpaceError(f"this predictor is for the {DEFAULT_SPACE} space but the architecture is a "
                                 f"{theirs} one; use a predictor fitted on {theirs} tables "
                                 f"(fit-predictor --space {theirs})")
            return self._as_arch(a)
        if isinstance(a, Arch) or isinstance(a, dict) and space_of(a) != space:
            theirs = space_of(a.to_dict() if isinstance(a, Arch) else a)
            raise SpaceError(f"this predictor is for the {space} space but the architecture is a {theirs} one; "
                             f"use a predictor fitted on {theirs} tables")
        if isinstance(a, dict):
            return nb201_arch(a.get("arch_str") or int(a["arch_index"]))
        if isinstance(a, str) and a.strip().startswith("{"):
            return self._as_space_arch(json.loads(a))
        if isinstance(a, (str, int)) and not isinstance(a, bool):
            return nb201_arch(a)
        raise LatbenchError(f"expected a {space} architecture (official string, index or its dict), "
                            f"got {type(a).__name__}")

    def _predict_raw_space(self, archs: Sequence[Any]) -> np.ndarray:
        """Uncalibrated Σ op latencies per arch of another space than ProxylessNAS (NAS-Bench-201: the
        ops of :func:`latbench.nasbench201.nb201_arch_ops`)."""
        arch_ops = [nb201_arch_ops(self._as_space_arch(a)["arch_str"]) for a in archs]
        distinct = list(dict.fromkeys(op for ops in arch_ops for op in ops))
        raw = dict(zip(distinct, self._raw_op_ms(distinct)))
        out = np.empty(len(archs))
        for i, ops in enumerate(arch_ops):
            bad = next((op for op in ops if np.isnan(raw[op])), None)
            if bad is not None:
                raise self._missing(bad.key, None)
            out[i] = float(sum(raw[op] for op in ops))
        return out

    def _predict_raw(self, archs: Sequence[Any]) -> np.ndarray:
        """Uncalibrated Σ op latencies per arch, vectorised over archs of the same space."""
        if self.search_space != DEFAULT_SPACE:
            return self._predict_raw_space(archs)
        out = np.empty(len(archs))
        groups: dict[Space, list[int]] = {}
        arch_list = [self._as_space_arch(a) for a in archs]
        for i, a in enumerate(arch_list):
            groups.setdefault(a.space, []).append(i)
        for space, members in groups.items():
            space, t = self._table(space)
            if t.fixed_missing:
                raise self._missing(t.fixed_missing, space)
            n_layers = len(space.layers)
            idx = np.fromiter((_CAND_COL[c] for i in members for c in arch_list[i].ops),
                              dtype=np.intp, count=len(members) * n_layers).reshape(len(members), n_layers)
            vals = t.matrix[np.arange(n_layers), idx]
            sums = vals.sum(axis=1)
            bad = np.flatnonzero(np.isnan(sums))
            if bad.size:
                row = bad[0]
                li = int(np.flatnonzero(np.isnan(vals[row]))[0])
                raise self._missing(t.missing.get((li, int(idx[row, li])), "?"), space)
            out[members] = sums + t.fixed
        return out

    def predict(self, archs: Any) -> float | np.ndarray:
        """Latency (ms) of an architecture, or an array for a list of them."""
        self._check_fitted()
        single = isinstance(archs, (Arch, dict, str, int))
        items = [archs] if single else list(archs)
        pred = self._predict_raw(items) * self.scale_ + self.offset_
        return float(pred[0]) if single else pred

    def score(self, archs: Sequence[Any], measured_ms: Sequence[float]) -> float:
        """Coefficient of determination R² of predicted vs measured whole-network latency.

        latbench's own rather than :class:`~sklearn.base.RegressorMixin`'s: NaN (not 0 or 1) when the
        measured latencies are all equal, where R² says nothing."""
        y = np.asarray(measured_ms, dtype=float)
        p = np.asarray(self.predict(list(archs)), dtype=float)
        ss_res = float(((y - p) ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")

    # -- calibration ----------------------------------------------------------------------------------
    def fit_calibration(self, archs: Sequence[Any], measured_ms: Sequence[float],
                        mode: str = "auto") -> BasePredictor:
        """Learn ``measured ≈ scale * Σops + offset`` from measured whole networks.

        See :func:`predictors.calibration.fit_calibration_line` for the modes. Replaces any
        previous calibration.
        """
        self._check_fitted()
        archs = list(archs)
        y = np.asarray(measured_ms, dtype=float)
        if len(archs) == 0 or y.shape != (len(archs),):
            raise LatbenchError(f"calibration needs one measured latency per arch (got {len(archs)} archs, "
                                f"{y.size} latencies)")
        for a, v in zip(archs, y):
            arch = self._as_space_arch(a)
            check_latency(v, arch.key if isinstance(arch, Arch) else arch_key(arch), "calibration")
        scale, offset, used = fit_calibration_line(self._predict_raw(archs), y, mode)
        self.calibration_ = check_calibration({"scale": scale, "offset": offset, "n": len(archs), "mode": used},
                                              "the fitted calibration")
        log.info("calibration from %d archs (%s): scale %.4f offset %.4f ms", len(archs), used, scale, offset)
        return self

    # -- files -----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor as a safe ``.pkl`` (see :mod:`predictors.io`)."""
        return save_predictor(self, path)

    def _base_state(self) -> dict[str, Any]:
        return {"space": dict(self.space_), "search_space": self.search_space, "device": self.device_,
                "backend": self.backend_, "target": self.target_, "n_train": int(self.n_train_),
                "calibration": {k: (v if isinstance(v, str) else float(v)) for k, v in self.calibration_.items()}}

    def _load_base_state(self, s: dict[str, Any]) -> None:
        self._reset()
        self.space_ = dict(s["space"])
        self.search_space_ = get_space(s.get("search_space") or DEFAULT_SPACE).name  # older files: the default
        self.device_, self.backend_, self.target_ = s.get("device"), s.get("backend"), s.get("target")
        self.n_train_ = int(s.get("n_train", 0))
        self.calibration_ = check_calibration(s.get("calibration") or {"scale": 1.0, "offset": 0.0, "n": 0})

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _plain_params(self) -> dict[str, Any]:
        """Constructor parameters as plain data (nested predictors are stored by :mod:`predictors.io`)."""
        return {k: v for k, v in self.get_params(deep=False).items() if not isinstance(v, BasePredictor)}

    def describe(self) -> dict[str, Any]:
        """A short summary for CLIs and logs."""
        self._check_fitted()
        return {"kind": self.kind, "device": self.device_, "backend": self.backend_, "n_train": self.n_train_,
                "space": dict(self.space_), "calibration": dict(self.calibration_),
                "search_space": self.search_space}
