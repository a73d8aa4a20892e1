"""The HTML report: built from tables, evaluations, search logs and the published sample, then
rendered in headless Chromium (Debian ``chromium``) to check it really draws."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latbench.cli import main
from latbench.features import op_features
from latbench.paths import SHARED_ENV
from latbench.space import Space

SAMPLE = Path(__file__).parent / "data" / "help_nb201_sample.csv"


def _write_tables(root: Path) -> None:
    """Two devices' op and arch tables in our layout, a predictor evaluation and a search log.

    Latencies are an analytic FLOPs/bytes model with noise: the report only needs plausible
    numbers in the real file layout, not a measurement.
    """
    rng = np.random.default_rng(0)
    space = Space()
    archs = [space.sample(i) for i in range(25)]
    for dev, speed, noise in (("local-cpu", 1.0, 0.05), ("rpi4-qemu", 6.0, 0.2)):
        d = root / "data" / dev
        d.mkdir(parents=True)
        rows = []
        for op in space.distinct_ops():
            f = op_features(op)
            rows.append({"key": op.key, "kind": op.kind, "device": dev, "backend": "tvm", "status": "ok",
                         "median_ms": speed * (f["flops"] / 2e9 + f["act_bytes"] / 4e9) * np.exp(rng.normal(0, noise)),
                         "target": json.dumps({"kind": "llvm", "mtriple": "x86_64"}), "num_threads": 1,
                         "versions": json.dumps({"apache-tvm": "0.27.0.post1", "python": "3.11"}),
                         "device_facts": json.dumps({"cpu_model": f"{dev} cpu", "cpu_count": 4}),
                         "timestamp": "2026-11-23T12:00:00+00:00"})
        rows[3].update(status="error", median_ms=None)
        pd.DataFrame(rows).to_parquet(d / "ops-tvm.parquet", index=False)
        ms = [speed * sum(op_features(o)["flops"] for o in a.op_specs) / 2e9 * np.exp(rng.normal(0, noise))
              for a in archs]
        pd.DataFrame({"key": [a.key for a in archs], "kind": "arch", "arch": [a.to_json() for a in archs],
                      "device": dev, "backend": "tvm", "status": "ok", "median_ms": ms}
                     ).to_parquet(d / "archs-tvm.parquet", index=False)
        (d / "eval").mkdir()
        pd.DataFrame({"key": [a.key for a in archs], "measured_ms": ms,
                      "predicted_ms": np.array(ms) * np.exp(rng.normal(0, 0.08, len(ms)))}
                     ).to_csv(d / "eval" / "lut-eval.csv", index=False)
        (d / "eval" / "lut-eval.json").write_text(json.dumps({"device": dev, "metrics": {"n": 25, "mape_pct": 6.0}}))
    # NAS-Bench-201 networks "measured" on local-cpu (latencies: the published raspi4 ones, scaled, noised)
    nb = pd.read_csv(SAMPLE).iloc[:40]
    d = root / "data" / "local-cpu-nb201"
    d.mkdir(parents=True)
    pd.DataFrame({"key": nb["arch_str"], "kind": "arch", "space": "nasbench201", "arch_str": nb["arch_str"],
                  "arch_index": nb["arch_index"], "device": "local-cpu", "backend": "tvm", "status": "ok",
                  "median_ms": nb["raspi4"] * 0.1 * np.exp(rng.normal(0, 0.05, len(nb)))}
                 ).to_parquet(d / "archs-tvm.parquet", index=False)
    run = root / "runs" / "search-r224"
    run.mkdir(parents=True)
    e = np.arange(15)
    # Columns as search/trainer.py writes them: text columns (phase, arch) and empty ones are skipped.
    pd.DataFrame({"epoch": e, "phase": np.where(e < 5, "warmup", "search"),
                  "train_acc": 0.3 + 0.4 * (1 - np.exp(-e / 5)), "val_acc": 0.25 + 0.4 * (1 - np.exp(-e / 5)),
                  "expected_latency_ms": 30 * np.exp(-e / 8) + 12, "alpha_entropy": 1.9 * np.exp(-e / 6),
                  "derived_latency_ms": 25 * np.exp(-e / 8) + 11,
                  "reward": np.nan, "arch": '{"ops": ["3x3_MBConv1"]}'}
                 ).to_csv(run / "log.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"predicted_latency_ms": 17.2, "val_acc": 0.62}))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    _write_tables(root)
    shared = root / "shared" / "data" / "help-nasbench201"
    shared.mkdir(parents=True)
    with gzip.open(shared / "latency_ms.csv.gz", "wb") as f:
        f.write(SAMPLE.read_bytes())
    old = os.environ.get(SHARED_ENV)
    os.environ[SHARED_ENV] = str(root / "shared")  # the one setting that moves the published data
    try:
        assert main(["report", "--data", str(root / "data"), "--runs", str(root / "runs"),
                     "--out", str(root / "report.html"), "--bootstrap", "20"]) == 0
    finally:
        if old is None:
            del os.environ[SHARED_ENV]
        else:
            os.environ[SHARED_ENV] = old
    return root / "report.html"


def test_report_is_self_contained_with_every_section(report):
    page = report.read_text()
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)  # nothing loaded from outside
    assert sum("MBConv median latency" in a for a in imgs) == 2      # op heatmap per device
    assert sum("predicted vs measured" in a for a in imgs) == 2
    assert any("op latencies between our devices" in a for a in imgs)
    assert any("architecture latencies between our devices" in a for a in imgs)
    assert any("search run search-r224/log.csv" in a for a in imgs)
    per_epoch = page.split("α entropy (nats, mean over layers)")[1].split("</table>")[0]
    assert "derived_latency_ms" in per_epoch and "alpha_entropy" in per_epoch and per_epoch.count("<tr") == 16
    assert any("HELP NAS-Bench-201: Spearman" in a for a in imgs)
    assert any(a.startswith("Adapting gold_6226 → raspi4") for a in imgs)
    assert any(a.startswith("Our devices (red) among the HELP devices") for a in imgs)
    assert any(a.startswith("Adapting our local-cpu to raspi4, gold_6226") for a in imgs)
    ours = page.split('id="ours"')[1].split("</section>")[0]
    assert ">raspi4<" in ours and "linear map" in ours
    for text in ("0.27.0.post1", "rpi4-qemu cpu", "300 NAS-Bench-201 architectures", "MIT licence",
                 "best proxy", "xgboost from scratch", "predicted_latency_ms"):
        assert text in page, text
    assert 'class="note"' not in page.split('id="evals"')[0]  # provenance and heatmaps have data


def test_report_empty_dirs_say_what_to_run(tmp_path, capsys):
    code = main(["report", "--data", str(tmp_path / "none"), "--runs", str(tmp_path / "none"),
                 "--no-published", "--out", str(tmp_path / "r.html")])
    assert code == 0 and "report:" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert "latbench measure" in page and "latbench evaluate" in page and "No search logs" in page
    (tmp_path / "file").write_text("x")
    assert main(["report", "--data", str(tmp_path / "file"), "--out", str(tmp_path / "r2.html")]) == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1400,5200", report.resolve().as_uri()]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (5200, 1400)
    background = np.array([246, 247, 249])  # the page's background colour (#f6f7f9)
    non_bg = np.any(np.abs(img.astype(int) - background) > 8, axis=2).mean()
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    # Embedded figures (heatmaps, scatter plots) bring thousands of colours over most of the page;
    # a page whose images failed to decode would be text on white/grey.
    assert non_bg > 0.5, non_bg
    assert colours > 2000, colours
    # The magma op heatmap's dark cells must be on screen (first figure, top of the page).
    dark = np.all(img[:2600] < 40, axis=2).mean()
    assert dark > 0.002, dark
    Image.fromarray(img).save(tmp_path / "check.png")
