"""How a latency is taken on a noisy machine: interleaved visits, a reference, a confidence interval.

A campaign visits every item once per *round*, in a fresh random order each round, with a short
timing window per visit (``ceil(repeat / rounds)`` repeats of ``number`` runs: ``--rounds 1`` is the
old single long pass, at the same timing budget). A small fixed *reference* op is timed on the same
server between visits (one timing serves as "after" for one visit and "before" for the next).

- **Normalisation.** On this kind of machine (a shared VM, a phone, a throttling Pi) slow phases come
  and go over seconds and slow the op and the reference alike (measured here: correlation 0.5-0.8
  between an op's visit and the references around it). Each visit's value is its median × the board's
  quiet reference level / the mean of the references around it. The level is a low quantile
  (:data:`FLOOR_QUANTILE`) of the board's reference timings, kept across campaigns beside the
  reference artifact (``levels.json``) so that a campaign that runs wholly in a slow phase gives the
  numbers of a quiet one.
- **Burst rejection.** A visit whose slower reference is more than ``burst_threshold`` above the level
  (default 50 %: the 1.6× bursts of this VM) is rejected and the item visited again: there the
  normalisation is least trustworthy.
- **Stop when stable.** An item gets more visits while it has fewer accepted visits than ``rounds`` or
  its 95 % confidence interval is wider than ``ci_target`` of its latency, up to ``max_visits``; one
  that never settles is flagged ``unstable``.

The statistic is the **median of the accepted visits' (normalised) medians**: one visit is the unit of
independent noise; the median outvotes up to half of the visits being off (a moment the reference
missed) and, unlike the minimum, does not depend on how many visits were taken or reward one lucky
moment. Its confidence interval is distribution-free (order statistics of a binomial(n, 1/2)).

Everything here is pure: it works on visit records (dicts) and is tested without a device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np

#: The statistic an item's ``median_ms`` is (recorded in the table's ``statistic`` column).
STATISTIC = "median of accepted visit medians, each normalised by the reference around it"
STATISTIC_RAW = "median of accepted visit medians"
CI_LEVEL = 0.95
#: Default cap on visits: below 9 values the distribution-free 95 % CI of a median is [min, max], which more
#: visits can only widen, so extra visits for an unsettled item help from the 9th on; more cost time
#: (measured here: capped at 15, a campaign on a noisy VM took 2.2-2.7x a one-pass campaign).
DEFAULT_CAP = 9
#: The quantile of a board's reference timings taken as its quiet level (see :func:`reference_floors`).
FLOOR_QUANTILE = 0.2


@dataclass(frozen=True)
class Plan:
    """The rounds settings of a campaign (from the device's ``timing`` section and the CLI)."""

    rounds: int = 5
    repeat: int = 15
    ci_target: float = 0.02
    max_visits: int = 0
    burst_threshold: float = 0.5
    reference: bool = True
    seed: int = 0
    normalize: bool = True

    @property
    def visit_repeat(self) -> int:
        """Repeats per visit: the ``repeat`` budget spread over the rounds (``--rounds 1`` is one long pass)."""
        return max(1, math.ceil(self.repeat / self.rounds))

    @property
    def visit_cap(self) -> int:
        """Visits an item may get (``max_visits``, default :data:`DEFAULT_CAP`, never below ``rounds``)."""
        return self.max_visits or max(self.rounds, DEFAULT_CAP)


def median_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: ``(low, high, coverage)``.

    The interval ``[x_(k), x_(n-k+1)]`` of the sorted values covers the median with probability
    ``1 - 2 P(Bin(n, 1/2) < k)``; ``k`` is the largest with coverage ≥ ``level``. Below 6 values no
    interval reaches 95 %: it is then ``[min, max]`` with its lower coverage (5 values: 93.75 %).
    """
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0.0
    if n == 1:
        return float(x[0]), float(x[0]), 0.0
    best, best_cov = 1, 1 - 2 * 0.5 ** n
    tail = 0.0
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2 ** n  # P(Bin < k)
        cov = 1 - 2 * tail
        if cov < level:
            break
        best, best_cov = k, cov
    return float(x[best - 1]), float(x[n - best]), float(best_cov)


def board_of(v: dict[str, Any]) -> str:
    """Which machine took a visit: a pool's server, else the device (a restarted local server is the same CPU)."""
    return str(v.get("board") or v.get("server", ""))


def reference_floors(visits: Iterable[dict[str, Any]], quantile: float = FLOOR_QUANTILE) -> dict[str, float]:
    """Per board, the reference time of the machine at its quiet moments: a low quantile of every reference
    timing seen (robust to one lucky timing, unlike the minimum; a burst lives above it)."""
    refs: dict[str, set[float]] = {}
    for v in visits:
        for r in (v.get("ref_before_ms"), v.get("ref_after_ms")):
            if isinstance(r, (int, float)) and r > 0 and math.isfinite(r):
                refs.setdefault(board_of(v), set()).add(float(r))
    return {b: float(np.quantile(sorted(rs), quantile)) for b, rs in refs.items()}


def visit_ref(v: dict[str, Any]) -> float | None:
    """The slower of the two reference timings around a visit (None without a reference)."""
    refs = [r for r in (v.get("ref_before_ms"), v.get("ref_after_ms")) if isinstance(r, (int, float))]
    return max(refs) if refs else None


def is_rejected(v: dict[str, Any], floors: dict[str, float], threshold: float) -> bool:
    """Whether a visit was taken in a slow moment (its reference slower than the floor by > threshold)."""
    r = visit_ref(v)
    floor = floors.get(board_of(v))
    return r is not None and floor is not None and r > floor * (1.0 + threshold)


def accepted(visits: Sequence[dict[str, Any]], floors: dict[str, float], threshold: float) -> list[dict[str, Any]]:
    return [v for v in visits if not is_rejected(v, floors, threshold)]


def value_of(v: dict[str, Any], levels: dict[str, float], normalize: bool = True) -> float:
    """A visit's latency; normalised to the board's quiet reference level when ``normalize``: the op and the
    reference timed around it are slowed alike by a slow moment, so ``ms * level / ref`` removes the
    moment's slowness (the reference's own noise comes in instead, which is smaller here)."""
    ms = float(v["median_ms"])
    refs = [r for r in (v.get("ref_before_ms"), v.get("ref_after_ms")) if isinstance(r, (int, float)) and r > 0]
    level = levels.get(board_of(v))
    if not normalize or not refs or level is None:
        return ms
    return ms * level / float(np.mean(refs))


def values(visits: Sequence[dict[str, Any]], levels: dict[str, float], plan: Plan) -> list[float]:
    """The values of the accepted visits."""
    return [value_of(v, levels, plan.normalize) for v in accepted(visits, levels, plan.burst_threshold)]


def halfwidth(values: Sequence[float]) -> float:
    """The CI half-width relative to the median (inf with fewer than 2 values)."""
    if len(values) < 2:
        return math.inf
    lo, hi, _ = median_ci(values)
    med = float(np.median(values))
    return (hi - lo) / 2 / med if med > 0 else math.inf


def needs_visit(visits: Sequence[dict[str, Any]], floors: dict[str, float], plan: Plan) -> bool:
    """Whether an item gets another visit: too few accepted visits, or a CI wider than the target."""
    if len(visits) >= plan.visit_cap:
        return False
    good = values(visits, floors, plan)
    if len(good) < plan.rounds:
        return True
    return plan.rounds > 1 and halfwidth(good) > plan.ci_target


def summarize_item(visits: Sequence[dict[str, Any]], floors: dict[str, float], plan: Plan) -> dict[str, Any]:
    """The table fields of an item from all its visits (in the order they were taken)."""
    rejected = [is_rejected(v, floors, plan.burst_threshold) for v in visits]
    vals = [value_of(v, floors, plan.normalize) for v in visits]
    good = [x for x, r in zip(vals, rejected) if not r]
    raw = [float(v["median_ms"]) for v, r in zip(visits, rejected) if not r]
    reason = ""
    if not good:  # every visit in a slow moment: keep a number, but never as a stable one
        good, raw, reason = vals, [float(v["median_ms"]) for v in visits], "every visit was taken in a slow moment"
    arr = np.asarray(good, dtype=float)
    med = float(np.median(arr))
    lo, hi, cov = median_ci(arr)
    hw = halfwidth(arr)
    if not reason and plan.rounds > 1 and hw > plan.ci_target:
        reason = f"CI ±{100 * hw:.1f} % above the {100 * plan.ci_target:g} % target after {len(visits)} visits"
    mean = float(arr.mean())
    conds = [v for v in visits if v.get("load_1m") is not None]
    out: dict[str, Any] = {
        "median_ms": med, "mean_ms": mean, "std_ms": float(arr.std()), "min_ms": float(arr.min()),
        "max_ms": float(arr.max()), "cv": float(arr.std() / mean) if mean else 0.0,
        "ci_low_ms": lo, "ci_high_ms": hi, "ci_level": cov, "ci_halfwidth_pct": 100 * hw if math.isfinite(hw) else None,
        "statistic": STATISTIC if plan.normalize else STATISTIC_RAW, "raw_median_ms": float(np.median(raw)),
        "ref_level_ms": floors.get(board_of(visits[-1])), "rounds": plan.rounds, "visit_repeat": plan.visit_repeat,
        "n_visits": len(visits), "n_rejected": int(sum(rejected)),
        "visits_ms": [float(v["median_ms"]) for v in visits], "visit_values_ms": vals,
        "visit_rejected": [bool(r) for r in rejected],
        "visit_ref_ms": [float(visit_ref(v)) if visit_ref(v) is not None else math.nan for v in visits],
        "unstable": bool(reason), "unstable_reason": reason or None,
        "number": int(visits[-1].get("number", 1)),
        "server": ",".join(sorted({str(v.get("server", "")) for v in visits})),
    }
    if conds:
        loads = [v["load_1m"] for v in conds]
        out.update(load_min=min(loads), load_max=max(loads))
        for f, agg in (("freq_mhz_min", min), ("freq_mhz_max", max), ("temp_c", max)):
            vals = [v[f] for v in conds if v.get(f) is not None]
            out[f if f != "temp_c" else "temp_c_max"] = agg(vals) if vals else None
        out["throttled"] = any(bool(v.get("throttled")) for v in conds)
        govs = sorted({str(v["governor"]) for v in conds if v.get("governor")})
        out["governor"] = ",".join(govs) if govs else None
    return out


def campaign_summary(visits_by_key: dict[str, Sequence[dict[str, Any]]], floors: dict[str, float],
                     plan: Plan) -> dict[str, Any]:
    """Counts and the reference's drift over a campaign (for its closing line)."""
    allv = [v for vs in visits_by_key.values() for v in vs]
    rej = sum(is_rejected(v, floors, plan.burst_threshold) for v in allv)
    refs = sorted((v.get("t", 0.0), visit_ref(v)) for v in allv if visit_ref(v) is not None)
    out: dict[str, Any] = {"items": len(visits_by_key), "visits": len(allv), "rejected": int(rej)}
    if refs:
        vals = np.array([r for _, r in refs])
        out.update(ref_min_ms=float(vals.min()), ref_median_ms=float(np.median(vals)),
                   ref_max_ms=float(vals.max()), ref_drift=float(vals.max() / vals.min()))
    return out
