"""Shared machinery of latency predictors: fitting data, deployment space, per-layer matrix, calibration.

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

import inspect
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from latbench.errors import LatbenchError
from latbench.ops import OpSpec
from latbench.space import (FIRST_BLOCK_CANDIDATES, MBCONV_CANDIDATES, ZERO, Arch, Space,
                            make_divisible, STEM_CHANNELS)

log = logging.getLogger(__name__)

#: Every candidate name of the space gets a fixed column in the per-space matrix.
CANDIDATE_NAMES: tuple[str, ...] = FIRST_BLOCK_CANDIDATES + MBCONV_CANDIDATES + (ZERO,)
_CAND_COL: dict[str, int] = {name: i for i, name in enumerate(CANDIDATE_NAMES)}

#: Width multipliers tried when inferring the deployment space from a table's keys.
_WIDTHS = (1.0, 0.35, 0.5, 0.75, 0.9, 1.1, 1.25, 1.3, 1.4, 1.5, 2.0)

_REGISTRY: dict[str, type[BasePredictor]] = {}


class NotFittedError(LatbenchError, ValueError):
    """A predictor used before ``fit``."""


class MissingOpError(LatbenchError, KeyError):
    """A LUT has no latency for an op an architecture needs."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def register_predictor(cls: type[BasePredictor]) -> type[BasePredictor]:
    """Class decorator: make a predictor kind loadable from files by its ``kind`` name."""
    _REGISTRY[cls.kind] = cls
    return cls


def predictor_class(kind: str) -> type[BasePredictor]:
    """The predictor class registered under ``kind`` (``lut``, ``gbdt``)."""
    if kind not in _REGISTRY:
        raise LatbenchError(f"unknown predictor kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


# -- training data -------------------------------------------------------------------------------
@dataclass
class OpData:
    """Validated training data: op specs, latencies (ms) and where they came from."""

    ops: list[OpSpec]
    ms: np.ndarray
    device: str | None = None
    backend: str | None = None
    target: str | None = None
    source: str = "data"


def _frame_of(X: Any) -> tuple[pd.DataFrame, str]:
    from latbench.tables import read_table

    if isinstance(X, pd.DataFrame):
        return X, "DataFrame"
    if isinstance(X, (str, Path)):
        return read_table(X), str(X)
    if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, Path, pd.DataFrame)) for p in X):
        frames, names = zip(*(_frame_of(p) for p in X))
        return pd.concat(frames, ignore_index=True), ", ".join(names)
    raise LatbenchError(f"cannot fit on {type(X).__name__}: give op table paths, a DataFrame, "
                        "or a list of ops with latencies")


def _single(df: pd.DataFrame, col: str, source: str) -> str | None:
    if col not in df:
        return None
    vals = sorted({str(v) for v in df[col].dropna().unique()})
    if len(vals) > 1:
        what = {"device": "devices", "backend": "backends", "target": "targets"}[col]
        raise LatbenchError(f"{source}: tables mix {what} {', '.join(vals[:4])}; fit one predictor per "
                            f"{col} (pass only that {col}'s tables)")
    return vals[0] if vals else None


