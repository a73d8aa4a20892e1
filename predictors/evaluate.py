"""Whole-network accuracy of a predictor: sample architectures, measure them end to end, compare.

:func:`accuracy_metrics` works on plain arrays; :func:`evaluate_predictor` samples N random
architectures of the predictor's deployment space, measures each whole network on a device through
:func:`latbench.campaign.measure_archs` (resumable and cached: a rerun measures only what is
missing), and writes the per-arch results table, the metrics and a predicted-vs-measured scatter plot.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.campaign import Job, measure_archs, measure_jobs
from latbench.devices import Device, get_device
from latbench.errors import LatbenchError
from latbench.metrics import accuracy_metrics
from latbench.space import Arch, Space, random_archs
from latbench.spaces import DEFAULT_SPACE, get_space, space_of_op_key
from latbench.tables import ok_rows, read_table, table_path
from predictors.base import BasePredictor
from predictors.lut import LUTPredictor

__all__ = ["accuracy_metrics", "check_device", "evaluate_predictor", "format_metrics", "interleave",
           "measured_latencies", "sample_archs", "scatter_plot"]

log = logging.getLogger(__name__)


def scatter_plot(predicted: Sequence[float], measured: Sequence[float], path: str | Path,
                 title: str = "", metrics: dict[str, float] | None = None) -> Path:
    """Predicted vs measured (ms) with the y = x line and the ±10 % band; PNG at ``path``."""
    import matplotlib  # deferred: matplotlib takes ~1 s to import, only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    lo, hi = float(min(p.min(), m.min())) * 0.9, float(max(p.max(), m.max())) * 1.1
    xs = np.linspace(lo, hi, 100)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(xs, xs, color="tab:green", lw=1)
    ax.scatter(m, p, s=14, color="tab:blue", alpha=0.8, label="architectures")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    if metrics:
        ax.text(0.03, 0.97, f"n={metrics['n']}  within ±10 %: {metrics['within_10_pct']:.1f} %\n"
                f"MAPE {metrics['mape_pct']:.2f} %  RMSE {metrics['rmse_ms']:.3f} ms\n"
                f"Spearman {metrics['spearman']:.3f}  Kendall {metrics['kendall']:.3f}",
                transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_archs(space: Space, n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[Arch]:
    """``n`` distinct uniformly random architectures of ``space`` (deterministic per seed)."""
    return random_archs(space, n, seed, exclude)


def interleave(main: Sequence[Arch], extra: Sequence[Arch]) -> list[Arch]:
    """``main`` with ``extra`` spread evenly through it, so both are timed under the same conditions
    (on a shared machine, load drifts over a campaign; calibration archs timed in a separate batch
    would calibrate to another regime)."""
    out: list[Arch] = []
    step = (len(main) + 1) / (len(extra) + 1) if extra else 0
    j = 0
    for i, a in enumerate(main):
        while j < len(extra) and (j + 1) * step <= i + 1:
            out.append(extra[j])
            j += 1
        out.append(a)
    return out + list(extra[j:])


def check_device(pred: BasePredictor, device: str) -> None:
    """A predictor fitted on one device's tables must not be judged against another device."""
    if pred.device_ and pred.device_ != device:
        raise LatbenchError(f"the predictor was fitted on tables of device {pred.device_!r} but the target is "
                            f"{device!r}; evaluate it on {pred.device_!r} or fit one on {device!r}'s tables")


def measured_networks(archs: Sequence[Arch], device: Any, out_dir: str | Path, backend: str | None = None,
                      progress: bool = False, ops: Sequence[Any] = ()) -> pd.DataFrame:
    """Measure whole networks (cached/resumable), ``ops`` timed in the same interleaved rounds; returns
    the archs table rows of the networks measured OK (in ``archs`` order)."""

    df = measure_archs(list(archs), device, out_dir, backend=backend, progress=progress, ops=ops)
    ok = ok_rows(df) if len(df) else df
    n_bad = len(archs) - len(ok)
    if n_bad:
        log.warning("%d of %d architectures failed to measure; evaluating the rest", n_bad, len(archs))
    if not len(ok):
        name = getattr(device, "name", device)
        raise LatbenchError(f"no architecture could be measured on {name} (see the errors in the archs "
                            f"table under {out_dir})")
    return ok


def measured_latencies(archs: Sequence[Arch], device: Any, out_dir: str | Path, backend: str | None = None,
                       progress: bool = False, ops: Sequence[Any] = ()) -> tuple[list[Arch], np.ndarray]:
    """Measure whole networks (cached/resumable); returns the archs measured OK and their latency (ms)."""
    ok = measured_networks(archs, device, out_dir, backend, progress, ops)
    by_key = {a.key: a for a in archs}
    got = [(by_key[k], float(v)) for k, v in zip(ok["key"], ok["median_ms"]) if k in by_key]
    return [a for a, _ in got], np.array([v for _, v in got])


