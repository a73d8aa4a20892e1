"""Gradient-boosted trees (xgboost) on analytic op features: predicts ops absent from the table.

The model is a product of two parts, fitted in order:

1. an analytic *base* cost, ``c_kind + a·dense_flops + b·depthwise_flops + c·act_bytes + d·weight_bytes``
   with non-negative coefficients (NNLS on relative error), which scales sensibly to ops larger or
   smaller than any seen (trees alone cannot extrapolate);
2. xgboost on the op features, learning ``log(measured / base)`` — the efficiency the base misses
   (cache effects, vectorisation, per-kernel overheads).

``base_model="none"`` drops part 1 (plain log-latency regression).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latbench.errors import LatbenchError
from latbench.features import FEATURE_NAMES, op_features
from latbench.nasbench201 import NB201_OP_FEATURE_NAMES, NB201_OP_KINDS, NB201Op
from latbench.ops import OpSpec
from latbench.spaces import DEFAULT_SPACE, NB201
from predictors.base import BasePredictor
from predictors.data import OpData
from predictors.io import register_predictor

log = logging.getLogger(__name__)

_KIND_COLS = ("is_stem", "is_mbconv", "is_feature_mix", "is_logits")
#: Features whose fitted range is the predictor's domain; an op more than :data:`FAR` times outside the range of
#: one of them (a 100000-px input, a 10000-channel layer) is an extrapolation trees and the base cannot vouch for.
DOMAIN_FEATURES = ("in_h", "in_w", "in_ch", "out_ch", "mid_ch", "flops", "act_bytes", "weight_bytes")
FAR = 8.0


class ExtrapolationError(LatbenchError):
    """An op far outside what the predictor was fitted on (refused unless ``allow_extrapolation``)."""
BASE_TERMS = _KIND_COLS + ("dense_flops", "flops_depthwise", "act_bytes", "weight_bytes")


def feature_matrix(ops: Sequence[OpSpec]) -> np.ndarray:
    """Rows of :data:`latbench.features.FEATURE_NAMES` for ``ops`` (recomputed from the specs)."""
    return np.array([[op_features(op)[n] for n in FEATURE_NAMES] for op in ops], dtype=float).reshape(
        len(ops), len(FEATURE_NAMES))


def _base_design(F: np.ndarray) -> np.ndarray:
    col = {n: F[:, i] for i, n in enumerate(FEATURE_NAMES)}
    dense = col["flops"] - col["flops_depthwise"]
    return np.stack([col[n] if n != "dense_flops" else dense for n in BASE_TERMS], axis=1)


def _nb201_matrix(ops: Sequence[NB201Op]) -> np.ndarray:
    return np.array([[op.features()[n] for n in NB201_OP_FEATURE_NAMES] for op in ops], dtype=float).reshape(
        len(ops), len(NB201_OP_FEATURE_NAMES))


_NB201_BASE_TERMS = tuple(f"is_{k}" for k in NB201_OP_KINDS) + ("flops", "act_bytes", "weight_bytes")


def _nb201_design(F: np.ndarray) -> np.ndarray:
    return np.stack([F[:, NB201_OP_FEATURE_NAMES.index(n)] for n in _NB201_BASE_TERMS], axis=1)


@dataclass(frozen=True)
class FeatureSet:
    """The op features of one search space: their names, the matrix of ops, the analytic base's design
    (its terms) and the features whose fitted range is the domain."""

    names: tuple[str, ...]
    base_terms: tuple[str, ...]
    domain: tuple[str, ...]
    matrix: Callable[[Sequence[Any]], np.ndarray]
    design: Callable[[np.ndarray], np.ndarray]


#: Per search space (:mod:`latbench.spaces`): ProxylessNAS ops (:mod:`latbench.features`) and NAS-Bench-201
#: ops (:meth:`latbench.nasbench201.NB201Op.features`: kind one-hot, shapes, FLOPs, params, bytes).
FEATURE_SETS: dict[str, FeatureSet] = {
    DEFAULT_SPACE: FeatureSet(FEATURE_NAMES, BASE_TERMS, DOMAIN_FEATURES, feature_matrix, _base_design),
    NB201: FeatureSet(NB201_OP_FEATURE_NAMES, _NB201_BASE_TERMS,
                      ("in_h", "in_ch", "out_ch", "flops", "act_bytes", "weight_bytes"), _nb201_matrix, _nb201_design),
}


def load_booster(raw: Any, what: str) -> Any:
    """The xgboost model of a predictor file from its UBJSON bytes (xgboost parses them as data, never code);
    a one-line error for missing or corrupt bytes."""
    import xgboost as xgb

    if not isinstance(raw, bytes):
        raise LatbenchError(f"{what} state has no xgboost model bytes")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
    except xgb.core.XGBoostError as e:
        raise LatbenchError(f"the xgboost model in the file is corrupt: {str(e).splitlines()[0]}") from None
    return booster


def booster_params(est: Any) -> dict[str, Any]:
    """xgboost's training parameters from an estimator's scikit-learn-style hyper-parameters (both GBDT kinds)."""
    return {"objective": "reg:squarederror", "tree_method": "hist", "max_depth": int(est.max_depth),
            "eta": float(est.learning_rate), "subsample": float(est.subsample),
            "colsample_bytree": float(est.colsample_bytree),
            "min_child_weight": float(est.min_child_weight), "lambda": float(est.reg_lambda),
            "nthread": int(est.n_jobs), "seed": int(est.random_state), "verbosity": 0}


@register_predictor
class GBDTPredictor(BasePredictor):
    """xgboost regression of op latency on op features; architecture latency = Σ op predictions.

    Parameters are xgboost's (CPU ``hist`` trees) plus ``base_model`` ("linear" or "none") and ``stat``,
    the table column learned (``median_ms``).
    """

    kind = "gbdt"

    def __init__(self, n_estimators: int = 400, max_depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.9, colsample_bytree: float = 0.9, min_child_weight: float = 1.0,
                 reg_lambda: float = 1.0, base_model: str = "linear", stat: str = "median_ms",
                 n_jobs: int = 2, random_state: int = 0, allow_extrapolation: bool = False) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.base_model = base_model
        self.stat = stat
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.allow_extrapolation = allow_extrapolation

    def _xgb_params(self) -> dict[str, Any]:
        return booster_params(self)

    def _fit_ops(self, data: OpData) -> None:
        import xgboost as xgb  # deferred here and below: xgboost takes ~1 s to import; a LUT never needs it

        if self.base_model not in ("linear", "none"):
            raise LatbenchError(f"base_model must be 'linear' or 'none', got {self.base_model!r}")
        if len(data.ops) < 2:
            raise LatbenchError(f"GBDTPredictor needs at least 2 measured ops, got {len(data.ops)}")
        fs = FEATURE_SETS[data.space]
        F = fs.matrix(data.ops)
        y = np.log(data.ms)
        self.base_coef_ = self._fit_base(F, data.ms, fs) if self.base_model == "linear" else []
        target = y - np.log(self._base(F, fs))
        dtrain = xgb.DMatrix(F, label=target, feature_names=list(fs.names))
        self.booster_ = xgb.train(self._xgb_params(), dtrain, num_boost_round=int(self.n_estimators))
        self.train_rmse_log_ = float(np.sqrt(np.mean((self.booster_.predict(dtrain) - target) ** 2)))
        cols = [fs.names.index(n) for n in fs.domain]
        self.domain_ = {n: [float(F[:, c].min()), float(F[:, c].max())] for n, c in zip(fs.domain, cols)}

    @property
    def _features(self) -> FeatureSet:
        return FEATURE_SETS[self.search_space]

    def _check_domain(self, ops: Sequence[OpSpec], F: np.ndarray) -> None:
        """Refuse (or, with ``allow_extrapolation``, warn about) ops far outside the fitted domain."""
        domain = getattr(self, "domain_", None) or {}
        names = self._features.names
        for name, (lo, hi) in domain.items():
            v = F[:, names.index(name)]
            far = (v > hi * FAR) | ((lo > 0) & (v < lo / FAR))
            if not far.any():
                continue
            i = int(np.flatnonzero(far)[0])
            msg = (f"{type(self).__name__} was fitted on ops with {name} {lo:g}–{hi:g}, but op {ops[i].key} has "
                   f"{name} {v[i]:g} (more than {FAR:g}× outside, {int(far.sum())} op(s) like it): its latency "
                   "would be an extrapolation")
            if not self.allow_extrapolation:
                raise ExtrapolationError(msg + "; measure such ops, or allow it (`latbench predict "
                                         "--allow-extrapolation`, GBDTPredictor(allow_extrapolation=True))")
            log.warning("%s", msg)
            return

    def _fit_base(self, F: np.ndarray, ms: np.ndarray, fs: FeatureSet) -> list[float]:
        from scipy.optimize import nnls  # deferred: scipy.optimize is slow to import, only fitting needs it

        X = fs.design(F)
        scale = np.where(X.max(axis=0) > 0, X.max(axis=0), 1.0)  # conditioning
        A = (X / scale) / ms[:, None]  # relative error: (X·c)/y ≈ 1
        coef, _ = nnls(A, np.ones(len(ms)))
        coef = coef / scale
        if not np.any(coef > 0):
            raise LatbenchError("the linear base model of GBDTPredictor came out all zero; "
                                "use base_model='none'")
        return [float(c) for c in coef]

    def _base(self, F: np.ndarray, fs: FeatureSet | None = None) -> np.ndarray:
        if not self.base_coef_:
            return np.ones(len(F))
        b = (fs or self._features).design(F) @ np.asarray(self.base_coef_)
        return np.maximum(b, 1e-6)  # a kind never seen with zero flops must not give log(0)

    def _raw_op_ms(self, ops: Sequence[OpSpec]) -> np.ndarray:
        import xgboost as xgb

        if not ops:
            return np.zeros(0)
        fs = self._features
        F = fs.matrix(ops)
        self._check_domain(ops, F)
        corr = self.booster_.predict(xgb.DMatrix(F, feature_names=list(fs.names)))
        return self._base(F) * np.exp(corr.astype(float))

    # -- state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        fs = self._features
        return {"model_ubj": bytes(self.booster_.save_raw(raw_format="ubj")),
                "feature_names": list(fs.names), "base_terms": list(fs.base_terms),
                "base_coef": [float(c) for c in self.base_coef_],
                "train_rmse_log": float(self.train_rmse_log_),
                "domain": {k: [float(a), float(b)] for k, (a, b) in getattr(self, "domain_", {}).items()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        fs = self._features  # the base state (its search space) is loaded first
        if list(state.get("feature_names", [])) != list(fs.names) or \
                list(state.get("base_terms", [])) != list(fs.base_terms):
            raise LatbenchError("this GBDT predictor was trained on other op features than this latbench "
                                "computes; refit it with `latbench fit-predictor --kind xgb`")
        self.booster_ = load_booster(state.get("model_ubj"), "GBDT")
        self.base_coef_ = [float(c) for c in state.get("base_coef", [])]
        self.train_rmse_log_ = float(state.get("train_rmse_log", float("nan")))
        domain = state.get("domain") or {}  # files written before the domain was kept: no check
        if not isinstance(domain, dict) or any(k not in fs.domain or not isinstance(v, list) or len(v) != 2
                                               for k, v in domain.items()):
            raise LatbenchError("GBDT state has a malformed fitted domain; refit the predictor")
        self.domain_ = {k: [float(v[0]), float(v[1])] for k, v in domain.items()}
