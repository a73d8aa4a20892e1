"""Matplotlib (Agg) figures for the analysis commands and the HTML report; each returns PNG bytes.

Every function takes plain data (DataFrames, arrays) and is independent of where it came from,
so the CLI can write a PNG file and the report can embed the same bytes.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

DPI = 100


def to_png(fig: plt.Figure, path: str | Path | None = None) -> bytes:
    """Render ``fig`` to PNG bytes (and to ``path`` if given), then close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def correlation_heatmap(corr: pd.DataFrame, title: str = "Spearman rank correlation",
                        path: str | Path | None = None, vmin: float | None = None,
                        marked: Sequence[str] = ()) -> bytes:
    """A device × device correlation matrix as an annotated heatmap (NaN cells left blank).
    Devices in ``marked`` (e.g. ours among published ones) get red bold labels and a frame around
    their rows and columns."""
    d = len(corr)
    size = max(4.0, min(0.45 * d + 2.5, 16.0))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    vals = corr.to_numpy(dtype=float)
    lo = vmin if vmin is not None else min(0.0, float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", vmin=lo, vmax=1.0)
    ax.set_xticks(range(d), [str(c) for c in corr.columns], rotation=90, fontsize=8 if d > 12 else 10)
    ax.set_yticks(range(d), [str(c) for c in corr.index], fontsize=8 if d > 12 else 10)
    if d <= 30:
        fs = 6 if d > 16 else 8 if d > 8 else 10
        for i in range(d):
            for j in range(d):
                v = vals[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs,
                            color="black" if v > lo + 0.6 * (1 - lo) else "white")
    names = [str(c) for c in corr.columns]
    for i, name in enumerate(names):
        if name in marked:
            for lab in (ax.get_xticklabels()[i], ax.get_yticklabels()[i]):
                lab.set_color("crimson")
                lab.set_fontweight("bold")
            for rect in ((i - 0.5, -0.5, 1, d), (-0.5, i - 0.5, d, 1)):
                ax.add_patch(plt.Rectangle(rect[:2], rect[2], rect[3], fill=False, edgecolor="crimson", lw=1.5))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return to_png(fig, path)


def op_heatmap(frame: pd.DataFrame, title: str, path: str | Path | None = None) -> bytes:
    """MBConv op latency as kernel×expand (rows) × layer shape (columns, by input resolution).

    ``frame`` has columns ``kernel``, ``expand``, ``in_h``, ``in_ch``, ``out_ch``, ``stride`` and
    ``median_ms`` (one row per op); cells are annotated in ms on a log colour scale.
    """
    f = frame.copy()
    f["row"] = "k" + f["kernel"].astype(int).astype(str) + " e" + f["expand"].astype(int).astype(str)
    f["col"] = (f["in_h"].astype(int).astype(str) + "px " + f["in_ch"].astype(int).astype(str) + "→"
                + f["out_ch"].astype(int).astype(str) + " s" + f["stride"].astype(int).astype(str))
    order_cols = (f.sort_values(["in_h", "stride", "in_ch", "out_ch"], ascending=[False, True, True, True])
                  ["col"].drop_duplicates().tolist())
    order_rows = (f.sort_values(["kernel", "expand"])["row"].drop_duplicates().tolist())
    grid = f.pivot_table(index="row", columns="col", values="median_ms", aggfunc="median")
    grid = grid.reindex(index=order_rows, columns=order_cols)
    vals = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.62 * len(order_cols) + 2), max(2.5, 0.42 * len(order_rows) + 1.6)))
    finite = vals[np.isfinite(vals) & (vals > 0)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size and finite.min() < finite.max() else None
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="magma", norm=norm, aspect="auto")
    ax.set_xticks(range(len(order_cols)), order_cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order_rows)), order_rows, fontsize=9)
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            v = vals[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                        color="white" if norm is not None and norm(v) < 0.55 else "black")
    ax.set_xlabel("layer shape (input resolution, channels in→out, stride)")
    ax.set_ylabel("kernel × expand")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="median latency (ms)")
    ax.set_title(title)
    return to_png(fig, path)


