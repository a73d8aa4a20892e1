"""Adapt a proxy device's latency predictions to a target device from a few target samples.

The idea ("One Proxy Device Is Enough", SIGMETRICS 2022): architecture latency rankings carry
over between devices, so a proxy's predictions need only a cheap correction. :class:`ProxyAdapter`
learns, from k measured target architectures,

1. a monotone map of the proxy's predictions, in log space: ``linear`` (a power law
   ``t = e^b · p^a``, strictly monotone, so it keeps the proxy's ranking and fixes the scale) or
   ``isotonic`` (a fitted non-decreasing step curve, extrapolated linearly, ties broken by the
   proxy), and
2. optionally an xgboost model of the remaining log-residual on architecture features (which is
   what can change the ranking).

:func:`adaptation_curve` compares, on the target entries not used for fitting, the raw proxy,
the mapped proxy, mapped proxy + residual, and xgboost trained from scratch on the same k samples.

Features: NAS-Bench-201 cells (``arch_str``) give op counts per type, counts of ops on live paths
and per-edge one-hot (:func:`latbench.nasbench201.nb201_features`); our ProxylessNAS :class:`~latbench.space.Arch` give
summed op features plus per-layer kernel/expand (:func:`latbench.features.arch_features`).

Files: :func:`save_adapter` writes plain data (dicts, lists, floats, str, the xgboost model as raw
UBJSON bytes) and :func:`load_adapter` reads it through :mod:`predictors.io`, whose unpickler
refuses every class, so loading a file cannot execute code.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from latbench.errors import AdaptError
from latbench.features import arch_features
from latbench.metrics import accuracy_within, spearman
from latbench.nasbench201 import detect_feature_kind, nb201_features
from latbench.space import Arch
from predictors.io import FileKind, load_predictor, read_plain, write_plain

log = logging.getLogger(__name__)

FORMAT = "latbench.adapted-proxy"
FORMAT_VERSION = 1
MAPPINGS = ("linear", "isotonic")
RESIDUALS = ("xgboost", "none", "auto")
DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)

#: Default xgboost settings for k of 5..50 samples: shallow trees, strong shrinkage.
XGB_PARAMS: dict[str, Any] = {
    "n_estimators": 150, "max_depth": 2, "learning_rate": 0.08, "min_child_weight": 1.0,
    "subsample": 1.0, "reg_lambda": 1.0, "n_jobs": 1, "tree_method": "hist",
}


ADAPTER_FILE = FileKind(
    "adapter file", AdaptError,
    refused="refusing to load {name}: adapter files hold plain data only ({path})",
    corrupt="{path} is not an adapter file ({detail})")


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def features_for(ids: Sequence[str], kind: str) -> np.ndarray:
    """Feature matrix of entries: ``nb201`` (ids are cell strings) or ``arch`` (ids are arch JSON)."""
    if kind == "nb201":
        return np.vstack([nb201_features(s) for s in ids])
    if kind == "arch":
        return np.vstack([arch_features(Arch.from_dict(json.loads(s))) for s in ids])
    raise AdaptError(f"unknown feature kind {kind!r}; use 'nb201' or 'arch'")


# --------------------------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------------------------
def _xgb(params: dict[str, Any], seed: int):
    from xgboost import XGBRegressor  # deferred: xgboost takes ~1 s to import, only fitting needs it

    return XGBRegressor(random_state=seed, **params)


class ProxyAdapter:
    """Map a proxy device's latency (predicted or measured) to a target device.

    Parameters
    ----------
    mapping : ``"linear"`` (power law in log space) or ``"isotonic"``.
    residual : ``"xgboost"`` (log-residual model on features), ``"none"``, or ``"auto"``: use the
        residual only when k-fold cross-validation on the k samples says it lowers the log error
        (a strong proxy with few samples is often better left alone).
    xgb_params : overrides of :data:`XGB_PARAMS`.
    seed : xgboost seed.
    """

    def __init__(self, mapping: str = "linear", residual: str = "xgboost",
                 xgb_params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.mapping = mapping
        self.residual = residual
        self.xgb_params = xgb_params
        self.seed = seed

    def _check(self) -> None:
        if self.mapping not in MAPPINGS:
            raise AdaptError(f"unknown mapping {self.mapping!r}; use one of {', '.join(MAPPINGS)}")
        if self.residual not in RESIDUALS:
            raise AdaptError(f"unknown residual model {self.residual!r}; use one of {', '.join(RESIDUALS)}")

    def fit(self, proxy_ms: np.ndarray, target_ms: np.ndarray, features: np.ndarray | None = None) -> ProxyAdapter:
        """Fit from k pairs (proxy latency, measured target latency) and the entries' features."""
        self._check()
        p = np.asarray(proxy_ms, dtype=float)
        t = np.asarray(target_ms, dtype=float)
        if p.shape != t.shape or p.ndim != 1:
            raise AdaptError(f"proxy and target latencies must be 1-D of equal length, got {p.shape} and {t.shape}")
        if len(p) < 2:
            raise AdaptError(f"adaptation needs at least 2 target samples, got {len(p)}")
        if not (np.all(np.isfinite(p) & (p > 0)) and np.all(np.isfinite(t) & (t > 0))):
            raise AdaptError("adaptation samples must be finite positive latencies (drop -1/NaN entries first)")
        x, y = np.log(p), np.log(t)
        # Linear map in log space; a non-positive slope (noise at tiny k) falls back to a pure scale.
        if np.ptp(x) > 0:
            a, b = np.polyfit(x, y, 1)
        else:
            a, b = 1.0, float(np.mean(y - x))
        if not a > 0:
            a, b = 1.0, float(np.mean(y - x))
        self.slope_, self.intercept_ = float(a), float(b)
        self.iso_x_: list[float] = []
        self.iso_y_: list[float] = []
        if self.mapping == "isotonic":
            from sklearn.isotonic import IsotonicRegression  # deferred: only the isotonic map needs it

            iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
            self.iso_x_ = [float(v) for v in iso.X_thresholds_]
            self.iso_y_ = [float(v) for v in iso.y_thresholds_]
        self.n_samples_ = int(len(p))
        self.booster_raw_: bytes | None = None
        self.n_features_ = 0 if features is None else int(np.asarray(features).shape[1])
        self._model = None
        if self.residual != "none" and features is None:
            raise AdaptError(f"residual={self.residual!r} needs features of the samples; use residual='none'")
        self.use_residual_ = self.residual == "xgboost" or (
            self.residual == "auto" and self._cv_prefers_residual(p, t, np.asarray(features, dtype=float)))
        if self.use_residual_:
            Z = self._design(x, features)
            r = y - self._map(x)
            model = _xgb({**XGB_PARAMS, **(self.xgb_params or {})}, self.seed).fit(Z, r)
            self._model = model
            self.booster_raw_ = bytes(model.get_booster().save_raw(raw_format="ubj"))
        return self

    def _cv_prefers_residual(self, p: np.ndarray, t: np.ndarray, f: np.ndarray, folds: int = 5) -> bool:
        """k-fold CV on the samples: does map + residual beat the map alone in log-space MSE?"""
        k = len(p)
        if k < 4:
            return False
        order = np.random.default_rng(self.seed).permutation(k)
        err = {"none": 0.0, "xgboost": 0.0}
        for test in np.array_split(order, min(folds, k)):
            train = np.setdiff1d(order, test)
            for res in err:
                sub = ProxyAdapter(self.mapping, res, self.xgb_params, self.seed).fit(p[train], t[train], f[train])
                pred = sub.predict(p[test], f[test])
                err[res] += float(np.sum((np.log(pred) - np.log(t[test])) ** 2))
        return err["xgboost"] < err["none"]

    @staticmethod
    def _design(logp: np.ndarray, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=float)
        return np.column_stack([logp, f])

    def _map(self, x: np.ndarray) -> np.ndarray:
        lin = self.slope_ * x + self.intercept_
        if self.mapping != "isotonic" or not self.iso_x_:
            return lin
        xs, ys = np.asarray(self.iso_x_), np.asarray(self.iso_y_)
        out = np.interp(x, xs, ys)
        # Outside the samples' range continue with the linear slope instead of clipping flat.
        out = np.where(x < xs[0], ys[0] + self.slope_ * (x - xs[0]), out)
        out = np.where(x > xs[-1], ys[-1] + self.slope_ * (x - xs[-1]), out)
        # Break the step curve's ties by the proxy's own order (tiny, keeps the map monotone).
        return out + 1e-6 * self.slope_ * (x - xs.mean())

    def _check_fitted(self) -> None:
        if not hasattr(self, "slope_"):
            raise AdaptError("this adapter is not fitted; call fit() or load a saved one")

    def predict_mapped(self, proxy_ms: np.ndarray) -> np.ndarray:
        """Target latency (ms) from the monotone map alone (keeps the proxy's ranking)."""
        self._check_fitted()
        p = np.asarray(proxy_ms, dtype=float)
        return np.exp(self._map(np.log(np.maximum(p, 1e-12))))

    def predict(self, proxy_ms: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Target latency (ms): monotone map plus, if fitted, the xgboost residual."""
        self._check_fitted()
        p = np.asarray(proxy_ms, dtype=float)
        x = np.log(np.maximum(p, 1e-12))
        y = self._map(x)
        if self.use_residual_:
            if features is None:
                raise AdaptError("this adapter has a residual model; pass the entries' features to predict()")
            f = np.asarray(features, dtype=float)
            if f.ndim != 2 or f.shape[1] != self.n_features_:
                raise AdaptError(f"expected {self.n_features_} features per entry, got shape {f.shape}")
            y = y + self._booster().predict(self._design(x, f))
        return np.exp(y)

    def _booster(self):
        if self._model is None:
            model = _xgb({**XGB_PARAMS, **(self.xgb_params or {})}, self.seed)
            model.load_model(bytearray(self.booster_raw_ or b""))
            self._model = model
        return self._model

    # -- plain-data state ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The fitted adapter as plain data (for :func:`save_adapter`)."""
        self._check_fitted()
        return {
            "params": {"mapping": self.mapping, "residual": self.residual,
                       "xgb_params": dict(self.xgb_params or {}), "seed": int(self.seed)},
            "slope": self.slope_, "intercept": self.intercept_, "iso_x": list(self.iso_x_),
            "iso_y": list(self.iso_y_), "n_samples": self.n_samples_, "n_features": self.n_features_,
            "use_residual": bool(self.use_residual_),
            "booster_ubj": self.booster_raw_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProxyAdapter:
        """Rebuild a fitted adapter from :meth:`get_state` data."""
        try:
            self = cls(**state["params"])
            self._check()
            self.slope_, self.intercept_ = float(state["slope"]), float(state["intercept"])
            self.iso_x_, self.iso_y_ = list(state["iso_x"]), list(state["iso_y"])
            self.n_samples_, self.n_features_ = int(state["n_samples"]), int(state["n_features"])
            self.use_residual_ = bool(state["use_residual"])
            self.booster_raw_ = state["booster_ubj"]
        except (KeyError, TypeError, ValueError) as e:
            raise AdaptError(f"adapter state is incomplete or malformed ({e.__class__.__name__}: {e})") from None
        self._model = None
        return self


# --------------------------------------------------------------------------------------------
# safe files
# --------------------------------------------------------------------------------------------
def save_adapter(path: str | Path, adapter: ProxyAdapter, meta: dict[str, Any] | None = None) -> Path:
    """Write a fitted adapter (and ``meta``: proxy, target, feature kind, samples …) as plain data."""
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "state": adapter.get_state(), "meta": meta or {}}
    return write_plain(path, doc, ADAPTER_FILE)


def load_adapter(path: str | Path) -> tuple[ProxyAdapter, dict[str, Any]]:
    """Read an adapter file written by :func:`save_adapter`; returns ``(adapter, meta)``."""
    doc = read_plain(path, ADAPTER_FILE)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else "?"
        raise AdaptError(f"{path} is not a latbench adapter file (format {fmt})")
    if doc.get("version") != FORMAT_VERSION:
        raise AdaptError(f"{path}: adapter file version {doc.get('version')} is not supported "
                         f"(expected {FORMAT_VERSION})")
    return ProxyAdapter.from_state(doc["state"]), doc.get("meta", {})


class AdaptedArchPredictor:
    """A proxy predictor of our space plus a fitted adapter: predicts the target device's latency
    of architectures (``Arch``, dict or JSON), like the predictors it wraps."""

    def __init__(self, adapter: ProxyAdapter, proxy: Any, target: str | None = None) -> None:
        self.adapter = adapter
        self.proxy = proxy
        self.target = target

    def predict(self, archs: Any) -> float | np.ndarray:
        """Target latency (ms) of one architecture or an array for a list."""
        single = isinstance(archs, (Arch, dict, str))
        items = [archs] if single else list(archs)
        objs = [a if isinstance(a, Arch) else Arch.from_dict(json.loads(a) if isinstance(a, str) else a)
                for a in items]
        proxy_ms = np.asarray(self.proxy.predict(objs), dtype=float)
        feats = np.vstack([arch_features(a) for a in objs])
        out = self.adapter.predict(proxy_ms, feats)
        return float(out[0]) if single else out


def load_adapted_predictor(path: str | Path, proxy_path: str | Path | None = None) -> AdaptedArchPredictor:
    """Load an adapter fitted with ``latbench adapt --proxy PREDICTOR`` together with its proxy
    predictor (from ``proxy_path``, else the path recorded in the file)."""
    adapter, meta = load_adapter(path)
    if meta.get("proxy_kind") != "predictor":
        raise AdaptError(f"{path} adapts the device column {meta.get('proxy')!r} of a table, not a predictor; "
                         "use load_adapter() and pass the proxy latencies yourself")
    return AdaptedArchPredictor(adapter, load_predictor(proxy_path or meta["proxy"]), meta.get("target"))


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
@dataclass
class AdaptData:
    """Aligned entries usable for adaptation: ids, proxy latency, target latency, features."""

    ids: np.ndarray
    proxy: np.ndarray
    target: np.ndarray
    features: np.ndarray | None
    proxy_name: str = "proxy"
    target_name: str = "target"

    @classmethod
    def build(cls, ids: Sequence[str], proxy: Sequence[float], target: Sequence[float],
              features: np.ndarray | None, proxy_name: str = "proxy", target_name: str = "target") -> AdaptData:
        """Keep only entries with a finite positive latency on both sides."""
        p, t = np.asarray(proxy, dtype=float), np.asarray(target, dtype=float)
        ok = np.isfinite(p) & (p > 0) & np.isfinite(t) & (t > 0)
        f = None if features is None else np.asarray(features, dtype=float)[ok]
        return cls(np.asarray(ids)[ok], p[ok], t[ok], f, proxy_name, target_name)

    def __len__(self) -> int:
        return len(self.ids)


def check_k(k: int, data: AdaptData) -> None:
    """One clear error when k is not usable with ``data``."""
    if k < 2:
        raise AdaptError(f"--k must be at least 2 (a map needs two points), got {k}")
    if k > len(data):
        raise AdaptError(f"k={k} is larger than the {len(data)} entries where both {data.proxy_name!r} and "
                         f"{data.target_name!r} have a valid latency; use --k {len(data)} or fewer")


def evaluate_once(data: AdaptData, k: int, rng: np.random.Generator, mapping: str = "linear",
                  residual: str = "xgboost", seed: int = 0) -> list[dict[str, Any]]:
    """Draw k samples, fit, and score every method on the remaining entries."""
    n = len(data)
    idx = rng.permutation(n)
    tr, te = idx[:k], idx[k:]
    t_te = data.target[te]
    preds: dict[str, np.ndarray] = {"proxy (raw)": data.proxy[te]}
    mapped = ProxyAdapter(mapping, "none", seed=seed).fit(data.proxy[tr], data.target[tr])
    preds[f"proxy + {mapping} map"] = mapped.predict_mapped(data.proxy[te])
    if data.features is not None and residual != "none":
        ad = ProxyAdapter(mapping, "xgboost", seed=seed).fit(data.proxy[tr], data.target[tr], data.features[tr])
        preds[f"proxy + {mapping} map + xgb residual"] = ad.predict(data.proxy[te], data.features[te])
        if residual == "auto":
            auto = ProxyAdapter(mapping, "auto", seed=seed).fit(data.proxy[tr], data.target[tr], data.features[tr])
            preds[f"proxy + {mapping} map + auto residual (CV)"] = auto.predict(data.proxy[te], data.features[te])
        scratch = _xgb(XGB_PARAMS, seed).fit(data.features[tr], np.log(data.target[tr]))
        preds["xgboost from scratch"] = np.exp(scratch.predict(data.features[te]))
    rows = []
    for method, p in preds.items():
        rows.append({"k": k, "method": method, "spearman": spearman(p, t_te),
                     "acc10": accuracy_within(p, t_te, 0.10),
                     "mape": float(np.mean(np.abs(p - t_te) / t_te)), "n_eval": int(len(te))})
    return rows


def adaptation_curve(data: AdaptData, ks: Iterable[int] = DEFAULT_KS, repeats: int = 5, seed: int = 0,
                     mapping: str = "linear", residual: str = "xgboost") -> pd.DataFrame:
    """Scores of raw proxy / mapped / mapped + residual / from scratch per k, over ``repeats``
    random draws of the k samples; one row per (k, repeat, method). k values that leave fewer
    than 3 entries to evaluate on are skipped (logged)."""
    rows: list[dict[str, Any]] = []
    for k in ks:
        check_k(k, data)
        if len(data) - k < 3:
            log.warning("k=%d leaves %d entries to evaluate on; skipped", k, len(data) - k)
            continue
        for r in range(repeats):
            rng = np.random.default_rng([seed, k, r])
            for row in evaluate_once(data, k, rng, mapping, residual, seed):
                rows.append({**row, "repeat": r})
    return pd.DataFrame(rows)


def summarize(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over repeats per (k, method)."""
    if curve.empty:
        return curve
    g = curve.groupby(["k", "method"], sort=False)
    out = g[["spearman", "acc10", "mape"]].mean()
    out = out.join(g[["spearman", "acc10"]].std(ddof=0).add_suffix("_std"))
    out["repeats"] = g.size()
    out["n_eval"] = g["n_eval"].first()
    return out.reset_index()


def format_summary(summary: pd.DataFrame) -> str:
    """The curve as a text table: one row per k, Spearman and ±10 % accuracy per method."""
    if summary.empty:
        return "(no k left enough entries to evaluate)"
    methods = list(dict.fromkeys(summary["method"]))
    w = max(len(m) for m in methods) + 2
    lines = [f"{'method':<{w}}" + "".join(f"{'k=' + str(k):>22}" for k in sorted(summary["k"].unique()))]
    for m in methods:
        cells = []
        for k in sorted(summary["k"].unique()):
            r = summary[(summary["k"] == k) & (summary["method"] == m)]
            if r.empty:
                cells.append(f"{'-':>22}")
            else:
                r = r.iloc[0]
                cells.append(f"{'rho ' + format(r.spearman, '.3f') + ' acc ' + format(r.acc10, '4.0%'):>22}")
        lines.append(f"{m:<{w}}" + "".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# data from tables
# --------------------------------------------------------------------------------------------
def data_from_wide(matrix: pd.DataFrame, proxy: str, target: str,
                   feature_kind: str | None = "auto") -> AdaptData:
    """Adaptation data from a latency matrix (rows = ids, columns = devices): the proxy column is
    the "proxy predictor" (a lookup). Features come from the ids when they are NB-201 cells."""
    for name, role in ((proxy, "proxy"), (target, "target")):
        if name not in matrix.columns:
            cols = ", ".join(map(str, matrix.columns))
            raise AdaptError(f"{role} device column {name!r} missing; columns are: {cols}")
    if proxy == target:
        raise AdaptError(f"proxy and target are the same column {proxy!r}; pick two devices")
    ids = np.asarray(matrix.index.astype(str))
    kind = detect_feature_kind(ids) if feature_kind == "auto" else feature_kind
    data = AdaptData.build(ids, matrix[proxy].to_numpy(), matrix[target].to_numpy(), None, proxy, target)
    if kind:
        data.features = features_for(list(data.ids), kind)
    else:
        log.info("ids are not NAS-Bench-201 cells: no features, so no residual model or from-scratch baseline")
    return data


# --------------------------------------------------------------------------------------------
# automatic proxy selection: many source devices, k target samples
# --------------------------------------------------------------------------------------------
SELECTIONS = ("soft", "best", "top3")
#: Default temperature of the ``soft`` selection (weights ``exp(-(mse/mse_min - 1)/T)``).
TEMPERATURE = 0.5


@dataclass
class SourceMix:
    """A proxy made of several source devices, chosen from k target samples alone.

    The k samples are a HELP-like *hardware embedding* of the target: its latencies on k
    architectures. Every source device gets a linear map of log-latency onto the target's (fitted on
    the k samples) and a score, the leave-one-out squared error of that map (closed form from the
    hat matrix): how well the source's ranking *and* spacing predict the target at entries it did
    not see. ``best`` keeps the lowest-error source, ``top3`` averages the three best, ``soft``
    weights every source by ``exp(-(mse/mse_min - 1)/T)``. The mix predicts the target's
    log-latency as the weighted mean of the mapped sources (weights renormalised over the sources
    an entry has), so it is itself a proxy that :class:`ProxyAdapter` maps and corrects.
    """

    sources: list[str]
    weights: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    loo_mse: np.ndarray
    selection: str = "soft"
    temperature: float = TEMPERATURE

    def predict(self, source_ms: np.ndarray) -> np.ndarray:
        """Target latency (ms) of entries from their source latencies (n × len(sources), columns in
        :attr:`sources` order); entries with no valid latency on any weighted source are NaN."""
        s = np.asarray(source_ms, dtype=float)
        if s.ndim != 2 or s.shape[1] != len(self.sources):
            raise AdaptError(f"expected latencies of {len(self.sources)} sources per entry, got shape {s.shape}")
        ok = np.isfinite(s) & (s > 0)
        logs = np.log(np.where(ok, s, 1.0))
        mapped = logs * self.slopes + self.intercepts
        w = np.where(ok, self.weights, 0.0)
        tot = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = (w * mapped).sum(axis=1) / tot
        return np.where(tot > 0, np.exp(y), np.nan)

    def ranked(self, top: int | None = None) -> list[tuple[str, float, float]]:
        """(source, weight, leave-one-out MSE) by decreasing weight."""
        order = np.argsort(-self.weights, kind="stable")
        rows = [(self.sources[i], float(self.weights[i]), float(self.loo_mse[i])) for i in order
                if self.weights[i] > 0]
        return rows[:top] if top else rows

    def describe(self, top: int = 3) -> str:
        """``a 0.62, b 0.30, c 0.05 (+4 more)``."""
        rows = self.ranked()
        text = ", ".join(f"{s} {w:.2f}" for s, w, _ in rows[:top])
        return text + (f" (+{len(rows) - top} more)" if len(rows) > top else "")

    def get_state(self) -> dict[str, Any]:
        """Plain data (for the adapter file's meta)."""
        return {"sources": list(self.sources), "weights": [float(v) for v in self.weights],
                "slopes": [float(v) for v in self.slopes], "intercepts": [float(v) for v in self.intercepts],
                "loo_mse": [float(v) if np.isfinite(v) else None for v in self.loo_mse],
                "selection": self.selection, "temperature": float(self.temperature)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SourceMix:
        try:
            return cls(list(state["sources"]), np.asarray(state["weights"], dtype=float),
                       np.asarray(state["slopes"], dtype=float), np.asarray(state["intercepts"], dtype=float),
                       np.asarray([np.inf if v is None else v for v in state["loo_mse"]], dtype=float),
                       str(state["selection"]), float(state["temperature"]))
        except (KeyError, TypeError, ValueError) as e:
            raise AdaptError(f"source mix state is incomplete or malformed ({e.__class__.__name__}: {e})") from None


def select_sources(source_ms: np.ndarray, target_ms: np.ndarray, names: Sequence[str],
                   selection: str = "soft", temperature: float = TEMPERATURE) -> SourceMix:
    """Choose and weight source devices from k target samples (see :class:`SourceMix`).

    ``source_ms`` is k × S (the sources' latencies of the k sampled entries), ``target_ms`` the k
    measured target latencies. Only the k samples are used: no other target information. A source
    with a missing/invalid latency at any sample, no spread, or a non-positive slope (it ranks the
    samples backwards) is not eligible.
    """
    if selection not in SELECTIONS:
        raise AdaptError(f"unknown proxy selection {selection!r}; use one of {', '.join(SELECTIONS)}")
    if not temperature > 0:
        raise AdaptError(f"the selection temperature must be > 0, got {temperature}")
    s = np.asarray(source_ms, dtype=float)
    t = np.asarray(target_ms, dtype=float)
    if s.ndim != 2 or t.ndim != 1 or s.shape[0] != t.shape[0] or s.shape[1] != len(names):
        raise AdaptError(f"need k × {len(names)} source latencies and k target latencies, got {s.shape} and {t.shape}")
    k = len(t)
    if k < 3:
        raise AdaptError(f"choosing a proxy needs at least 3 target samples (a leave-one-out fit), got {k}")
    if not np.all(np.isfinite(t) & (t > 0)):
        raise AdaptError("target samples must be finite positive latencies (drop -1/NaN entries first)")
    ok = np.all(np.isfinite(s) & (s > 0), axis=0)
    x = np.log(np.where(np.isfinite(s) & (s > 0), s, 1.0))
    y = np.log(t)
    xm, ym = x.mean(axis=0), y.mean()
    dx = x - xm
    sxx = (dx * dx).sum(axis=0)
    good = ok & (sxx > 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(good, (dx * (y - ym)[:, None]).sum(axis=0) / np.where(good, sxx, 1.0), 0.0)
        good &= a > 0
        b = ym - a * xm
        resid = y[:, None] - (a * x + b)
        h = 1.0 / k + dx * dx / np.where(good, sxx, 1.0)
        loo = np.where(good, np.mean((resid / np.maximum(1.0 - h, 1e-9)) ** 2, axis=0), np.inf)
    if not good.any():
        raise AdaptError(f"no source device ranks the {k} target samples usefully (all missing, constant or "
                         "anti-correlated); use a fixed proxy")
    w = np.zeros(len(names))
    order = np.argsort(loo, kind="stable")
    if selection == "best":
        w[order[0]] = 1.0
    elif selection == "top3":
        top = [i for i in order[:3] if good[i]]
        w[top] = 1.0 / len(top)
    else:
        floor = max(float(loo[order[0]]), 1e-12)
        w = np.where(good, np.exp(-(loo / floor - 1.0) / temperature), 0.0)
        w[w < 1e-4 * w.max()] = 0.0
        w /= w.sum()
    return SourceMix(list(map(str, names)), w, np.where(good, a, 0.0), np.where(good, b, 0.0), loo,
                     selection, float(temperature))


def selection_curve(matrix: pd.DataFrame, target: str, ks: Iterable[int] = DEFAULT_KS, repeats: int = 5,
                    seed: int = 0, selection: str = "soft", temperature: float = TEMPERATURE,
                    sources: Sequence[str] | None = None, fixed_proxy: str | None = None,
                    residual: str = "none", mapping: str = "linear",
                    features: np.ndarray | None = None) -> pd.DataFrame:
    """Held-out scores of automatic proxy selection for one target of a latency matrix.

    Per k and repeat, k entries with a valid target latency are drawn; the sources are chosen and
    weighted from those k alone (:func:`select_sources`), the mix is mapped (and, with ``residual``,
    corrected) by :class:`ProxyAdapter` fitted on the same k, and every other valid target entry is
    scored. With ``fixed_proxy`` the same draws also score that one proxy + map, side by side.
    One row per (k, repeat, method), plus the chosen sources.
    """
    if target not in matrix.columns:
        raise AdaptError(f"target device column {target!r} missing; columns are: {', '.join(map(str, matrix.columns))}")
    names = [c for c in (sources if sources is not None else matrix.columns) if c != target]
    missing = [c for c in names if c not in matrix.columns]
    if missing:
        raise AdaptError(f"source device column {missing[0]!r} missing; columns are: "
                         f"{', '.join(map(str, matrix.columns))}")
    if not names:
        raise AdaptError(f"no source devices besides the target {target!r}")
    if fixed_proxy is not None and fixed_proxy not in matrix.columns:
        raise AdaptError(f"fixed proxy column {fixed_proxy!r} missing")
    t_all = matrix[target].to_numpy(dtype=float)
    valid = np.flatnonzero(np.isfinite(t_all) & (t_all > 0))
    S = matrix[names].to_numpy(dtype=float)
    P = matrix[fixed_proxy].to_numpy(dtype=float) if fixed_proxy and fixed_proxy != target else None
    feats = None if features is None else np.asarray(features, dtype=float)
    rows: list[dict[str, Any]] = []
    for k in ks:
        if k < 3:
            raise AdaptError(f"k must be at least 3 for proxy selection, got {k}")
        if len(valid) - k < 3:
            log.warning("k=%d leaves %d entries to evaluate on; skipped", k, len(valid) - k)
            continue
        for r in range(repeats):
            rng = np.random.default_rng([seed, k, r])
            idx = valid[rng.permutation(len(valid))]
            tr, te = idx[:k], idx[k:]
            mix = select_sources(S[tr], t_all[tr], names, selection, temperature)
            p_tr, p_te = mix.predict(S[tr]), mix.predict(S[te])
            keep = np.isfinite(p_te)
            te, p_te = te[keep], p_te[keep]
            t_te = t_all[te]
            preds: dict[str, np.ndarray] = {}
            base = ProxyAdapter(mapping, "none", seed=seed).fit(p_tr, t_all[tr])
            preds[f"auto ({selection}) + {mapping} map"] = base.predict_mapped(p_te)
            if residual != "none" and feats is not None:
                ad = ProxyAdapter(mapping, residual, seed=seed).fit(p_tr, t_all[tr], feats[tr])
                preds[f"auto ({selection}) + {mapping} map + {residual} residual"] = ad.predict(p_te, feats[te])
            if P is not None:
                ptr, pte = P[tr], P[te]
                ok = np.isfinite(pte) & (pte > 0)
                if np.all(np.isfinite(ptr) & (ptr > 0)) and ok.sum() >= 3:
                    fx = ProxyAdapter(mapping, "none", seed=seed).fit(ptr, t_all[tr])
                    pred = np.full(len(te), np.nan)
                    pred[ok] = fx.predict_mapped(pte[ok])
                    preds[f"fixed {fixed_proxy} + {mapping} map"] = pred
            chosen = mix.describe()
            for method, pred in preds.items():
                m = np.isfinite(pred)
                rows.append({"target": target, "k": k, "repeat": r, "method": method,
                             "spearman": spearman(pred[m], t_te[m]), "acc10": accuracy_within(pred[m], t_te[m], 0.10),
                             "mape": float(np.mean(np.abs(pred[m] - t_te[m]) / t_te[m])), "n_eval": int(m.sum()),
                             "chosen": chosen})
    return pd.DataFrame(rows)