def noise_floor(rows: pd.DataFrame) -> float | None:
    """The campaign's noise floor: median 95 % CI half-width of the networks, in % (None for old tables)."""
    if "ci_halfwidth_pct" not in rows or rows["ci_halfwidth_pct"].isna().all():
        return None
    return float(rows["ci_halfwidth_pct"].median())


def evaluate_predictor(pred: BasePredictor, device: Any = "local-cpu", n: int = 200,
                       out_dir: str | Path = "data", seed: int = 0, backend: str | None = None,
                       calibrate: int = 0, report_dir: str | Path | None = None, name: str = "predictor",
                       progress: bool = False, joint: bool = False) -> dict[str, Any]:
    """Sample ``n`` archs at the deployment space, measure them, compare with ``pred``.

    ``calibrate=K`` also measures K other random archs (a disjoint sample, interleaved with the
    evaluated ones in time) and fits the predictor's calibration on them; metrics are then reported
    both raw (before) and calibrated (after).
    ``joint=True`` also times the deployment space's ops in the same interleaved campaign as the
    networks (so drift hits both alike) and reports, beside the predictor as given, a LUT fitted on
    those op rows (``metrics_joint_lut``). ``metrics['noise_floor_pct']`` is the campaign's median CI
    half-width of the networks.
    ``device`` is a :class:`latbench.devices.Device`, a device name or a YAML path. Writes
    ``<report_dir>/<name>-eval.{csv,json,png}`` (default ``report_dir``: ``out_dir/<device>/eval``).
    """

    pred._check_fitted()
    device = device if isinstance(device, Device) else get_device(str(device))
    check_device(pred, device.name)
    if pred.search_space != DEFAULT_SPACE:
        return evaluate_space_predictor(pred, device, n, out_dir, seed, backend, calibrate, report_dir, name,
                                        progress, joint)
    space = pred.deployment_space()
    archs = sample_archs(space, n, seed)
    cal = sample_archs(space, calibrate, seed + 10_000, exclude=[a.key for a in archs]) if calibrate else []
    ops = space.distinct_ops() if joint else ()
    rows = measured_networks(interleave(archs, cal), device, out_dir, backend, progress, ops)
    by_key = {a.key: a for a in interleave(archs, cal)}
    got = [by_key[k] for k in rows["key"] if k in by_key]
    got_ms = rows.set_index("key").loc[[a.key for a in got], "median_ms"].to_numpy(dtype=float)
    floor = noise_floor(rows)
    cal_keys = {a.key for a in cal}
    is_cal = np.array([a.key in cal_keys for a in got], dtype=bool)
    archs, measured = [a for a, c in zip(got, is_cal) if not c], got_ms[~is_cal]
    cal, cal_ms = [a for a, c in zip(got, is_cal) if c], got_ms[is_cal]
    if calibrate and not cal:
        raise LatbenchError("none of the calibration architectures could be measured")
    result: dict[str, Any] = {"predictor": pred.describe(), "device": device.name, "seed": seed,
                              "space": {"resolution": space.resolution, "width_mult": space.width_mult,
                                        "n_classes": space.n_classes}}
    joint_lut = LUTPredictor().fit(table_path(out_dir, device.name, rows["backend"].iloc[0], "ops")) if joint else None
    predicted = _score(result, pred, archs, measured, cal if calibrate else None, cal_ms, floor, joint_lut)
    table = pd.DataFrame({"key": [a.key for a in archs], "arch": [a.to_json() for a in archs]})
    return _write_report(result, table, predicted, measured, report_dir or Path(out_dir) / device.name / "eval",
                         name, f"{name} on {device.name} (r{space.resolution}, n={len(archs)})")


def _score(result: dict[str, Any], pred: BasePredictor, archs: list, measured: np.ndarray, cal: list | None,
           cal_ms: np.ndarray, floor: float, joint_lut: LUTPredictor | None) -> np.ndarray:
    """Fill ``result``'s metrics: the predictor's (``metrics``; calibrated on ``cal`` when given, the uncalibrated
    ones then in ``metrics_raw``) and a joint LUT's; returns the predictor's final predictions."""
    predicted = np.asarray(pred.predict(archs))
    result["metrics"] = accuracy_metrics(predicted, measured)
    if joint_lut is not None:
        if cal is not None:
            joint_lut.fit_calibration(cal, cal_ms)
        result["metrics_joint_lut"] = {**accuracy_metrics(np.asarray(joint_lut.predict(archs)), measured),
                                       "noise_floor_pct": floor}
    if cal is not None:
        pred.fit_calibration(cal, cal_ms)
        result["metrics_raw"] = result["metrics"]
        predicted = np.asarray(pred.predict(archs))
        result["metrics"] = accuracy_metrics(predicted, measured)
        result["calibration"] = dict(pred.calibration_)
    result["metrics"]["noise_floor_pct"] = floor
    return predicted


