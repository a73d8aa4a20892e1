"""A self-contained HTML report (PNGs embedded as data URIs) of everything latbench has produced.

:func:`build_report` scans a table directory (``DIR/<device>/{ops,archs}-<backend>.parquet`` and
predictor evaluations ``*-eval.csv`` with ``measured_ms``/``predicted_ms``) and a runs directory
(search logs: CSV files with an ``epoch``/``step`` column), and writes one HTML file with

* provenance: per table its device, backend, rows, target, timing settings, versions, facts;
* per-device op-latency heatmaps (kernel × expand × layer shape/resolution);
* predicted-vs-measured scatter plots with the ±10 % band;
* cross-device rank-correlation heatmaps (our op and architecture tables);
* search trajectories (every numeric column per epoch);
* our NAS-Bench-201 tables among the published devices: the heatmap with ours marked, ρ of each of
  ours against every published device, the adaptation curve from ours;
* the published HELP NAS-Bench-201 latencies (from :func:`latbench.paths.help_nb201_csv`):
  device correlation matrix, latency spread, a device pair, and a proxy-adaptation curve.

A section with nothing to show says what to run to fill it.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latbench.adapt import adaptation_curve, data_from_wide, summarize
from latbench.analysis import load_published_help, long_to_matrix, rank_correlations
from latbench.errors import LatbenchError
from latbench.facts import versions
from latbench.files import temp_sibling
from latbench.ops import OpKeyError, OpSpec
from latbench.paths import SHARED_ENV, help_nb201_csv
from latbench.plots import adaptation_curve as curve_png
from latbench.plots import (correlation_heatmap, latency_distributions, op_heatmap, pred_vs_measured, rank_scatter,
                            trajectories)
from latbench.tables import ok_mask, ok_rows, read_table, table_paths

log = logging.getLogger(__name__)

MEASURED_COLUMNS = ("measured_ms", "y_true", "true_ms", "measured")
PREDICTED_COLUMNS = ("predicted_ms", "y_pred", "pred_ms", "predicted", "prediction")
STEP_COLUMNS = ("epoch", "step", "iteration", "iter")
#: Provenance columns shown per table (first distinct value).
_PROV_COLUMNS = ("target", "num_threads", "number", "repeat", "min_repeat_ms", "warmup", "emulated", "server")


class ReportError(LatbenchError):
    """The report cannot be written."""


@dataclass
class Found:
    """Everything the scan found."""

    op_tables: list[tuple[Path, pd.DataFrame]] = field(default_factory=list)
    arch_tables: list[tuple[Path, pd.DataFrame]] = field(default_factory=list)
    evals: list[tuple[Path, pd.DataFrame, dict]] = field(default_factory=list)
    search_logs: list[tuple[Path, pd.DataFrame]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# scanning
# --------------------------------------------------------------------------------------------
def scan(data_dir: str | Path | None, runs_dir: str | Path | None = None) -> Found:
    """Find our tables, predictor evaluations and search logs under the two directories."""
    found = Found()
    roots = [Path(d) for d in (data_dir, runs_dir) if d is not None and Path(d).is_dir()]
    seen: set[Path] = set()
    for root in roots:
        for p in table_paths(root):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            try:
                df = read_table(p)
            except LatbenchError as e:
                found.skipped.append(f"{p}: {e}")
                continue
            if df.empty:
                continue
            kind = _table_kind(p, df)
            if kind == "ops":
                found.op_tables.append((p, df))
            elif kind == "archs":
                found.arch_tables.append((p, df))
            elif _eval_columns(df):
                found.evals.append((p, df, {}))
            elif _step_column(df):
                found.search_logs.append((p, df))
        for p in sorted(root.rglob("*.csv")):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            try:
                df = pd.read_csv(p)
            except Exception as e:  # a CSV someone left there; the report goes on without it
                found.skipped.append(f"{p}: {e.__class__.__name__}: {e}")
                continue
            if _eval_columns(df):
                meta_path = p.with_suffix(".json")
                meta = {}
                if meta_path.exists():
                    try:
                        meta = json.loads(meta_path.read_text())
                    except (OSError, json.JSONDecodeError):
                        pass
                found.evals.append((p, df, meta))
            elif _step_column(df) and len(df.select_dtypes("number").columns) >= 2:
                found.search_logs.append((p, df))
    return found


def _table_kind(p: Path, df: pd.DataFrame) -> str | None:
    if p.name.startswith("ops-"):
        return "ops"
    if p.name.startswith("archs-"):
        return "archs"
    if {"key", "device", "median_ms"} <= set(df.columns):
        kinds = set(df.get("kind", pd.Series(dtype=str)).astype(str))
        return "archs" if kinds == {"arch"} or "arch" in df.columns else "ops"
    return None


def _eval_columns(df: pd.DataFrame) -> tuple[str, str] | None:
    m = next((c for c in MEASURED_COLUMNS if c in df.columns), None)
    p = next((c for c in PREDICTED_COLUMNS if c in df.columns), None)
    return (m, p) if m and p else None


def _step_column(df: pd.DataFrame) -> str | None:
    return next((c for c in STEP_COLUMNS if c in df.columns), None)


# --------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------
def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


def _table_html(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    return df.to_html(index=False, escape=True, border=0, classes="tbl", na_rep="–",
                      float_format=lambda v: float_format.format(v))


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _first(df: pd.DataFrame, col: str) -> Any:
    if col not in df.columns:
        return None
    vals = df[col].dropna()
    return vals.iloc[0] if len(vals) else None


def _json_cell(v: Any) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        try:
            d = json.loads(v)
            return d if isinstance(d, dict) else {"value": d}
        except json.JSONDecodeError:
            return {"value": v}
    return {}


def _safe(fn: Callable[[], str], what: str) -> str:
    """Run one section builder; a failure becomes a visible note instead of killing the report."""
    try:
        return fn()
    except LatbenchError as e:
        return _note(f"{what}: {e}")
    except Exception as e:  # a plotting bug in one section must not lose the rest of the report
        log.exception("report section %s failed", what)
        return _note(f"{what} could not be drawn ({e.__class__.__name__}: {e})")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
def _device_name(df: pd.DataFrame, p: Path) -> str:
    d = _first(df, "device")
    return str(d) if d is not None else p.parent.name


def section_provenance(found: Found) -> str:
    rows = []
    details = []
    for kind, tables in (("ops", found.op_tables), ("archs", found.arch_tables)):
        for p, df in tables:
            ok = ok_rows(df) if "median_ms" in df.columns else df.iloc[:0]
            ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True) if "timestamp" in df.columns else None
            row = {"device": _device_name(df, p), "backend": _first(df, "backend"), "kind": kind,
                   "table": str(p), "rows": len(df), "ok": len(ok), "errors": int((~ok_mask(df)).sum()),
                   "median of medians (ms)": float(ok["median_ms"].median()) if len(ok) else np.nan}
            if "ci_halfwidth_pct" in ok.columns and len(ok):  # tables of interleaved rounds (older ones lack these)
                visits = pd.to_numeric(ok["n_visits"], errors="coerce").sum()
                row["median CI ± (%)"] = float(pd.to_numeric(ok["ci_halfwidth_pct"], errors="coerce").median())
                row["rejected visits"] = (f"{int(pd.to_numeric(ok['n_rejected'], errors='coerce').sum())} of "
                                          f"{int(visits)}")
                row["unstable"] = int(ok["unstable"].fillna(False).astype(bool).sum()) if "unstable" in ok else 0
            for c in _PROV_COLUMNS:
                v = _first(df, c)
                if v is not None:
                    row[c] = str(v)[:80]
            if ts is not None and ts.notna().any():
                row["measured"] = f"{ts.min():%Y-%m-%d %H:%M} – {ts.max():%Y-%m-%d %H:%M} UTC"
            rows.append(row)
            facts = {name: _json_cell(_first(df, name)) for name in ("versions", "device_facts", "host_facts")}
            facts = {k: v for k, v in facts.items() if v}
            if facts:
                details.append(f"<details><summary>{html.escape(row['device'])} / {html.escape(str(row['backend']))} "
                               f"({kind}) — versions and facts</summary><pre>"
                               + html.escape(json.dumps(facts, indent=1, sort_keys=True, default=str))
                               + "</pre></details>")
    if not rows:
        return _note("No latency tables found. Measure some with `latbench measure --target DEVICE --out DIR`, "
                     "then run `latbench report --data DIR`.")
    return _table_html(pd.DataFrame(rows)) + "".join(details)


def section_op_heatmaps(found: Found) -> str:
    parts = []
    for p, df in found.op_tables:
        ok = ok_rows(df).copy()
        ok["median_ms"] = pd.to_numeric(ok["median_ms"], errors="coerce")
        recs = []
        for key, ms in zip(ok["key"].astype(str), ok["median_ms"]):
            try:
                op = OpSpec.parse(key)
            except OpKeyError:
                continue
            if op.kind == "expanded_conv":
                recs.append({"kernel": op.kernel, "expand": op.expand, "in_h": op.in_h, "in_ch": op.in_ch,
                             "out_ch": op.out_ch, "stride": op.stride, "median_ms": ms})
        if not recs:
            parts.append(_note(f"{p}: no measured MBConv ops yet"))
            continue
        title = f"{_device_name(df, p)} / {_first(df, 'backend')}: MBConv median latency (ms)"
        parts.append(_img(op_heatmap(pd.DataFrame(recs), title), title))
    return "".join(parts) or _note("No op tables found (run `latbench measure`).")


def _our_matrix(tables: list[tuple[Path, pd.DataFrame]]) -> pd.DataFrame | None:
    frames = [df for _, df in tables if {"key", "device", "median_ms"} <= set(df.columns)]
    if not frames:
        return None
    return long_to_matrix(pd.concat(frames, ignore_index=True))


def _is_nb201(df: pd.DataFrame) -> bool:
    return "arch_str" in df.columns and bool(df["arch_str"].notna().any())


def section_our_correlation(found: Found, bootstrap: int) -> str:
    parts = []
    archs = [(p, df) for p, df in found.arch_tables if not _is_nb201(df)]  # NAS-Bench-201: next section
    for label, tables in (("op", found.op_tables), ("architecture", archs)):
        mat = _our_matrix(tables)
        if mat is None or mat.shape[1] < 2:
            parts.append(_note(f"Cross-device correlation of {label} latencies needs {label} tables of two or more "
                               f"devices (found {0 if mat is None else mat.shape[1]})."))
            continue
        try:
            res = rank_correlations(mat, bootstrap=bootstrap)
        except LatbenchError as e:  # e.g. two devices that measured disjoint sets of ops
            parts.append(_note(f"{label} tables: {e}"))
            continue
        title = f"Spearman ρ of {label} latencies between our devices"
        parts.append(_img(correlation_heatmap(res.spearman, title), title))
        pairs = res.pairs()
        parts.append(_table_html(pairs, "{:.3f}"))
    return "".join(parts)


def section_evals(found: Found) -> str:
    parts = []
    for p, df, meta in found.evals:
        m, pr = _eval_columns(df)  # type: ignore[misc]
        group_col = next((c for c in ("predictor", "model", "method") if c in df.columns), None)
        name = p.name.replace("-eval.csv", "").replace(".csv", "")
        device = meta.get("device") or _first(df, "device") or p.parent.parent.name
        title = f"{name} on {device}: predicted vs measured"
        png = pred_vs_measured(df[m].to_numpy(), df[pr].to_numpy(), title,
                               groups=df[group_col].to_numpy() if group_col else None)
        parts.append(_img(png, title))
        metrics = meta.get("metrics")
        if isinstance(metrics, dict) and metrics:
            parts.append(_table_html(pd.DataFrame([metrics]), "{:.4g}"))
    return "".join(parts) or _note("No predictor evaluations found (run `latbench evaluate`; it writes "
                                   "<name>-eval.csv with measured_ms and predicted_ms).")


def section_search(found: Found) -> str:
    parts = []
    for p, df in found.search_logs:
        title = f"search run {p.parent.name}/{p.name}"
        parts.append(_img(trajectories(df, title, _step_column(df)), title))
        per_epoch = [c for c in ("epoch", "phase", "val_acc", "expected_latency_ms", "derived_latency_ms",
                                 "alpha_entropy") if c in df.columns]
        if "alpha_entropy" in per_epoch:  # a search log: how α settled and what the derived net costs, per epoch
            parts.append("<p>Per epoch: α entropy (nats, mean over layers) and the derived (argmax) net's "
                         "predicted latency.</p>" + _table_html(df[per_epoch]))
        last = df.tail(1)
        parts.append(_table_html(last[[c for c in last.columns if pd.api.types.is_numeric_dtype(last[c])
                                       and last[c].notna().any()]]))
        summary = p.parent / "summary.json"  # written by `python -m search.run`
        if summary.exists():
            try:
                info = json.loads(summary.read_text())
            except (OSError, json.JSONDecodeError):
                info = None
            if isinstance(info, dict):
                parts.append(f"<details open><summary>{html.escape(str(summary))}</summary><pre>"
                             f"{html.escape(json.dumps(info, indent=1, sort_keys=True, default=str)[:6000])}"
                             "</pre></details>")
    return "".join(parts) or _note("No search logs found (CSV files with an epoch column under the runs directory).")


def section_help(path: Path | None, bootstrap: int, adapt: bool) -> str:
    p = Path(path) if path else help_nb201_csv()
    if not p.exists():
        return _note(f"Published HELP table not found at {p} (set {SHARED_ENV} to the shared directory).")
    mat = load_published_help(p)
    parts = [f"<p>Source: <code>{html.escape(str(p))}</code> — {len(mat):,} NAS-Bench-201 architectures × "
             f"{mat.shape[1]} device settings, latencies in ms as published by HELP (Lee et al., NeurIPS 2021; "
             "github HayeonLee/HELP), MIT licence. Part of the values come from HW-NAS-Bench and Eagle/BRP-NAS.</p>"]
    # The full matrix without resampling (351 pairs × 15k entries); CIs only for the pairs in the table.
    res = rank_correlations(mat, bootstrap=0)
    title = "HELP NAS-Bench-201: Spearman ρ between devices"
    parts.append(_img(correlation_heatmap(res.spearman, title), title))
    best = []
    for d in res.devices:
        s = res.spearman[d].drop(d)
        proxy = s.idxmax()
        row = {"device": d, "best proxy": proxy, "ρ": s.max(), "τ": res.kendall.loc[d, proxy]}
        if bootstrap:
            pair = rank_correlations(mat[[d, proxy]], bootstrap=min(bootstrap, 50), kendall_bootstrap=False)
            row["ρ 95% CI"] = f"[{pair.spearman_ci[0].iloc[0, 1]:.3f}, {pair.spearman_ci[1].iloc[0, 1]:.3f}]"
        row.update({"worst proxy": s.idxmin(), "ρ worst": s.min(), "valid entries": res.invalid[d]["valid"]})
        best.append(row)
    parts.append(_table_html(pd.DataFrame(best), "{:.3f}"))
    parts.append(_img(latency_distributions(mat, "HELP NAS-Bench-201: latency per device"),
                      "HELP NAS-Bench-201: latency per device"))
    pair = ("pixel3", "raspi4") if {"pixel3", "raspi4"} <= set(mat.columns) else tuple(mat.columns[:2])
    t = f"{pair[0]} vs {pair[1]} (ρ = {res.spearman.loc[pair[0], pair[1]]:.3f})"
    parts.append(_img(rank_scatter(mat[pair[0]], mat[pair[1]], t), t))
    if adapt:
        proxy, target = _adapt_pair(mat)
        data = data_from_wide(mat, proxy, target)
        ks = [k for k in (5, 10, 20, 50) if k <= len(data) - 3]
        summary = summarize(adaptation_curve(data, ks, repeats=3))
        t = f"Adapting {proxy} → {target}: Spearman on held-out archs vs k"
        parts.append(_img(curve_png(summary, t), t))
        parts.append(_table_html(curve_table(summary)))
        parts.append(_note(f"Mean over 3 random draws of the k samples; scored on the other {len(data) - max(ks):,}+ "
                           "architectures. ρ = Spearman, ±10 % = share of predictions within 10 % of the measured "
                           "latency. The raw proxy's ±10 % is near 0 because devices differ in scale."))
    return "".join(parts)


#: Targets of the report's adaptation curve from our device: three of HELP's meta-test devices, a GPU, a
#: server CPU and a board (a curve costs ~2 s per target on 2 cores; `benchmarks/our_proxy.py` does all).
OUR_CURVE_TARGETS = ("raspi4", "gold_6226", "titan_rtx_256")


def section_ours_vs_published(found: Found, path: Path | None, bootstrap: int, adapt: bool) -> str:
    """Our NAS-Bench-201 measurements among the published devices: the correlation heatmap with our
    devices marked, each of ours against every published device, and the adaptation curve."""
    frames = [df for _, df in found.arch_tables if _is_nb201(df) and {"device", "median_ms"} <= set(df.columns)]
    if not frames:
        return _note("No NAS-Bench-201 tables of our devices (run `latbench measure --space nasbench201 --archs 300` "
                     "and give its --out as --data).")
    p = Path(path) if path else help_nb201_csv()
    if not p.exists():
        return _note(f"Published HELP table not found at {p} (set {SHARED_ENV} to the shared directory).")
    df = pd.concat(frames, ignore_index=True)
    df = df[df["arch_str"].notna()]
    ours = long_to_matrix(df.assign(key=df["arch_str"].astype(str)), kind="archs", source="our NAS-Bench-201 tables")
    published = load_published_help(p)
    ours = ours.rename(columns={c: f"{c} (ours)" for c in ours.columns if c in published.columns})
    mat = ours.join(published, how="inner")
    mat = mat.dropna(subset=list(ours.columns), how="all")
    if len(mat) < 5:
        return _note(f"Only {len(mat)} of our NAS-Bench-201 networks are in the published table; measure more.")
    res = rank_correlations(mat, bootstrap=0)
    mine = list(ours.columns)
    title = f"Our devices (red) among the HELP devices: Spearman ρ over our {len(mat)} measured networks"
    parts = [_img(correlation_heatmap(res.spearman, title, marked=mine), title)]
    rows = []
    for col in mine:
        for dev in published.columns:
            pair = rank_correlations(mat[[col, dev]], bootstrap=min(bootstrap, 50), kendall_bootstrap=False)
            rows.append({"ours": col, "published device": dev, "ρ": pair.spearman.iloc[0, 1],
                         "ρ 95% CI": f"[{pair.spearman_ci[0].iloc[0, 1]:.3f}, {pair.spearman_ci[1].iloc[0, 1]:.3f}]"
                         if bootstrap else "", "τ": pair.kendall.iloc[0, 1], "n": int(pair.n.iloc[0, 1])})
    tab = pd.DataFrame(rows).sort_values(["ours", "ρ"], ascending=[True, False])
    parts.append(_table_html(tab, "{:.3f}"))
    if adapt:
        proxy = next((c for c in mine if c.endswith("/tvm")), mine[0])
        curves = []
        for target in [t for t in OUR_CURVE_TARGETS if t in published.columns]:
            data = data_from_wide(mat, proxy, target)
            ks = [k for k in (5, 10, 20, 50) if k <= len(data) - 3]
            if ks:
                curves.append(adaptation_curve(data, ks, repeats=2))
        if curves:
            summary = summarize(pd.concat(curves, ignore_index=True))
            t = (f"Adapting our {proxy} to {', '.join(OUR_CURVE_TARGETS)}: mean Spearman on our other "
                 "networks vs k")
            parts.append(_img(curve_png(summary, t), t))
            parts.append(_table_html(curve_table(summary)))
    return "".join(parts)


def curve_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Adaptation summary as one row per method, one column per k ("ρ 0.912 · ±10 % 41 %")."""
    cells = summary.assign(cell=[f"ρ {r:.3f} · ±10 % {a:.0%}" for r, a in zip(summary["spearman"], summary["acc10"])])
    wide = cells.pivot(index="method", columns="k", values="cell")
    wide = wide.reindex(list(dict.fromkeys(summary["method"])))
    wide.columns = [f"k = {k}" for k in wide.columns]
    return wide.reset_index()


