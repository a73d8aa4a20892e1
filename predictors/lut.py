"""Look-up-table predictor: an architecture's latency is the sum of its ops' measured latencies.

This is ProxylessNAS' latency model. Unlike the official code, which silently charges 200 ms for
an op missing from the table, a missing op is an error naming the key, unless a fallback predictor
(e.g. a :class:`~predictors.gbdt.GBDTPredictor`) is set to fill it in.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from latbench.errors import LatbenchError
from latbench.ops import OpSpec
from predictors.base import BasePredictor
from predictors.data import OpData, check_latency, parse_op
from predictors.io import register_predictor


@register_predictor
class LUTPredictor(BasePredictor):
    """Sum of per-op latencies from a table.

    Parameters
    ----------
    stat:
        Table column used as the op latency (``median_ms`` is robust to timing outliers).
    fallback:
        Optional predictor for ops missing from the table; fitted on the same data by :meth:`fit`
        if it is not fitted yet.
    """

    kind = "lut"

    def __init__(self, stat: str = "median_ms", fallback: BasePredictor | None = None) -> None:
        self.stat = stat
        self.fallback = fallback

    def _fit_ops(self, data: OpData) -> None:
        self.latencies_: dict[str, float] = {op.key: float(v) for op, v in zip(data.ops, data.ms)}
        self.stats_: dict[str, dict[str, float]] = {}
        if self.fallback is not None and not self.fallback.is_fitted:
            self.fallback.fit(data.ops, data.ms)

    def _raw_op_ms(self, ops: Sequence[OpSpec]) -> np.ndarray:
        out = np.array([self.latencies_.get(op.key, np.nan) for op in ops], dtype=float)
        miss = np.flatnonzero(np.isnan(out))
        if miss.size and self.fallback is not None:
            # The fallback's own calibration is not applied: its raw op latencies fill the table.
            out[miss] = self.fallback._raw_op_ms([ops[i] for i in miss])
        return out

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_latencies(cls, latencies: Mapping[str, float], resolution: int | None = 224,
                       width_mult: float | None = 1.0, n_classes: int | None = 1000,
                       **params: Any) -> LUTPredictor:
        """A fitted LUT from ``{op_key: ms}`` for the given deployment space."""
        if not isinstance(latencies, Mapping) or not latencies:
            raise LatbenchError("from_latencies needs a non-empty {op_key: ms} mapping")
        keys = list(latencies)
        return cls(**params).fit(keys, [latencies[k] for k in keys], resolution=resolution,
                                 width_mult=width_mult, n_classes=n_classes)

    @classmethod
    def from_proxylessnas_yaml(cls, path: str | Path, resolution: int | None = None,
                               width_mult: float | None = None, n_classes: int | None = None,
                               **params: Any) -> LUTPredictor:
        """Import a latency table in the official ProxylessNAS format (``{key: {count, mean, var}}``, ms)."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as e:
            raise LatbenchError(f"cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise LatbenchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(doc, dict) or not doc:
            raise LatbenchError(f"{path}: expected a mapping of op keys to {{count, mean, var}} "
                                "(the official ProxylessNAS latency table format)")
        lat, stats = {}, {}
        for key, entry in doc.items():
            try:
                OpSpec.parse(key)
            except LatbenchError as e:
                raise LatbenchError(f"{path}: {e}") from None
            if not isinstance(entry, dict) or "mean" not in entry:
                raise LatbenchError(f"{path}: entry {key} must be a mapping with 'mean' (ms), "
                                    "and optionally 'count' and 'var'")
            lat[key] = check_latency(entry["mean"], key, str(path), "mean")
            stats[key] = {"count": float(entry.get("count", 0) or 0), "var": float(entry.get("var", 0) or 0)}
        pred = cls(**params).fit(list(lat), list(lat.values()), resolution=resolution,
                                 width_mult=width_mult, n_classes=n_classes)
        pred.stats_ = stats  # the device is unknown (the official table is a Pixel 1's): device_ stays None
        return pred

    # -- state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"latencies": {k: float(v) for k, v in self.latencies_.items()},
                "stats": {k: dict(v) for k, v in self.stats_.items()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        lat = state.get("latencies")
        if not isinstance(lat, dict):
            raise LatbenchError("LUT state has no 'latencies' mapping")
        for k, v in lat.items():
            parse_op(k, self.search_space)  # the base state (its search space) is loaded first
            check_latency(v, k, "predictor file")
        self.latencies_ = {k: float(v) for k, v in lat.items()}
        self.stats_ = dict(state.get("stats") or {})