def op_data(X: Any, y: Any = None, stat: str = "median_ms") -> OpData:
    """Turn tables / a DataFrame / ``(ops, ms)`` into validated :class:`OpData`.

    Error rows are skipped (logged); an ``ok`` row with a NaN or non-positive latency, a table that
    mixes devices or backends, an arch table, or an unparsable key is a one-line error.
    """
    if y is not None:
        ops = [o if isinstance(o, OpSpec) else OpSpec.parse(o) for o in X]
        ms = np.asarray(y, dtype=float)
        if ms.shape != (len(ops),):
            raise LatbenchError(f"got {len(ops)} ops but {ms.size} latencies")
        for op, v in zip(ops, ms):
            check_latency(v, op.key, "latencies")
        return OpData(ops, ms)
    df, source = _frame_of(X)
    if df.empty:
        raise LatbenchError(f"{source}: the table is empty (measure some ops first)")
    if "arch" in df.columns or ("kind" in df.columns and (df["kind"] == "arch").all()):
        raise LatbenchError(f"{source}: this is an architecture table; fit predictors on op tables "
                            "(ops-<backend>.parquet)")
    for col in ("key", stat):
        if col not in df.columns:
            raise LatbenchError(f"{source}: not a latbench op table (no {col!r} column)")
    device, backend = _single(df, "device", source), _single(df, "backend", source)
    target = _single(df, "target", source)
    ok = df["status"] == "ok" if "status" in df else pd.Series(True, index=df.index)
    n_err = int((~ok).sum())
    if n_err:
        log.warning("%s: skipping %d rows whose status is not ok", source, n_err)
    df = df[ok]
    if df.empty:
        raise LatbenchError(f"{source}: no successfully measured rows (all {n_err} have status error)")
    ops, ms = [], []
    for key, v in zip(df["key"], df[stat]):
        try:
            op = OpSpec.parse(key)
        except LatbenchError as e:
            raise LatbenchError(f"{source}: {e}") from None
        check_latency(v, key, source, stat)
        ops.append(op)
        ms.append(float(v))
    # Several tables may hold the same op: keep the median of its measurements.
    by_key: dict[str, list[float]] = {}
    first: dict[str, OpSpec] = {}
    for op, v in zip(ops, ms):
        by_key.setdefault(op.key, []).append(v)
        first.setdefault(op.key, op)
    keys = list(by_key)
    return OpData([first[k] for k in keys], np.array([float(np.median(by_key[k])) for k in keys]),
                  device, backend, target, source)