def _adapt_pair(mat: pd.DataFrame) -> tuple[str, str]:
    if {"gold_6226", "raspi4"} <= set(mat.columns):
        return "gold_6226", "raspi4"
    return str(mat.columns[0]), str(mat.columns[1])


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#22313f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;opacity:.8}main{max-width:1280px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 20px;margin:18px 0}
h2{font-size:19px;margin:4px 0 10px;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5c6670}.note{color:#6b7580;font-style:italic}
table.tbl{border-collapse:collapse;font-size:12.5px;margin:8px 0;display:block;overflow-x:auto}
table.tbl th,table.tbl td{padding:3px 8px;border-bottom:1px solid #e8eaed;text-align:right;white-space:nowrap}
table.tbl th{background:#eef1f4;text-align:center}pre{font-size:11.5px;background:#f3f4f6;padding:8px;overflow-x:auto}
nav a{color:#cfe3ff;margin-right:14px;font-size:14px}
"""


def render(found: Found, help_path: Path | None = None, include_help: bool = True, bootstrap: int = 100,
           adapt: bool = True, title: str = "latbench report") -> str:
    """The report page as an HTML string."""
    sections = [
        ("provenance", "Tables and provenance", _safe(lambda: section_provenance(found), "provenance")),
        ("ops", "Op latency per device (kernel × expand × layer shape)",
         _safe(lambda: section_op_heatmaps(found), "op heatmaps")),
        ("evals", "Predicted vs measured (±10 % band)", _safe(lambda: section_evals(found), "evaluations")),
        ("correlation", "Cross-device rank correlation (our devices)",
         _safe(lambda: section_our_correlation(found, bootstrap), "correlation")),
        ("search", "Search trajectories", _safe(lambda: section_search(found), "search logs")),
    ]
    if include_help:
        sections.append(("ours", "Our devices vs published devices (NAS-Bench-201)",
                         _safe(lambda: section_ours_vs_published(found, help_path, bootstrap, adapt),
                               "our devices vs published")))
        sections.append(("help", "Published data: HELP NAS-Bench-201 latencies across devices",
                         _safe(lambda: section_help(help_path, bootstrap, adapt), "published HELP data")))
    if found.skipped:
        sections.append(("skipped", "Files skipped", "<ul>" + "".join(
            f"<li>{html.escape(s)}</li>" for s in found.skipped) + "</ul>"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    nav = "".join(f'<a href="#{sid}">{html.escape(h.split(" (")[0])}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{content}</section>' for sid, h, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>"
            f"<body><header><h1>{html.escape(title)}</h1><p>generated {now} · {html.escape(vers)}</p>"
            f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n")


def build_report(out: str | Path = "report.html", data_dir: str | Path | None = "data",
                 runs_dir: str | Path | None = "runs", include_help: bool = True,
                 help_path: str | Path | None = None, bootstrap: int = 100, adapt: bool = True) -> Path:
    """Scan ``data_dir`` and ``runs_dir``, render the report and write it to ``out``."""
    for d, flag in ((data_dir, "--data"), (runs_dir, "--runs")):
        if d is not None and Path(d).exists() and not Path(d).is_dir():
            raise ReportError(f"{flag} {d} is a file; give a directory")
    found = scan(data_dir, runs_dir)
    page = render(found, Path(help_path) if help_path else None, include_help, bootstrap, adapt)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(out, out.suffix + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror or e}") from None
    return out