def _write_report(result: dict[str, Any], table: pd.DataFrame, predicted: np.ndarray, measured: np.ndarray,
                  report_dir: str | Path, name: str, title: str) -> dict[str, Any]:
    """The per-arch CSV (``table``'s identifying columns + measured, predicted, error), the plot and the JSON."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    table = table.assign(measured_ms=measured, predicted_ms=predicted,
                         error_pct=100 * (predicted - measured) / measured)
    table.to_csv(report_dir / f"{name}-eval.csv", index=False)
    result["table"] = str(report_dir / f"{name}-eval.csv")
    result["plot"] = str(scatter_plot(predicted, measured, report_dir / f"{name}-eval.png", title,
                                      result["metrics"]))
    (report_dir / f"{name}-eval.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    result["json"] = str(report_dir / f"{name}-eval.json")
    return result


def evaluate_space_predictor(pred: BasePredictor, device: Device, n: int = 200, out_dir: str | Path = "data",
                             seed: int = 0, backend: str | None = None, calibrate: int = 0,
                             report_dir: str | Path | None = None, name: str = "predictor", progress: bool = False,
                             joint: bool = False) -> dict[str, Any]:
    """:func:`evaluate_predictor` for a predictor of another space than ProxylessNAS (NAS-Bench-201): the
    space's seeded draw of ``n + calibrate`` networks (the first ``n`` evaluated, the rest calibrate; the
    same draw as ``latbench measure --space NAME --archs N --seed S``), with ``joint`` their ops timed in the
    same campaign (all a LUT of them needs). Same outputs; the per-arch table has ``arch_str``/``arch_index``."""
    space = get_space(pred.search_space)
    drawn = space.sample(n + calibrate, seed)
    archs, cal = drawn[:n], drawn[n:]
    jobs = [Job.network(a) for a in interleave(archs, cal)]
    if joint:
        jobs += [Job.space_op(key) for key in dict.fromkeys(k for a in drawn for k in space.arch_ops(a))]
    df = measure_jobs(jobs, device, out_dir, backend, progress=progress)
    keys = {space.key(a) for a in drawn}
    ok = ok_rows(df) if len(df) else df
    ok = ok[ok["key"].isin(keys)].drop_duplicates("key", keep="last") if len(ok) else ok
    if not len(ok):
        raise LatbenchError(f"no architecture could be measured on {device.name} (see the errors in the archs "
                            f"table under {out_dir})")
    ms = dict(zip(ok["key"], ok["median_ms"].astype(float)))
    archs = [a for a in archs if space.key(a) in ms]
    cal = [a for a in cal if space.key(a) in ms]
    if calibrate and not cal:
        raise LatbenchError("none of the calibration architectures could be measured")
    measured = np.array([ms[space.key(a)] for a in archs])
    cal_ms = np.array([ms[space.key(a)] for a in cal])
    if not archs:
        raise LatbenchError("none of the evaluated architectures could be measured")
    floor = noise_floor(ok[ok["key"].isin({space.key(a) for a in archs})])
    result: dict[str, Any] = {"predictor": pred.describe(), "device": device.name, "seed": seed,
                              "space": dict(pred.space_), "search_space": space.name}
    joint_lut = None
    if joint:
        ops = read_table(table_path(out_dir, device.name, ok["backend"].iloc[0], "ops"))
        ops = ops[ops["key"].map(lambda k: space_of_op_key(str(k)) == space.name)]
        joint_lut = LUTPredictor().fit(ops, space=space.name)
    predicted = _score(result, pred, archs, measured, cal if calibrate else None, cal_ms, floor, joint_lut)
    table = pd.DataFrame({"key": [space.key(a) for a in archs], "arch_str": [a["arch_str"] for a in archs],
                          "arch_index": [int(a["arch_index"]) for a in archs]})
    return _write_report(result, table, predicted, measured, report_dir or Path(out_dir) / device.name / "eval",
                         name, f"{name} on {device.name} ({space.name}, n={len(archs)})")


def format_metrics(m: dict[str, float]) -> str:
    """One human-readable line of metrics (with the campaign's noise floor when known)."""
    floor = m.get("noise_floor_pct")
    return (f"n={m['n']}  RMSE {m['rmse_ms']:.3f} ms  MAPE {m['mape_pct']:.2f} %  "
            f"within ±5 % {m['within_5_pct']:.1f} %  ±10 % {m['within_10_pct']:.1f} %  "
            f"Spearman {m['spearman']:.4f}  Kendall {m['kendall']:.4f}"
            + (f"  (noise floor: networks' median CI ±{floor:.2f} %)" if floor is not None else ""))