def check_latency(v: Any, key: str, source: str, what: str = "latency") -> float:
    """A finite positive float, or a one-line error naming the key."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LatbenchError(f"{source}: {what} of {key} is {v!r}, not a number") from None
    if not math.isfinite(f) or f <= 0:
        raise LatbenchError(f"{source}: {what} of {key} is {f!r}; latencies must be finite and > 0 ms "
                            "(re-measure that op or drop the row)")
    return f


def infer_space(keys: Iterable[str], resolution: int | None = None, width_mult: float | None = None,
                n_classes: int | None = None) -> Space:
    """The space whose ops a set of keys covers best (explicit arguments win).

    Candidates come from the stem (``Conv``) keys' resolutions and the ``Logits`` keys' class counts;
    ties prefer width 1.0 and the largest resolution. Without stem keys, 224/1.0/1000 is assumed.
    """
    keys = set(keys)
    ops = [OpSpec.parse(k) for k in keys]
    stems = [o for o in ops if o.kind == "Conv"]
    res_c = [resolution] if resolution else sorted({o.in_h for o in stems}, reverse=True) or [224]
    cls_c = [n_classes] if n_classes else sorted({o.out_ch for o in ops if o.kind == "Logits"}) or [1000]
    if width_mult:
        w_c: Sequence[float] = [float(width_mult)]
    else:
        stem_ch = {o.out_ch for o in stems}
        w_c = [w for w in _WIDTHS if not stem_ch or make_divisible(STEM_CHANNELS * w) in stem_ch] or [1.0]
    best, best_cov = None, -1.0
    for r in res_c:
        for w in w_c:
            for c in cls_c:
                try:
                    sp = Space(int(r), float(w), int(c))
                    need = {o.key for o in sp.distinct_ops()}
                except LatbenchError:
                    continue
                cov = len(need & keys) / len(need)
                if cov > best_cov + 1e-12:
                    best, best_cov = sp, cov
    if best is None:
        raise LatbenchError("cannot infer the deployment space from the table; pass resolution/width_mult")
    return best


def space_to_dict(space: Space) -> dict[str, Any]:
    return {"resolution": int(space.resolution), "width_mult": float(space.width_mult),
            "n_classes": int(space.n_classes)}


# -- per-space lookup ----------------------------------------------------------------------------
@dataclass
class _SpaceTable:
    """Raw (uncalibrated) op latencies of one space laid out for vectorised prediction."""

    matrix: np.ndarray          # (n_layers, len(CANDIDATE_NAMES)); NaN = missing or not allowed
    missing: dict[tuple[int, int], str]   # (layer, col) -> op key the predictor lacks
    fixed: float                # stem + mix + logits (NaN if one is missing)
    fixed_missing: str | None


class BasePredictor:
    """Base of latency predictors (scikit-learn style: ``__init__`` stores params, ``fit`` returns self).

    Subclasses implement :meth:`_fit_ops` and :meth:`_raw_op_ms`, and their extra state in
    :meth:`_state` / :meth:`_load_state` (plain data only: see :mod:`predictors.io`).
    """

    kind: ClassVar[str] = ""

    # -- scikit-learn protocol -------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (as scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> BasePredictor:
        """Set constructor parameters; unknown names are an error."""
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise LatbenchError(f"{type(self).__name__} has no parameter {k!r}; valid: {', '.join(sorted(valid))}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "space_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(...) first "
                                 "(or load a fitted one with predictors.load_predictor)")

    def fit(self, X: Any, y: Any = None, **kwargs: Any) -> BasePredictor:
        """Fit on op tables (paths, a DataFrame, a list of them) or on ``(ops, ms)``.

        Keyword ``resolution``/``width_mult``/``n_classes`` override the inferred deployment space.
        """
        data = op_data(X, y, stat=getattr(self, "stat", "median_ms"))
        space_kw = {k: kwargs.pop(k) for k in ("resolution", "width_mult", "n_classes") if k in kwargs}
        if kwargs:
            raise LatbenchError(f"unknown fit arguments: {', '.join(kwargs)}")
        self._reset()
        self._fit_ops(data)
        self.space_ = space_to_dict(infer_space([o.key for o in data.ops], **space_kw))
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
        specs = [o if isinstance(o, OpSpec) else OpSpec.parse(o) for o in ops]
        raw = self._raw_op_ms(specs)
        bad = np.flatnonzero(np.isnan(raw))
        if bad.size:
            raise self._missing(specs[bad[0]].key, None)
        return raw * self.scale_

    def _missing(self, key: str, space: Space | None) -> MissingOpError:
        dep = self.deployment_space()
        where = ""
        if space is not None and space != dep:
            where = (f" (the architecture is at resolution {space.resolution}, width {space.width_mult:g}, "
                     f"{space.n_classes} classes; the table covers resolution {dep.resolution}, width "
                     f"{dep.width_mult:g}, {dep.n_classes} classes)")
        return MissingOpError(f"{type(self).__name__} has no latency for op {key}{where}; measure it, "
                              "or set a fallback predictor (LUTPredictor(fallback=GBDTPredictor()))")

    # -- spaces ----------------------------------------------------------------------------------------
    def deployment_space(self) -> Space:
        """The space the predictor was fitted for (resolution, width multiplier, classes)."""
        self._check_fitted()
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
            import json

            try:
                return Arch.from_dict(json.loads(a))
            except json.JSONDecodeError:
                pass
        raise LatbenchError(f"expected an Arch (or its dict/JSON), got {type(a).__name__}")

    def _predict_raw(self, archs: Sequence[Any]) -> np.ndarray:
        """Uncalibrated Σ op latencies per arch, vectorised over archs of the same space."""
        out = np.empty(len(archs))
        groups: dict[Space, list[int]] = {}
        arch_list = [self._as_arch(a) for a in archs]
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
        single = isinstance(archs, (Arch, dict, str))
        items = [archs] if single else list(archs)
        pred = self._predict_raw(items) * self.scale_ + self.offset_
        return float(pred[0]) if single else pred

    def score(self, archs: Sequence[Any], measured_ms: Sequence[float]) -> float:
        """Coefficient of determination R² of predicted vs measured whole-network latency."""
        y = np.asarray(measured_ms, dtype=float)
        p = np.asarray(self.predict(list(archs)), dtype=float)
        ss_res = float(((y - p) ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")

    # -- calibration ----------------------------------------------------------------------------------
    def fit_calibration(self, archs: Sequence[Any], measured_ms: Sequence[float],
                        mode: str = "auto") -> BasePredictor:
        """Learn ``measured ≈ scale * Σops + offset`` from measured whole networks.

        Both fits are robust to a few outliers (a network timed while the machine was busy):

        * ``"scale"``: offset 0, scale = median of measured / predicted;
        * ``"affine"``: Theil–Sen line (median of pairwise slopes); needs ≥ 3 archs;
        * ``"auto"`` (default): affine with ≥ 5 archs when its slope is positive and within a factor
          2 of the median ratio (so a narrow, noisy sample cannot produce a wild line), else scale.

        Replaces any previous calibration.
        """
        self._check_fitted()
        if mode not in ("auto", "affine", "scale"):
            raise LatbenchError(f"calibration mode must be 'auto', 'affine' or 'scale', got {mode!r}")
        archs = list(archs)
        y = np.asarray(measured_ms, dtype=float)
        if len(archs) == 0 or y.shape != (len(archs),):
            raise LatbenchError(f"calibration needs one measured latency per arch (got {len(archs)} archs, "
                                f"{y.size} latencies)")
        for a, v in zip(archs, y):
            check_latency(v, self._as_arch(a).key, "calibration")
        raw = self._predict_raw(archs)
        scale, offset, used = float(np.median(y / raw)), 0.0, "scale"
        if mode == "affine" and (len(archs) < 3 or np.ptp(raw) <= 0):
            raise LatbenchError(f"an affine calibration needs at least 3 architectures of different predicted "
                                f"latency (got {len(archs)}); use mode='scale'")
        if mode == "affine" or (mode == "auto" and len(archs) >= 5 and np.ptp(raw) > 0):
            from scipy.stats import theilslopes

            slope, intercept, *_ = theilslopes(y, raw)
            if mode == "affine" or (slope > 0 and 0.5 * scale <= slope <= 2 * scale):
                scale, offset, used = float(slope), float(intercept), "affine"
        self.calibration_ = {"scale": scale, "offset": offset, "n": len(archs), "mode": used}
        log.info("calibration from %d archs (%s): scale %.4f offset %.4f ms", len(archs), used, scale, offset)
        return self

    # -- files -----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor as a safe ``.pkl`` (see :mod:`predictors.io`)."""
        from predictors.io import save_predictor

        return save_predictor(self, path)

    def _base_state(self) -> dict[str, Any]:
        return {"space": dict(self.space_), "device": self.device_, "backend": self.backend_,
                "target": self.target_, "n_train": int(self.n_train_),
                "calibration": {k: (v if isinstance(v, str) else float(v)) for k, v in self.calibration_.items()}}

    def _load_base_state(self, s: dict[str, Any]) -> None:
        self._reset()
        self.space_ = dict(s["space"])
        self.device_, self.backend_, self.target_ = s.get("device"), s.get("backend"), s.get("target")
        self.n_train_ = int(s.get("n_train", 0))
        self.calibration_ = dict(s.get("calibration") or {"scale": 1.0, "offset": 0.0, "n": 0})

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _plain_params(self) -> dict[str, Any]:
        """Constructor parameters as plain data (nested predictors are stored by :mod:`predictors.io`)."""
        return {k: v for k, v in self.get_params().items() if not isinstance(v, BasePredictor)}

    def describe(self) -> dict[str, Any]:
        """A short summary for CLIs and logs."""
        self._check_fitted()
        return {"kind": self.kind, "device": self.device_, "backend": self.backend_, "n_train": self.n_train_,
                "space": dict(self.space_), "calibration": dict(self.calibration_)}
