"""Cross-device rank correlation, loaders, proxy adaptation and their CLIs.

Real data: ``tests/data/help_nb201_sample.csv`` is 300 rows of the published HELP NAS-Bench-201
latencies (MIT; see ``help_nb201_sample.NOTICE``).
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from latbench import paths
from latbench.adapt import (AdaptError, ProxyAdapter, adaptation_curve, check_k, data_from_wide, load_adapter,
                            save_adapter, summarize)
from latbench.analysis import (AnalysisError, bootstrap_spearman, load_matrix, rank_correlations,
                               wide_to_matrix)
from latbench.cli import main
from latbench.nasbench201 import NB201_FEATURE_NAMES, nb201_features, parse_nb201

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "help_nb201_sample.csv"
DEVICES = ["pixel3", "raspi4", "gold_6226", "titan_rtx_1", "eyeriss", "samsung_a50"]


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(SAMPLE)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- paths ------------------------------------------------------------------------------------------
def test_shared_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.SHARED_ENV, raising=False)
    assert paths.shared_dir() == (paths.project_root() / ".." / "shared").resolve()
    monkeypatch.setenv(paths.SHARED_ENV, str(tmp_path))
    assert paths.shared_dir() == tmp_path.resolve()
    assert paths.help_nb201_csv() == tmp_path.resolve() / "data" / "help-nasbench201" / "latency_ms.csv.gz"


def test_sample_has_licence_notice():
    notice = (DATA / "help_nb201_sample.NOTICE").read_text()
    assert "MIT License" in notice and "HayeonLee/HELP" in notice


# -- correlations -----------------------------------------------------------------------------------
def test_fast_bootstrap_spearman_is_exact_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 15, 200).astype(float)  # many ties, like the integer-ms phones
    y = x + rng.integers(0, 6, 200)
    idx = rng.integers(0, 200, size=(12, 200))
    fast = bootstrap_spearman(x, y, idx)
    slow = [stats.spearmanr(x[r], y[r]).statistic for r in idx]
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_correlations_on_published_sample(sample):
    mat = load_matrix([SAMPLE], id_column="arch_index")
    assert list(mat.columns) == DEVICES  # arch_str (text) is not a device
    res = rank_correlations(mat, bootstrap=60, seed=3)
    for a, b in (("pixel3", "raspi4"), ("gold_6226", "eyeriss")):
        rho = stats.spearmanr(sample[a], sample[b]).statistic
        tau = stats.kendalltau(sample[a], sample[b]).statistic
        assert res.spearman.loc[a, b] == pytest.approx(rho) == res.spearman.loc[b, a]
        assert res.kendall.loc[a, b] == pytest.approx(tau)
        lo, hi = res.spearman_ci[0].loc[a, b], res.spearman_ci[1].loc[a, b]
        assert lo < rho < hi and hi - lo < 0.3
        assert res.kendall_ci[0].loc[a, b] < tau < res.kendall_ci[1].loc[a, b]
        assert res.n.loc[a, b] == 300 and res.dropped.loc[a, b] == 0
    # The published finding: the two mobile CPUs rank cells almost identically, unlike GPU vs ASIC.
    assert res.spearman.loc["pixel3", "raspi4"] > 0.95 > 0.5 > res.spearman.loc["titan_rtx_1", "eyeriss"]
    assert np.allclose(np.diag(res.spearman), 1.0)


def test_missing_nan_negative_left_out_pair_by_pair(tmp_path, sample):
    df = sample.copy()
    df.loc[:9, "raspi4"] = -1.0          # published "not measured"
    df.loc[10:14, "raspi4"] = np.nan
    df.loc[20:22, "pixel3"] = 0.0         # zero latency is not a measurement either
    p = tmp_path / "holes.csv"
    df.to_csv(p, index=False)
    res = rank_correlations(load_matrix([p], id_column="arch_index"), bootstrap=0)
    assert res.n.loc["raspi4", "gold_6226"] == 285 and res.dropped.loc["raspi4", "gold_6226"] == 15
    assert res.n.loc["pixel3", "raspi4"] == 282
    assert res.n.loc["pixel3", "gold_6226"] == 297  # raspi4's holes do not touch other pairs
    assert res.invalid["raspi4"] == {"missing": 5, "nonpositive": 10, "valid": 285}
    keep = (df["raspi4"] > 0) & (df["pixel3"] > 0)
    want = stats.spearmanr(df.loc[keep, "pixel3"], df.loc[keep, "raspi4"]).statistic
    assert res.spearman.loc["pixel3", "raspi4"] == pytest.approx(want)


def _long_table(path: Path, device: str, keys: list[str], ms: np.ndarray, backend: str = "tvm") -> Path:
    df = pd.DataFrame({"key": keys, "kind": "expanded_conv", "device": device, "backend": backend,
                       "status": "ok", "error": None, "median_ms": ms})
    df.loc[0, "status"] = "error"  # a failed measurement counts as missing
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def test_long_tables_join_on_key(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"op{i}" for i in range(40)]
    base = rng.uniform(1, 10, 40)
    a = _long_table(tmp_path / "a" / "ops-tvm.parquet", "cpu-a", keys, base)
    b = _long_table(tmp_path / "b" / "ops-tvm.parquet", "cpu-b", keys[5:], base[5:] * 3)
    c = _long_table(tmp_path / "b" / "ops-torch.parquet", "cpu-b", keys, base ** 1.5, backend="torch")
    mat = load_matrix([a, b, c])
    # Files are read one by one: the second cpu-b column is named after its file.
    assert list(mat.columns) == ["cpu-a", "cpu-b", "cpu-b@ops-torch"]
    res = rank_correlations(mat, bootstrap=20)
    assert res.n.loc["cpu-a", "cpu-b"] == 34  # 35 shared keys, one with status error
    assert res.spearman.loc["cpu-a", "cpu-b"] == pytest.approx(1.0)
    assert res.n.loc["cpu-a", "cpu-b@ops-torch"] == 39
    # Both backends of one device in one call are told apart.
    both = load_matrix([tmp_path / "b"])
    assert sorted(both.columns) == ["cpu-b/torch", "cpu-b/tvm"]
    # Op and architecture rows are never ranked together.
    arch = pd.DataFrame({"key": ["r224-a", "r224-b", "r224-c"], "kind": "arch", "device": "cpu-b",
                         "backend": "tvm", "status": "ok", "median_ms": [5.0, 6.0, 7.0]})
    arch.to_parquet(tmp_path / "b" / "archs-tvm.parquet", index=False)
    with pytest.raises(AnalysisError, match="mixes op and architecture rows; pass --kind"):
        load_matrix([tmp_path / "b"])
    assert sorted(load_matrix([tmp_path / "b"], kind="ops").columns) == ["cpu-b/torch", "cpu-b/tvm"]
    assert len(load_matrix([tmp_path / "b"], kind="archs")) == 3
    # A campaign still running has only a journal: it is read too.
    j = tmp_path / "c" / "cpu-c" / "ops-tvm.journal.jsonl"
    j.parent.mkdir(parents=True)
    j.write_text("".join(json.dumps({"key": k, "kind": "expanded_conv", "device": "cpu-c", "backend": "tvm",
                                     "status": "ok", "median_ms": float(v)}) + "\n"
                         for k, v in zip(keys, base * 2)))
    res = rank_correlations(load_matrix([a, tmp_path / "c"]), bootstrap=0)
    assert res.n.loc["cpu-a", "cpu-c"] == 39 and res.spearman.loc["cpu-a", "cpu-c"] == pytest.approx(1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no tables"):
        load_matrix([tmp_path / "empty"])


def test_json_layouts_match_csv(tmp_path, sample):
    csv = wide_to_matrix(sample, "arch_index")
    by_device = {d: {str(i): v for i, v in zip(sample["arch_index"], sample[d])} for d in DEVICES}
    (tmp_path / "by_device.json").write_text(json.dumps(by_device))
    (tmp_path / "records.json").write_text(sample.to_json(orient="records"))
    (tmp_path / "lists.json").write_text(json.dumps({d: sample[d].tolist() for d in DEVICES}))
    for name, idc in (("by_device.json", None), ("records.json", "arch_index")):
        m = load_matrix([tmp_path / name], id_column=idc)
        pd.testing.assert_frame_equal(m.loc[csv.index, DEVICES], csv[DEVICES], check_names=False)
    lists = load_matrix([tmp_path / "lists.json"])
    assert list(lists.index[:3]) == ["0", "1", "2"]
    np.testing.assert_allclose(lists["raspi4"].to_numpy(), sample["raspi4"].to_numpy())


def test_bad_input_one_clear_error(tmp_path, sample):
    with pytest.raises(AnalysisError, match="at least two devices"):
        rank_correlations(wide_to_matrix(sample[["arch_index", "raspi4"]], "arch_index"))
    a = sample[["arch_index", "pixel3"]].iloc[:100]
    b = sample[["arch_index", "raspi4"]].iloc[100:]
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(AnalysisError, match="share no valid entries"):
        rank_correlations(load_matrix([tmp_path / "a.csv", tmp_path / "b.csv"], id_column="arch_index"))
    with pytest.raises(AnalysisError, match="device column 'jetson' missing"):
        load_matrix([SAMPLE], devices=["raspi4", "jetson"])
    with pytest.raises(AnalysisError, match="no id column 'arch_id'"):
        load_matrix([SAMPLE], id_column="arch_id")
    with pytest.raises(AnalysisError, match="does not exist"):
        load_matrix([tmp_path / "nope.csv"])


def test_monotonicity_cli_json_and_heatmap(capsys, tmp_path):
    png = tmp_path / "rho.png"
    code, out, _ = run_cli(capsys, "monotonicity", str(SAMPLE), "--id-column", "arch_index", "--json",
                           "--bootstrap", "30", "--heatmap", str(png), "--devices", "pixel3,raspi4,eyeriss")
    assert code == 0
    d = json.loads(out)
    assert set(d["spearman"]) == {"pixel3", "raspi4", "eyeriss"}
    assert d["spearman"]["pixel3"]["raspi4"] == d["spearman"]["raspi4"]["pixel3"] > 0.95
    assert d["kendall"]["pixel3"]["raspi4"] > 0.8
    assert d["n"]["pixel3"]["eyeriss"] == 300
    lo, hi = d["spearman_ci"]["pixel3"]["raspi4"]
    assert lo < d["spearman"]["pixel3"]["raspi4"] < hi
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--devices", "raspi4"], "at least two devices"),
    (["--devices", "raspi4,jetson"], "device column 'jetson' missing"),
    (["--id-column", "nope"], "no id column 'nope'"),
])
def test_monotonicity_cli_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, "monotonicity", str(SAMPLE), "--bootstrap", "0", *argv)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# -- adaptation -------------------------------------------------------------------------------------
def test_nb201_features():
    cell = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
    assert parse_nb201(cell) == ["nor_conv_3x3", "none", "none", "skip_connect", "none", "avg_pool_3x3"]
    f = dict(zip(NB201_FEATURE_NAMES, nb201_features(cell)))
    assert f["count_none"] == 3 and f["count_nor_conv_3x3"] == 1
    # Node 2 gets no input, so its avg_pool and node 1's conv are dead; only the skip 0→3 lives.
    assert f["live_skip_connect"] == 1 and f["live_nor_conv_3x3"] == 0 and f["live_avg_pool_3x3"] == 0
    assert f["connected"] == 1.0 and f["e10_nor_conv_3x3"] == 1.0 and f["e32_avg_pool_3x3"] == 1.0
    cut = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert dict(zip(f, nb201_features(cut)))["connected"] == 0.0
    with pytest.raises(AdaptError, match="not a NAS-Bench-201 cell"):
        parse_nb201("|conv~0|+|conv~0|")
    with pytest.raises(AdaptError, match="unknown NAS-Bench-201 op 'conv5x5'"):
        parse_nb201("|conv5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|")


@pytest.fixture(scope="module")
def gold_to_raspi(sample):
    mat = wide_to_matrix(sample.drop(columns="arch_index"), "arch_str")
    return data_from_wide(mat, "gold_6226", "raspi4")


def test_adapter_fits_scale_and_roundtrips(tmp_path, gold_to_raspi):
    d = gold_to_raspi
    assert d.features is not None and d.features.shape == (300, 41)
    tr, te = np.arange(20), np.arange(20, 300)
    ad = ProxyAdapter("linear", "xgboost").fit(d.proxy[tr], d.target[tr], d.features[tr])
    within = lambda p: np.mean(np.abs(p - d.target[te]) <= 0.1 * d.target[te])  # noqa: E731
    assert within(ad.predict(d.proxy[te], d.features[te])) > within(d.proxy[te]) + 0.1
    # The map alone is monotone: it keeps the proxy's ranking exactly.
    mapped = ad.predict_mapped(d.proxy[te])
    assert stats.spearmanr(mapped, d.proxy[te]).statistic == pytest.approx(1.0)
    path = save_adapter(tmp_path / "ad.pkl", ad, {"proxy": "gold_6226", "target": "raspi4"})
    back, meta = load_adapter(path)
    assert meta == {"proxy": "gold_6226", "target": "raspi4"}
    np.testing.assert_allclose(back.predict(d.proxy[te], d.features[te]), ad.predict(d.proxy[te], d.features[te]),
                               rtol=1e-6)
    auto = ProxyAdapter("linear", "auto").fit(d.proxy[tr], d.target[tr], d.features[tr])
    assert isinstance(auto.use_residual_, bool)  # decided by 5-fold CV on the 20 samples
    back, _ = load_adapter(save_adapter(tmp_path / "auto.pkl", auto))
    assert back.use_residual_ == auto.use_residual_
    np.testing.assert_allclose(back.predict(d.proxy[te], d.features[te]), auto.predict(d.proxy[te], d.features[te]),
                               rtol=1e-6)
    iso = ProxyAdapter("isotonic", "none").fit(d.proxy[tr], d.target[tr])
    p = iso.predict(d.proxy[te])
    assert np.all(np.diff(p[np.argsort(d.proxy[te])]) >= 0)  # monotone, extrapolated beyond the samples
    assert stats.spearmanr(p, d.proxy[te]).statistic == pytest.approx(1.0)


def test_adapter_file_refuses_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"format": "latbench.adapted-proxy", "version": 1, "state": Boom()}))
    with pytest.raises(AdaptError, match="refusing to load builtins.print"):
        load_adapter(bad)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(AdaptError, match="not an adapter file"):
        load_adapter(tmp_path / "junk.pkl")


def test_adaptation_curve_methods(gold_to_raspi):
    curve = adaptation_curve(gold_to_raspi, (5, 10, 20, 50), repeats=2)
    s = summarize(curve)
    assert set(s["k"]) == {5, 10, 20, 50}
    methods = set(s["method"])
    assert methods == {"proxy (raw)", "proxy + linear map", "proxy + linear map + xgb residual",
                       "xgboost from scratch"}
    by = s.set_index(["k", "method"])
    raw = by.loc[(50, "proxy (raw)"), "spearman"]
    assert by.loc[(50, "proxy + linear map"), "spearman"] == pytest.approx(raw)
    assert by.loc[(50, "proxy + linear map"), "acc10"] > by.loc[(50, "proxy (raw)"), "acc10"]
    assert (s["n_eval"] == 300 - s["k"]).all()
    with pytest.raises(AdaptError, match="k=301 is larger than the 300 entries"):
        check_k(301, gold_to_raspi)


def test_adapt_cli_wide(capsys, tmp_path):
    out = tmp_path / "adapted.pkl"
    code, stdout, _ = run_cli(capsys, "adapt", "--proxy-column", "pixel3", "--target", "raspi4", "--samples",
                              str(SAMPLE), "--k", "10", "--out", str(out), "--json", "--eval-k", "5,20",
                              "--repeats", "2")
    assert code == 0
    d = json.loads(stdout)
    assert d["target"] == "raspi4" and d["feature_kind"] == "nb201" and d["n_available"] == 300
    assert {r["k"] for r in d["curve"]} == {5, 20}
    ad, meta = load_adapter(out)
    assert meta["k"] == 10 and len(meta["sample_ids"]) == 10 and meta["proxy"] == "pixel3"
    assert ad.residual == "xgboost" and ad.n_samples_ == 10


@pytest.mark.parametrize("argv, message", [
    (["--proxy-column", "pixel3", "--target", "raspi4", "--k", "500"], "k=500 is larger than the 300 entries"),
    (["--proxy-column", "pixel3", "--target", "jetson"], "target device column 'jetson' missing"),
    (["--proxy-column", "pixel3"], "choose the target with --target"),
])
def test_adapt_cli_errors(capsys, argv, message):
    code, _, err = run_cli(capsys, "adapt", "--samples", str(SAMPLE), "--eval-k", "", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_adapt_cli_with_predictor_file(capsys, tmp_path):
    """The proxy is a real LUT predictor file of our space; the target an arch table of another device."""
    from latbench.features import op_features
    from latbench.space import Space
    from predictors import LUTPredictor, save_predictor

    space = Space()
    ops = space.distinct_ops()
    proxy_ms = [op_features(o)["flops"] / 1e9 + op_features(o)["act_bytes"] / 2e9 for o in ops]
    save_predictor(LUTPredictor().fit(ops, proxy_ms), tmp_path / "proxy.pkl")
    rng = np.random.default_rng(0)
    archs = [space.sample(i) for i in range(40)]
    # Target: memory-bound device (ranks by activation traffic more than FLOPs), 3x slower.
    tgt = [3 * sum(op_features(o)["act_bytes"] / 1e9 + op_features(o)["flops"] / 5e9 for o in a.op_specs)
           * np.exp(rng.normal(0, 0.03)) for a in archs]
    table = pd.DataFrame({"key": [a.key for a in archs], "kind": "arch", "arch": [a.to_json() for a in archs],
                          "device": "board", "backend": "tvm", "status": "ok", "median_ms": tgt})
    table.to_parquet(tmp_path / "archs-tvm.parquet", index=False)
    code, stdout, _ = run_cli(capsys, "adapt", "--proxy", str(tmp_path / "proxy.pkl"), "--samples",
                              str(tmp_path / "archs-tvm.parquet"), "--k", "10", "--eval-k", "10",
                              "--repeats", "2", "--json", "--out", str(tmp_path / "ad.pkl"))
    assert code == 0
    d = json.loads(stdout)
    assert d["proxy_kind"] == "predictor" and d["target"] == "board" and d["feature_kind"] == "arch"
    curve = {r["method"]: r for r in d["curve"]}
    assert curve["proxy (raw)"]["acc10"] < 0.2 < curve["proxy + linear map"]["acc10"]
    assert load_adapter(tmp_path / "ad.pkl")[1]["target"] == "board"
    from latbench.adapt import load_adapted_predictor

    adapted = load_adapted_predictor(tmp_path / "ad.pkl")
    held = [space.sample(1000 + i) for i in range(30)]
    truth = np.array([3 * sum(op_features(o)["act_bytes"] / 1e9 + op_features(o)["flops"] / 5e9
                              for o in a.op_specs) for a in held])
    err = np.abs(adapted.predict(held) - truth) / truth
    raw = np.abs(adapted.proxy.predict(held) - truth) / truth
    assert np.median(err) < 0.15 < np.median(raw)
    assert isinstance(adapted.predict(held[0].to_json()), float)


def test_latbench_entry_point_runs_monotonicity():
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("latbench")
    r = subprocess.run([str(exe), "monotonicity", str(SAMPLE), "--bootstrap", "0", "--devices", "pixel3,raspi4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pixel3 vs raspi4: rho=0.968" in r.stdout


def test_adapt_cli_between_two_of_our_devices(capsys, tmp_path):
    """Proxy and target are both our arch tables (a directory of them): features from the arch JSON."""
    from latbench.features import op_features
    from latbench.space import Space

    space = Space()
    archs = [space.sample(i) for i in range(30)]
    rng = np.random.default_rng(5)
    for dev, w_flops, w_bytes in (("fast-cpu", 1 / 2e9, 1 / 8e9), ("board", 1 / 4e8, 1 / 2e8)):
        ms = [sum(op_features(o)["flops"] * w_flops + op_features(o)["act_bytes"] * w_bytes for o in a.op_specs)
              * np.exp(rng.normal(0, 0.02)) for a in archs]
        d = tmp_path / "data" / dev
        d.mkdir(parents=True)
        pd.DataFrame({"key": [a.key for a in archs], "kind": "arch", "arch": [a.to_json() for a in archs],
                      "device": dev, "backend": "tvm", "status": "ok", "median_ms": ms}
                     ).to_parquet(d / "archs-tvm.parquet", index=False)
    code, stdout, err = run_cli(capsys, "adapt", "--proxy-column", "fast-cpu", "--target", "board", "--samples",
                                str(tmp_path / "data"), "--k", "5", "--eval-k", "5,10", "--repeats", "2", "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["feature_kind"] == "arch" and d["n_available"] == 30
    curve = {(r["k"], r["method"]): r for r in d["curve"]}
    assert curve[(10, "proxy + linear map")]["acc10"] > curve[(10, "proxy (raw)")]["acc10"]


# -- automatic proxy selection ---------------------------------------------------------------------
def test_select_sources_weights_the_source_that_predicts_the_samples():
    from latbench.adapt import select_sources

    rng = np.random.default_rng(0)
    t = np.exp(rng.normal(2, 0.5, 12))
    good = t ** 0.8 * 3 * np.exp(rng.normal(0, 0.01, 12))   # a power law of the target: ranks it right
    noisy = t * np.exp(rng.normal(0, 0.3, 12))
    backwards = 1 / t                                         # ranks the samples backwards: not eligible
    hole = good.copy()
    hole[3] = -1                                              # a 'not measured' marker: not eligible
    S = np.column_stack([noisy, good, backwards, hole])
    mix = select_sources(S, t, ["noisy", "good", "backwards", "hole"])
    w = dict(zip(mix.sources, mix.weights))
    assert w["good"] > 0.9 and w["backwards"] == 0 and w["hole"] == 0 and sum(w.values()) == pytest.approx(1)
    assert mix.ranked()[0][0] == "good" and mix.describe().startswith("good ")
    best = select_sources(S, t, ["noisy", "good", "backwards", "hole"], selection="best")
    assert list(best.weights) == [0, 1, 0, 0]
    # the mix predicts the target from the good source's map; an entry missing everywhere is NaN
    pred = mix.predict(np.array([[5.0, 3 * 10 ** 0.8, 0.1, -1], [np.nan, np.nan, np.nan, np.nan]]))
    assert pred[0] == pytest.approx(10, rel=0.05) and np.isnan(pred[1])
    again = type(mix).from_state(json.loads(json.dumps(mix.get_state())))
    np.testing.assert_allclose(again.weights, mix.weights)
    with pytest.raises(AdaptError, match="at least 3 target samples"):
        select_sources(S[:2], t[:2], ["noisy", "good", "backwards", "hole"])
    with pytest.raises(AdaptError, match="no source device ranks"):
        select_sources(S[:, 2:3], t, ["backwards"])


def test_selection_beats_a_fixed_proxy_on_published_sample(sample):
    """On real published latencies: raspi4's proxy chosen from 10 samples beats gold_6226, the fixed
    proxy; the target column is never a source."""
    from latbench.adapt import selection_curve

    mat = wide_to_matrix(sample, "arch_str")
    curve = selection_curve(mat, "raspi4", ks=(10,), repeats=4, fixed_proxy="gold_6226")
    by = curve.groupby("method")["spearman"].mean()
    assert by["auto (soft) + linear map"] > 0.93 > 0.8 > by["fixed gold_6226 + linear map"]
    assert not curve["chosen"].str.contains("raspi4").any()
    assert (curve["n_eval"] == 290).all() and set(curve["repeat"]) == {0, 1, 2, 3}


def test_adapt_cli_auto_and_sources(capsys, tmp_path, sample):
    code, stdout, err = run_cli(capsys, "adapt", "--proxy-column", "auto", "--target", "raspi4", "--samples",
                                str(SAMPLE), "--k", "10", "--eval-k", "10", "--repeats", "2", "--residual", "none",
                                "--compare-proxy", "gold_6226", "--json", "--out", str(tmp_path / "a.pkl"))
    assert code == 0, err
    d = json.loads(stdout)
    assert d["proxy_kind"] == "auto" and d["chosen"][0][0] == "pixel3"
    assert "raspi4" not in d["sources"]["sources"]
    curve = {r["method"]: r["spearman"] for r in d["curve"]}
    assert curve["auto (soft) + linear map"] > curve["fixed gold_6226 + linear map"]
    assert load_adapter(tmp_path / "a.pkl")[1]["sources"]["selection"] == "soft"
    # our measurements of one device + a published table of others, joined on the cell string
    sample[["arch_str", "raspi4"]].rename(columns={"raspi4": "my-board"}).to_csv(tmp_path / "mine.csv", index=False)
    sample.drop(columns=["raspi4"]).to_csv(tmp_path / "published.csv", index=False)
    code, stdout, err = run_cli(capsys, "adapt", "--sources", str(tmp_path / "published.csv"), "--samples",
                                str(tmp_path / "mine.csv"), "--k", "10", "--eval-k", "", "--residual", "none")
    assert code == 0, err
    assert "target: my-board  sources: 5 devices" in stdout and "pixel3" in stdout
    code, _, err = run_cli(capsys, "adapt", "--proxy-column", "auto", "--samples", str(SAMPLE))
    assert code == 2 and "name the target with --target" in err and err.count("\n") == 1


# -- our measured NAS-Bench-201 tables against published ones ---------------------------------------
def _our_nb201_table(sample: pd.DataFrame, n: int = 120) -> pd.DataFrame:
    """A long table as `latbench measure --space nasbench201` writes it (latencies: raspi4's, noised)."""
    rng = np.random.default_rng(2)
    part = sample.iloc[:n]
    arch = [json.dumps({"space": "nasbench201", "arch_str": a, "arch_index": int(i)})
            for a, i in zip(part["arch_str"], part["arch_index"])]
    return pd.DataFrame({"key": part["arch_str"], "kind": "arch", "space": "nasbench201", "arch": arch,
                         "arch_str": part["arch_str"],
                         "arch_index": part["arch_index"], "device": "local-cpu", "backend": "tvm", "status": "ok",
                         "median_ms": part["raspi4"].to_numpy() * 0.2 * np.exp(rng.normal(0, 0.05, n))})


def test_our_arch_table_joins_published_table(capsys, tmp_path, sample):
    d = tmp_path / "runs" / "local-cpu"
    d.mkdir(parents=True)
    _our_nb201_table(sample).to_parquet(d / "archs-tvm.parquet", index=False)
    mat = load_matrix([d / "archs-tvm.parquet", SAMPLE])
    assert mat.index[0].startswith("|") and "local-cpu" in mat.columns and "raspi4" in mat.columns
    # published table with only the official index: joined through the index ↔ string order
    sample.drop(columns=["arch_str"]).to_csv(tmp_path / "by_index.csv", index=False)
    by_index = load_matrix([tmp_path / "runs", tmp_path / "by_index.csv"])
    res = rank_correlations(by_index, bootstrap=0)
    assert res.n.loc["local-cpu", "raspi4"] == 120 and res.spearman.loc["local-cpu", "raspi4"] > 0.9
    by_id = load_matrix([tmp_path / "runs", SAMPLE], id_column="arch_index")
    assert str(sample["arch_index"][0]) in by_id.index and len(by_id.dropna()) == 120
    code, out, err = run_cli(capsys, "monotonicity", str(d / "archs-tvm.parquet"), str(SAMPLE), "--bootstrap", "20",
                             "--devices", "local-cpu,raspi4,gold_6226")
    assert code == 0, err
    assert "local-cpu vs raspi4: rho=" in out and "n=120" in out
    # and the proxy for our device chosen among the published ones from 10 of its samples
    code, out, err = run_cli(capsys, "adapt", "--sources", str(SAMPLE), "--samples", str(d / "archs-tvm.parquet"),
                             "--k", "10", "--eval-k", "10", "--repeats", "2", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["target"] == "local-cpu" and res["feature_kind"] == "nb201" and res["chosen"][0][0] == "raspi4"


def test_tables_of_two_spaces_are_refused(capsys, tmp_path, sample):
    from latbench.space import Space

    archs = [Space().sample(i) for i in range(5)]
    pd.DataFrame({"key": [a.key for a in archs], "kind": "arch", "arch": [a.to_json() for a in archs],
                  "device": "local-cpu", "backend": "tvm", "status": "ok", "median_ms": 1.0 + np.arange(5)}
                 ).to_parquet(tmp_path / "proxyless.parquet", index=False)
    code, _, err = run_cli(capsys, "monotonicity", str(tmp_path / "proxyless.parquet"), str(SAMPLE))
    assert code == 2 and err.count("\n") == 1
    assert "different search spaces" in err and "proxylessnas" in err and "nasbench201" in err
    both = pd.concat([_our_nb201_table(sample, 5), pd.read_parquet(tmp_path / "proxyless.parquet").assign(
        space="proxylessnas")])
    both.to_parquet(tmp_path / "mixed.parquet", index=False)
    code, _, err = run_cli(capsys, "monotonicity", str(tmp_path / "mixed.parquet"), str(SAMPLE))
    assert code == 2 and "mixes architectures of spaces nasbench201, proxylessnas" in err and err.count("\n") == 1