def pred_vs_measured(measured: np.ndarray, predicted: np.ndarray, title: str, band: float = 0.10,
                     groups: np.ndarray | None = None, path: str | Path | None = None) -> bytes:
    """Predicted vs measured latency on log-log axes with the y = x line and a ±``band`` band."""
    m = np.asarray(measured, dtype=float)
    p = np.asarray(predicted, dtype=float)
    ok = np.isfinite(m) & np.isfinite(p) & (m > 0) & (p > 0)
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    if ok.any():
        lo, hi = min(m[ok].min(), p[ok].min()) * 0.8, max(m[ok].max(), p[ok].max()) * 1.25
        xs = np.geomspace(lo, hi, 50)
        ax.fill_between(xs, xs * (1 - band), xs * (1 + band), color="tab:green", alpha=0.18,
                        label=f"±{band:.0%}")
        ax.plot(xs, xs, color="tab:green", lw=1)
        if groups is not None:
            g = np.asarray(groups)[ok]
            for name in pd.unique(g):
                sel = g == name
                ax.scatter(m[ok][sel], p[ok][sel], s=10, alpha=0.7, label=str(name))
        else:
            ax.scatter(m[ok], p[ok], s=10, alpha=0.7)
        within = np.mean(np.abs(p[ok] - m[ok]) <= band * m[ok])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.text(0.03, 0.95, f"n={ok.sum()}  within ±{band:.0%}: {within:.0%}", transform=ax.transAxes,
                va="top", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title)
    return to_png(fig, path)


def trajectories(log: pd.DataFrame, title: str, x: str | None = None, path: str | Path | None = None) -> bytes:
    """Every numeric column of a search log against ``x`` (``epoch``/``step``/row), small multiples."""
    if x is None:
        x = next((c for c in ("epoch", "step", "iteration", "iter") if c in log.columns), None)
    xs = log[x].to_numpy() if x else np.arange(len(log))
    cols = [c for c in log.columns if c != x and pd.api.types.is_numeric_dtype(log[c])
            and log[c].notna().any()]
    n = max(1, len(cols))
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, c in zip(axes.ravel(), cols):
        ax.plot(xs, log[c].to_numpy(dtype=float), marker="o" if len(log) <= 40 else None, ms=3)
        ax.set_title(c, fontsize=10)
        ax.set_xlabel(x or "row", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return to_png(fig, path)


def adaptation_curve(summary: pd.DataFrame, title: str, metric: str = "spearman",
                     path: str | Path | None = None) -> bytes:
    """``metric`` vs k for each method (``summary`` has columns k, method, metric, metric_std)."""
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    from matplotlib.ticker import NullFormatter

    for method, g in summary.groupby("method", sort=False):
        g = g.sort_values("k")
        std = g.get(f"{metric}_std")
        ax.errorbar(g["k"], g[metric], yerr=None if std is None else std, marker="o", capsize=3, label=method,
                    linestyle="--" if "raw" in str(method) else "-")
    ax.set_xscale("log")
    ks = sorted(summary["k"].unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("k target samples")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return to_png(fig, path)


def latency_distributions(matrix: pd.DataFrame, title: str, path: str | Path | None = None) -> bytes:
    """Box plot per device of the valid latencies (log scale)."""
    cols = list(matrix.columns)
    data = [matrix[c][(matrix[c] > 0) & np.isfinite(matrix[c])].to_numpy() for c in cols]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(cols) + 2), 4.0))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(cols) + 1), cols, rotation=90, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    return to_png(fig, path)


def rank_scatter(a: pd.Series, b: pd.Series, title: str, path: str | Path | None = None) -> bytes:
    """Latency of one device against another (log-log), the visual form of rank agreement."""
    ok = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(a[ok], b[ok], s=3, alpha=0.25)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{a.name} (ms)")
    ax.set_ylabel(f"{b.name} (ms)")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return to_png(fig, path)


def bar_by_group(values: Mapping[str, float], title: str, ylabel: str, path: str | Path | None = None) -> bytes:
    """A simple bar chart (e.g. one value per device)."""
    names: Sequence[str] = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), [values[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return to_png(fig, path)
