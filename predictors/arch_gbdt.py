"""Whole-network latency from architecture features: xgboost on the cell / layer choices (``--kind xgb-arch``).

The other predictors sum per-op latencies fitted on op tables; this one learns the latency of whole
networks from whole-network tables (``archs-<backend>.parquet``), as BRP-NAS and HELP do, so it captures
what a sum of ops misses (fusion across ops, the cell's node sums, cache effects between layers), at the
price of needing measured networks and of giving no per-layer latencies.

Features (one row per network):

* NAS-Bench-201: :func:`latbench.nasbench201.nb201_features` — the per-edge one-hot of the 6 edges' ops,
  plus per op kind its count and its count on live input→output paths, and whether the output is connected
  (:data:`~latbench.nasbench201.NB201_FEATURE_NAMES`);
* ProxylessNAS: :func:`latbench.features.arch_features` (the proxy adapter's): per searchable layer its kernel
  and expand (0/0 for ``zero``, so each layer's candidate is identified), plus the log of the summed FLOPs,
  params and bytes of the network's ops, and its resolution and width.

Target: the log of the latency. Squared error in log space is a symmetric relative error, so the fast and the
slow networks of a space (7.8–220 MFLOPs in NAS-Bench-201, a 10× latency range) weigh alike, as in the MAPE and
rank metrics the predictor is judged by; the prediction ``exp(f(x))`` is always positive; and the effects that
multiply (a heavier op on an edge costs more in every one of the 15 cells) become sums, which boosted trees
model with fewer splits. Plain squared error on ms would spend the trees on the slowest networks; a
relative-error objective (weights 1/y²) does the opposite and is undefined for a noisy near-zero latency.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from latbench.errors import LatbenchError
from latbench.features import arch_feature_names, arch_features
from latbench.metrics import accuracy_metrics
from latbench.nasbench201 import NB201_CLASSES, NB201_FEATURE_NAMES, NB201_RESOLUTION, nb201_features
from latbench.ops import OpSpec
from latbench.space import Space, space_to_dict
from latbench.spaces import DEFAULT_SPACE, NB201, SpaceError, get_space
from predictors.base import BasePredictor
from predictors.data import arch_data
from predictors.gbdt import booster_params, load_booster
from predictors.io import register_predictor

log = logging.getLogger(__name__)


class WholeNetworkOnlyError(LatbenchError):
    """A per-layer or per-op latency asked of a predictor of whole networks."""


def feature_names(space: str, n_layers: int) -> tuple[str, ...]:
    """Column names of the architecture features of ``space`` (ProxylessNAS: ``n_layers`` searchable layers)."""
    return NB201_FEATURE_NAMES if space == NB201 else arch_feature_names(n_layers)


@register_predictor
class ArchGBDTPredictor(BasePredictor):
    """xgboost regression of log whole-network latency on architecture features (see the module docstring).

    Parameters are xgboost's (CPU ``hist`` trees), ``stat`` (the table column learned, ``median_ms``) and
    ``holdout``: a fraction of the networks (drawn with ``random_state``) left out of the fit, whose accuracy
    (:func:`latbench.metrics.accuracy_metrics`) is kept as ``holdout_`` and shown by :meth:`describe`.
    ``n_jobs`` is 1: on tables of hundreds of networks a second thread costs more in synchronisation than it
    saves (0.28 s vs 0.47 s for 200 networks, 500 rounds, on a loaded 2-core machine).
    ``predict``/``score``/``fit_calibration`` take the space's architectures as the other predictors do;
    per-layer and per-op latencies (:meth:`layer_latencies`, :meth:`fixed_latency`, :meth:`predict_ops`) are a
    one-line :class:`WholeNetworkOnlyError`.
    """

    kind = "xgb-arch"

    def __init__(self, n_estimators: int = 500, max_depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.9, colsample_bytree: float = 0.9, min_child_weight: float = 1.0,
                 reg_lambda: float = 1.0, stat: str = "median_ms", holdout: float = 0.0, n_jobs: int = 1,
                 random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.stat = stat
        self.holdout = holdout
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _xgb_params(self) -> dict[str, Any]:
        return booster_params(self)

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, **kwargs: Any) -> ArchGBDTPredictor:
        """Fit on architecture tables (``archs-<backend>.parquet``: paths, a DataFrame, a list of them) or on
        ``(archs, ms)``. Keyword ``space`` (a registered space name) checks the networks are that space's (by
        default the table says: NAS-Bench-201 rows have ``arch_str``)."""
        import xgboost as xgb  # deferred: xgboost takes ~1 s to import

        want = kwargs.pop("space", None)
        if kwargs:
            raise LatbenchError(f"unknown fit arguments: {', '.join(kwargs)} (the xgb-arch predictor learns the "
                                "networks' own shapes; resolution/width/classes apply to op tables)")
        if not 0.0 <= float(self.holdout) < 1.0:
            raise LatbenchError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        data = arch_data(X, y, self.stat, get_space(want).name if want is not None else None)
        self._reset()
        self.search_space_ = data.space
        if data.space == DEFAULT_SPACE:
            archs = [self._as_arch(a) for a in data.archs]
            spaces = sorted({a.space for a in archs}, key=str)
            if len(spaces) > 1:
                raise SpaceError(f"{data.source}: the networks are of {len(spaces)} deployment spaces (resolution, "
                                 "width, classes); fit one xgb-arch predictor per space")
            self.space_ = space_to_dict(spaces[0])
        else:
            self.space_ = {"resolution": NB201_RESOLUTION, "width_mult": 1.0, "n_classes": NB201_CLASSES}
            archs = [self._as_space_arch(a) for a in data.archs]
        F, target = self._features(archs), np.log(data.ms)
        train, test = self._split(len(archs))
        names = list(self._names())
        dtrain = xgb.DMatrix(F[train], label=target[train], feature_names=names)
        self.booster_ = xgb.train(self._xgb_params(), dtrain, num_boost_round=int(self.n_estimators))
        self.train_rmse_log_ = float(np.sqrt(np.mean((self.booster_.predict(dtrain) - target[train]) ** 2)))
        self.holdout_: dict[str, float] | None = None
        if test.size:
            pred = np.exp(self.booster_.predict(xgb.DMatrix(F[test], feature_names=names)).astype(float))
            self.holdout_ = accuracy_metrics(pred, data.ms[test])
        self.device_, self.backend_, self.target_ = data.device, data.backend, data.target
        self.n_train_ = int(train.size)
        self.calibration_ = {"scale": 1.0, "offset": 0.0, "n": 0}
        log.info("fitted %s on %d %s networks from %s (device %s)%s", type(self).__name__, self.n_train_,
                 data.space, data.source, data.device,
                 f"; held out {test.size}: MAPE {self.holdout_['mape_pct']:.2f} %, Spearman "
                 f"{self.holdout_['spearman']:.4f}" if self.holdout_ else "")
        return self

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the fitted and held-out networks (seeded by ``random_state``)."""
        n_test = int(round(float(self.holdout) * n))
        if n - n_test < 2 or (self.holdout and n_test < 2):
            raise LatbenchError(f"the xgb-arch predictor needs at least 2 networks to fit (and 2 to hold out with "
                                f"holdout {self.holdout:g}); the tables have {n}")
        perm = np.random.default_rng(int(self.random_state)).permutation(n)
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])

    def _names(self) -> tuple[str, ...]:
        return feature_names(self.search_space, len(self.deployment_space().layers)
                             if self.search_space == DEFAULT_SPACE else 0)

    def _features(self, archs: Sequence[Any]) -> np.ndarray:
        """Feature rows of architectures of the predictor's space (already parsed: Arch or NB-201 dict)."""
        if self.search_space == NB201:
            rows = [nb201_features(a["arch_str"]) for a in archs]
        else:
            dep = self.deployment_space()
            for a in archs:
                if a.space != dep:
                    raise SpaceError(f"this xgb-arch predictor learnt networks at resolution {dep.resolution}, width "
                                     f"{dep.width_mult:g}, {dep.n_classes} classes; the architecture is at "
                                     f"resolution {a.resolution}, width {a.width_mult:g}, {a.n_classes} classes "
                                     "(trees cannot extrapolate: fit one on networks of that space)")
            rows = [arch_features(a) for a in archs]
        return np.vstack(rows) if rows else np.zeros((0, len(self._names())))

    # -- prediction ------------------------------------------------------------------------------
    def _predict_raw(self, archs: Sequence[Any]) -> np.ndarray:
        import xgboost as xgb

        F = self._features([self._as_space_arch(a) for a in archs])
        if not len(F):
            return np.zeros(0)
        return np.exp(self.booster_.predict(xgb.DMatrix(F, feature_names=list(self._names()))).astype(float))

    def check_decomposable(self) -> None:
        self._whole_network_only("per-layer and per-op latencies")

    def _whole_network_only(self, what: str) -> NoReturn:
        raise WholeNetworkOnlyError(
            f"the xgb-arch predictor learns whole networks and has no {what} (what the search's expected latency, "
            "--breakdown and net configs need); use a lut or xgb predictor fitted on op tables for that "
            "(latbench fit-predictor --kind lut|xgb --table ops-<backend>.parquet)")

    def layer_latencies(self, space: Space | None = None) -> list[dict[str, float]]:
        self._whole_network_only("per-layer latencies")

    def fixed_latency(self, space: Space | None = None) -> float:
        self._whole_network_only("per-layer latencies")

    def predict_ops(self, ops: Sequence[OpSpec | str]) -> np.ndarray:
        self._whole_network_only("per-op latencies")

    def predict_network(self, ops: Sequence[OpSpec | str]) -> float:
        self._whole_network_only("per-op latencies")

    def _raw_op_ms(self, ops: Sequence[OpSpec]) -> np.ndarray:
        self._whole_network_only("per-op latencies")

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"model_ubj": bytes(self.booster_.save_raw(raw_format="ubj")), "feature_names": list(self._names()),
                "target": "log_ms", "train_rmse_log": float(self.train_rmse_log_),
                "holdout": dict(self.holdout_) if self.holdout_ else None}

    def _load_state(self, state: dict[str, Any]) -> None:
        if list(state.get("feature_names", [])) != list(self._names()) or state.get("target") != "log_ms":
            raise LatbenchError("this xgb-arch predictor was trained on other architecture features than this "
                                "latbench computes; refit it with `latbench fit-predictor --kind xgb-arch`")
        self.booster_ = load_booster(state.get("model_ubj"), "xgb-arch")
        self.train_rmse_log_ = float(state.get("train_rmse_log", float("nan")))
        holdout = state.get("holdout")
        if holdout is not None and (not isinstance(holdout, dict) or
                                    not all(isinstance(v, (int, float)) for v in holdout.values())):
            raise LatbenchError("xgb-arch state has malformed held-out metrics; refit the predictor")
        self.holdout_ = {k: float(v) for k, v in holdout.items()} if holdout else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "trained_on": "networks", "target": "log latency",
                "holdout": dict(self.holdout_) if self.holdout_ else None}
