"""Latency predictors on real measured tables (TVM on this CPU), real xgboost, real files."""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latbench.errors import ConfigError, LatbenchError
from latbench.ops import OpSpec
from latbench.space import ZERO, Arch, Space, distinct_ops
from predictors import (GBDTPredictor, LUTPredictor, MissingOpError, NotFittedError, PredictorFileError,
                        load_predictor, save_predictor)
from predictors.evaluate import accuracy_metrics, check_device, interleave, sample_archs, scatter_plot

ROOT = Path(__file__).resolve().parent.parent
SPACE = Space(resolution=32)
CHEAP = ("3x3_MBConv3", ZERO)  # archs of the tests choose from these, so their ops are all measured
SAMPLE_YAML = ROOT / "tests" / "data" / "proxylessnas_sample.yaml"


def cheap_arch(rng: random.Random) -> Arch:
    """A random arch of SPACE using only 3x3_MBConv1/3x3_MBConv3/zero (all measured in the fixture)."""
    ops = []
    for layer in SPACE.layers:
        options = [c for c in layer.candidates if c in CHEAP] or [layer.candidates[0]]
        ops.append(rng.choice(options))
    return SPACE.arch(ops)


def fixture_ops() -> list[OpSpec]:
    from latbench.sampling import sample_ops

    all_k3 = SPACE.arch([layer.candidates[0] for layer in SPACE.layers])  # 3x3_MBConv1 then 3x3_MBConv3
    ops = distinct_ops([all_k3, SPACE.smallest()])
    return ops + sample_ops(14, 7, resolutions=(32, 48, 64), depths=(1, 2, 3), exclude={o.key for o in ops})


@pytest.fixture(scope="session")
def measured(tmp_path_factory):
    """A small op table really measured on this CPU through latbench's campaign (TVM, local RPC).

    Timing is longer than conftest's fast device: on a shared 2-core machine, 5 short repeats of
    sub-millisecond ops are mostly noise, and a predictor cannot be judged on noise.
    """
    from conftest import write_device
    from latbench.campaign import measure_ops
    from latbench.tables import ok_rows, table_path

    device = write_device(tmp_path_factory.mktemp("devices"), "pred-cpu",
                          timing={"number": 1, "repeat": 10, "min_repeat_ms": 20, "warmup": 2, "op_timeout": 60,
                                  "rounds": 3, "max_visits": 4})
    out = tmp_path_factory.mktemp("tables")
    df = measure_ops(fixture_ops(), str(device), out)
    assert len(ok_rows(df)) == len(df), df[df["status"] != "ok"][["key", "error"]]
    return table_path(out, "pred-cpu", df["backend"].iloc[0], "ops")


@pytest.fixture(scope="session")
def lut(measured) -> LUTPredictor:
    return LUTPredictor().fit(measured, resolution=32)


@pytest.fixture(scope="session")
def gbdt(measured) -> GBDTPredictor:
    return GBDTPredictor(n_estimators=200).fit(measured, resolution=32)


# -- fitting on real tables ----------------------------------------------------------------------
def test_lut_sums_measured_ops(measured, lut):
    from latbench.tables import ok_rows, read_table

    table = ok_rows(read_table(measured)).set_index("key")["median_ms"]
    assert lut.device_ == "pred-cpu" and lut.deployment_space() == SPACE
    rng = random.Random(0)
    for _ in range(5):
        arch = cheap_arch(rng)
        expected = sum(float(table[o.key]) for o in arch.op_specs)
        assert lut.predict(arch) == pytest.approx(expected, rel=1e-12)
    assert lut.get_params() == {"stat": "median_ms", "fallback": None}


def test_unstable_rows_are_warned_about_once_per_table(measured, tmp_path, caplog):
    """Unstable rows are used but never silently; two predictors fitted on one table (the demo fits a LUT and
    an xgb) warn once."""
    df = pd.read_parquet(measured)
    df["unstable"] = False
    df.loc[df.index[:3], "unstable"] = True
    path = tmp_path / "ops-tvm.parquet"
    df.to_parquet(path)
    with caplog.at_level("WARNING"):
        LUTPredictor().fit(path, resolution=32)
        GBDTPredictor(n_estimators=20).fit(path, resolution=32)
    warnings = [r.getMessage() for r in caplog.records if "flagged unstable" in r.getMessage()]
    assert len(warnings) == 1 and f"3 of {len(df)} ops" in warnings[0], warnings


def test_gbdt_fits_real_table_and_predicts_unseen_ops(measured):
    from latbench.tables import ok_rows, read_table

    df = ok_rows(read_table(measured))
    mb = df[df["key"].str.startswith("expanded_conv")]
    held = mb.sample(6, random_state=0)
    train = df.drop(held.index)
    model = GBDTPredictor(n_estimators=200).fit(train, resolution=32)
    assert model.train_rmse_log_ < 0.2  # it learned the training ops
    pred = model.predict_ops(list(held["key"]))
    ratio = pred / held["median_ms"].to_numpy()
    # Ops never measured, learned from ~23 tiny noisy ops: each within a factor 2.5, typically within 50 %,
    # and bigger ops predicted slower on the whole.
    assert np.all((ratio > 0.4) & (ratio < 2.5)), dict(zip(held["key"], ratio))
    assert np.exp(np.median(np.abs(np.log(ratio)))) < 1.5, dict(zip(held["key"], ratio))
    from scipy.stats import spearmanr

    assert spearmanr(pred, held["median_ms"]).statistic > 0.5


def test_gbdt_predicts_ops_outside_the_table(gbdt):
    """A GBDT predicts every op of a space it never saw (other resolution), with positive, ordered values."""
    big = Space(resolution=64)
    lat = gbdt.layer_latencies(big)
    assert all(v > 0 for row in lat for c, v in row.items() if c != ZERO)
    small = gbdt.predict(big.smallest())
    large = gbdt.predict(big.largest())
    assert 0 < small < large


def test_layer_matrix_matches_per_op_predictions(gbdt, measured):
    with_fallback = LUTPredictor(fallback=GBDTPredictor(n_estimators=50)).fit(measured, resolution=32)
    with_fallback.fit_calibration([SPACE.smallest(), SPACE.largest()], [1.0, 9.0], mode="scale")
    for pred in (gbdt, with_fallback):
        space = SPACE
        lat = pred.layer_latencies(space)
        assert len(lat) == len(space.layers) == 22
        for layer, row in zip(space.layers, lat):
            assert list(row) == list(layer.candidates)
            for cand, v in row.items():
                op = layer.op(cand)
                assert v == (0.0 if op is None else pytest.approx(float(pred.predict_ops([op])[0]), rel=1e-12))
        stem, mix, logits = space.fixed_ops
        assert pred.fixed_latency(space) == pytest.approx(float(pred.predict_ops([stem, mix, logits]).sum()))
        rng = random.Random(1)
        for arch in (space.sample(rng) for _ in range(5)):
            from_matrix = pred.fixed_latency(space) + sum(row[c] for row, c in zip(lat, arch.ops))
            assert pred.predict(arch) == pytest.approx(from_matrix, rel=1e-9)


def test_lut_matrix_and_missing_ops(lut):
    with pytest.raises(MissingOpError, match=r"no latency for op expanded_conv-.*kernel:[57]"):
        lut.layer_latencies(SPACE)
    rng = random.Random(2)
    archs = [cheap_arch(rng) for _ in range(20)]
    batch = lut.predict(archs)
    assert batch.shape == (20,)
    assert np.allclose(batch, [lut.predict(a) for a in archs])
    with pytest.raises(MissingOpError, match="resolution 224.*table covers resolution 32"):
        lut.predict(Space(224).smallest())


def test_lut_fallback_fills_missing_ops(measured):
    pred = LUTPredictor(fallback=GBDTPredictor(n_estimators=100)).fit(measured, resolution=32)
    lat = pred.layer_latencies(SPACE)  # complete now
    arch = SPACE.largest()
    assert pred.predict(arch) == pytest.approx(pred.fixed_latency() + sum(r[c] for r, c in zip(lat, arch.ops)))
    # Measured ops keep their measured values.
    key = SPACE.fixed_ops[0].key
    assert pred.predict_ops([key])[0] == pred.latencies_[key]


def test_calibration_fits_offset_and_scale(lut):
    cal = LUTPredictor().fit(list(lut.latencies_), list(lut.latencies_.values()), resolution=32)
    rng = random.Random(3)
    archs = [cheap_arch(rng) for _ in range(8)]
    raw = cal.predict(archs)
    measured = 1.3 * raw + 0.25
    cal.fit_calibration(archs, measured)
    assert cal.calibration_["scale"] == pytest.approx(1.3) and cal.calibration_["offset"] == pytest.approx(0.25)
    assert np.allclose(cal.predict(archs), measured)
    assert cal.score(archs, measured) == pytest.approx(1.0)
    # The matrix carries the calibration consistently (scale per op, offset in the fixed part).
    arch = archs[0]
    sub = cal.predict_ops(arch.op_specs).sum() + cal.offset_
    assert cal.predict(arch) == pytest.approx(sub)
    with pytest.raises(LatbenchError, match="finite and > 0"):
        cal.fit_calibration(archs[:2], [1.0, float("nan")])


# -- files -----------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, lut, gbdt, measured):
    rng = random.Random(4)
    archs = [cheap_arch(rng) for _ in range(10)]
    calibrated = LUTPredictor(fallback=GBDTPredictor(n_estimators=50)).fit(measured, resolution=32)
    calibrated.fit_calibration(archs, np.asarray(calibrated.predict(archs)) * 1.1 + 0.01)
    for pred in (lut, gbdt, calibrated):
        path = save_predictor(pred, tmp_path / f"{pred.kind}.pkl")
        back = load_predictor(path)
        assert type(back) is type(pred)
        assert np.array_equal(back.predict(archs), pred.predict(archs))
        assert back.calibration_ == pred.calibration_
        assert back.deployment_space() == pred.deployment_space() and back.device_ == pred.device_
        assert {k: v for k, v in back.get_params().items() if k != "fallback"} == \
               {k: v for k, v in pred.get_params().items() if k != "fallback"}
    # pred.save is the same writer
    gbdt.save(tmp_path / "g2.pkl")
    assert np.array_equal(load_predictor(tmp_path / "g2.pkl").predict_ops(SPACE.distinct_ops()),
                          gbdt.predict_ops(SPACE.distinct_ops()))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"format": "latbench-predictor", "version": 1, "x": _RunsCode(marker)}))
    # Sanity: a plain pickle.load of this file would run the command.
    with pytest.raises(PredictorFileError, match=r"refusing to load .*evil\.pkl.*(posix|os)\.system"):
        load_predictor(evil)
    assert not marker.exists()
    # Through the CLI: exit code 2, nothing ran.
    arch = tmp_path / "a.json"
    SPACE.smallest().save(arch)
    from latbench.cli import main

    assert main(["predict", "--predictor", str(evil), "--arch", str(arch)]) == 2
    assert not marker.exists()


def test_crafted_pickle_refused_in_a_real_process(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    arch = tmp_path / "a.json"
    SPACE.smallest().save(arch)
    code = "import sys; from latbench.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "predict", "--predictor", str(evil), "--arch", str(arch)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to load" in lines[0] and "system" in lines[0], r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("opcodes", [
    b"cos\nsystem\n(S'touch MARKER'\ntR.",                  # GLOBAL + REDUCE (protocol 0)
    b"(S'touch MARKER'\nios\nsystem\n.",                    # INST
    b"cbuiltins\neval\n(S'__import__(\"os\").system(\"touch MARKER\")'\ntR.",
    b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR.",
])
def test_raw_exploit_opcodes_are_refused(tmp_path, opcodes):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.pkl"
    path.write_bytes(opcodes.replace(b"MARKER", str(marker).encode()))
    with pytest.raises(PredictorFileError, match="refusing to load"):
        load_predictor(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, match", [
    (b"", "not a latbench predictor file"),
    (b"\x80\x04garbage-bytes-not-a-pickle", "not a latbench predictor file"),
    (pickle.dumps({"weights": [1, 2, 3]}), "a pickle but not a latbench predictor file"),
    (pickle.dumps({"format": "latbench-predictor", "version": 99, "kind": "lut"}), "format version 99"),
    (pickle.dumps({"format": "latbench-predictor", "version": 1, "kind": "lut", "params": {}, "base": {}}),
     "damaged"),
    (pickle.dumps(np.arange(3)), r"references Python object numpy"),
])
def test_corrupt_or_foreign_files(tmp_path, content, match):
    path = tmp_path / "p.pkl"
    path.write_bytes(content)
    with pytest.raises(PredictorFileError, match=match):
        load_predictor(path)


def test_truncated_file(tmp_path, gbdt):
    path = save_predictor(gbdt, tmp_path / "g.pkl")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(PredictorFileError, match="not a latbench predictor file"):
        load_predictor(path)
    with pytest.raises(PredictorFileError, match="cannot read"):
        load_predictor(tmp_path / "missing.pkl")


# -- official format -------------------------------------------------------------------------------
def test_import_official_yaml_sample():
    pred = LUTPredictor.from_proxylessnas_yaml(SAMPLE_YAML)
    assert pred.deployment_space() == Space(224)
    key = "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:5-stride:1-idskip:1"
    assert pred.predict_ops([key])[0] == pytest.approx(5.6)
    assert pred.stats_[key] == {"count": 100.0, "var": 0.04}
    with pytest.raises(MissingOpError,
                       match=r"no latency for op expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:7"):
        pred.predict(Space(224).largest())


def test_import_official_yaml_full_table(tmp_path, lut, cli):
    """A full table in the official format (written from the measured LUT) predicts like the LUT."""
    import yaml

    doc = {k: {"count": 10, "mean": v, "var": 0.0} for k, v in lut.latencies_.items()}
    path = tmp_path / "mobile_like.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "yaml.pkl"
    code, stdout, _ = cli("fit-predictor", "--proxylessnas-yaml", path, "--out", out, "--resolution", "32")
    assert code == 0 and "lut predictor" in stdout
    imported = load_predictor(out)
    rng = random.Random(5)
    archs = [cheap_arch(rng) for _ in range(5)]
    assert np.allclose(imported.predict(archs), lut.predict(archs))


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "expected a mapping of op keys"),
    ("Conv-input:224x224x3-output:112x112x32: 4.0", "must be a mapping with 'mean'"),
    ("Conv-input:224x224x3-output:112x112x32: {mean: .nan}", "finite and > 0"),
    ("Conv-input:224x224x3-output:112x112x32: {mean: -1}", "finite and > 0"),
    ("Conv2d-in:3: {mean: 1}", "cannot parse op key"),
    ("a: [unclosed", "not valid YAML"),
])
def test_bad_official_yaml(tmp_path, text, match):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(LatbenchError, match=match):
        LUTPredictor.from_proxylessnas_yaml(path)


# -- bad input -------------------------------------------------------------------------------------
def test_unfitted_use_is_a_clear_error():
    for pred in (LUTPredictor(), GBDTPredictor()):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            pred.predict(SPACE.smallest())
        with pytest.raises(NotFittedError):
            pred.layer_latencies(SPACE)
        with pytest.raises(NotFittedError):
            save_predictor(pred, "/tmp/never.pkl")


def test_nan_and_negative_latencies(measured):
    from latbench.tables import read_table

    keys = [o.key for o in SPACE.fixed_ops]
    with pytest.raises(LatbenchError, match=r"latency of Conv-input:32x32x3.* is nan"):
        LUTPredictor.from_latencies({keys[0]: float("nan"), keys[1]: 1.0}, resolution=32)
    with pytest.raises(LatbenchError, match="is -2.0"):
        LUTPredictor.from_latencies({keys[0]: -2.0}, resolution=32)
    df = read_table(measured)
    df.loc[df.index[3], "median_ms"] = -0.5
    with pytest.raises(LatbenchError, match=f"median_ms of {df['key'].iloc[3]} is -0.5"):
        GBDTPredictor().fit(df)


def test_tables_from_another_device(measured, lut):
    from latbench.tables import read_table

    df = read_table(measured)
    other = df.assign(device="rasp4")
    with pytest.raises(LatbenchError, match="tables mix devices pred-cpu, rasp4; fit one predictor per device"):
        LUTPredictor().fit(pd.concat([df, other]))
    with pytest.raises(LatbenchError, match="fitted on tables of device 'pred-cpu' but the target is 'rasp4'"):
        check_device(lut, "rasp4")
    arch_like = df.assign(arch="{}")
    with pytest.raises(LatbenchError, match="architecture table"):
        LUTPredictor().fit(arch_like)


def test_arch_not_fitting_the_space(lut, tmp_path, cli):
    with pytest.raises(ConfigError, match="has 22 ops, got 3"):
        lut.predict({"resolution": 32, "ops": ["3x3_MBConv1"] * 3})
    ops = list(SPACE.smallest().ops)
    ops[1] = "zero"  # layer 1 has stride 2: no identity allowed
    with pytest.raises(ConfigError, match="layer 1 cannot be 'zero'"):
        lut.predict({"resolution": 32, "ops": ops})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"resolution": 32, "ops": ops}))
    pkl = save_predictor(lut, tmp_path / "lut.pkl")
    code, out, err = cli("predict", "--predictor", pkl, "--arch", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "layer 1 cannot be 'zero'" in err


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_fit_and_predict(tmp_path, measured, lut, cli):
    out = tmp_path / "g.pkl"
    code, stdout, err = cli("fit-predictor", "--table", measured, "--kind", "xgb", "--out", out,
                            "--resolution", "32", "--n-estimators", "100")
    assert code == 0, err
    assert "gbdt predictor fitted on" in stdout and out.exists()
    lut_pkl = tmp_path / "lut.pkl"
    assert cli("fit-predictor", "--table", measured, "--out", lut_pkl, "-r", "32")[0] == 0
    arch = cheap_arch(random.Random(6))
    arch_path = arch.save(tmp_path / "arch.json")
    code, stdout, _ = cli("predict", "--predictor", lut_pkl, "--arch", arch_path, "--json")
    assert code == 0 and json.loads(stdout) == {"latency_ms": pytest.approx(lut.predict(arch))}
    code, stdout, _ = cli("predict", "--predictor", out, "--arch", arch_path, "--breakdown")
    assert code == 0 and stdout.count(" ms  ") == len(arch.op_specs) + 1
    code, _, err = cli("fit-predictor", "--table", tmp_path / "nope.parquet", "--out", out)
    assert code == 2 and "does not exist" in err


# -- evaluation ------------------------------------------------------------------------------------
def test_accuracy_metrics_on_arrays(tmp_path):
    m = np.array([10.0, 20.0, 30.0, 40.0])
    p = np.array([10.4, 21.5, 29.0, 48.0])  # errors +4 %, +7.5 %, -3.3 %, +20 %
    r = accuracy_metrics(p, m)
    assert r["n"] == 4
    assert r["within_5_pct"] == 50.0 and r["within_10_pct"] == 75.0
    assert r["mape_pct"] == pytest.approx(100 * (0.04 + 0.075 + 1 / 30 + 0.2) / 4)
    assert r["rmse_ms"] == pytest.approx(math.sqrt((0.16 + 2.25 + 1 + 64) / 4))
    assert r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
    assert accuracy_metrics(m[::-1], m)["spearman"] == pytest.approx(-1.0)
    png = scatter_plot(p, m, tmp_path / "s.png", "t", r)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LatbenchError, match="finite and > 0"):
        accuracy_metrics([1.0], [0.0])


def test_sample_archs_distinct_and_seeded():
    a = sample_archs(SPACE, 30, seed=1)
    assert len({x.key for x in a}) == 30 and [x.key for x in a] == [x.key for x in sample_archs(SPACE, 30, 1)]
    b = sample_archs(SPACE, 5, seed=2, exclude=[x.key for x in a])
    assert not {x.key for x in b} & {x.key for x in a}
    mixed = interleave(a, b)  # calibration archs spread through the evaluated ones, order kept
    assert sorted(x.key for x in mixed) == sorted(x.key for x in a + b)
    pos = [i for i, x in enumerate(mixed) if x in b]
    assert [x for x in mixed if x in b] == b and pos[0] > 0 and pos[-1] < len(mixed) - 1
    assert max(np.diff(pos)) <= 7


def test_evaluate_end_to_end(tmp_path, measured, gbdt, cli):
    """`latbench evaluate` really compiles and times whole networks, then scores the predictor.

    Slow: three whole networks are compiled with TVM (about a minute on an idle 2-core machine).
    """
    from conftest import write_device

    device = write_device(tmp_path, "pred-cpu",
                          timing={"number": 1, "repeat": 4, "min_repeat_ms": 10, "warmup": 1, "op_timeout": 60,
                                  "rounds": 2, "max_visits": 2})
    pkl = save_predictor(gbdt, tmp_path / "g.pkl")
    out, report = tmp_path / "tables", tmp_path / "report"
    args = ["evaluate", "--predictor", pkl, "--target", device, "--n", "2", "--calibrate", "1", "--out", out,
            "--report", report, "--json", "--save-calibrated", tmp_path / "gcal.pkl"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    res = json.loads(stdout)
    m = res["metrics"]
    assert m["n"] == 2 and 0 <= m["within_10_pct"] <= 100 and m["rmse_ms"] >= 0 and m["mape_pct"] >= 0
    assert -1 <= m["spearman"] <= 1 and res["metrics_raw"]["n"] == 2 and res["calibration"]["n"] == 1
    # the space's ops were timed in the same rounds as the networks; a LUT of them is scored too
    ops = pd.read_parquet(Path(out) / "pred-cpu" / f"ops-{res['predictor'].get('backend') or 'tvm'}.parquet")
    nets = pd.read_parquet(Path(out) / "pred-cpu" / "archs-tvm.parquet")
    # the noise floor is the networks' median CI; with 2 visits a network whose one visit was rejected (a noisy
    # machine) has none, and when no network has one the floor is None, never a made-up number
    floor = m["noise_floor_pct"]
    assert res["metrics_joint_lut"]["n"] == 2 and res["metrics_joint_lut"]["noise_floor_pct"] == floor
    if nets["ci_halfwidth_pct"].notna().any():
        assert floor == pytest.approx(nets["ci_halfwidth_pct"].median()) and floor > 0
    else:
        assert floor is None
    assert len(ops) == 72 and set(ops["rounds"]) == set(nets["rounds"]) == {2}
    table = pd.read_csv(res["table"])
    assert len(table) == 2 and (table["measured_ms"] > 0).all()
    # The raw prediction is the sum of the GBDT's op predictions; the measured value is a whole network.
    archs = [Arch.from_dict(json.loads(a)) for a in table["arch"]]
    assert np.allclose(res["metrics_raw"]["rmse_ms"], np.sqrt(np.mean(
        (gbdt.predict(archs) - table["measured_ms"].to_numpy()) ** 2)))
    assert Path(res["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert load_predictor(tmp_path / "gcal.pkl").calibration_["n"] == 1
    # Resumable and cached: a rerun measures nothing new and gives the same measurements.
    code, stdout2, _ = cli(*args)
    assert code == 0 and pd.read_csv(json.loads(stdout2)["table"])["measured_ms"].tolist() == \
        table["measured_ms"].tolist()
    # The predictor belongs to pred-cpu: judging it on another device is refused.
    other = write_device(tmp_path, "other-cpu")
    code, _, err = cli("evaluate", "--predictor", pkl, "--target", other, "--n", "3", "--out", out)
    assert code == 2 and "fitted on tables of device 'pred-cpu' but the target is 'other-cpu'" in err


def test_cli_calibration_from_arch_table(tmp_path, measured, lut, cli):
    rng = random.Random(8)
    archs = [cheap_arch(rng) for _ in range(6)]
    ms = 1.2 * np.asarray(lut.predict(archs)) + 0.3
    frame = pd.DataFrame({"key": [a.key for a in archs], "arch": [a.to_json() for a in archs],
                          "resolution": 32, "width_mult": 1.0, "median_ms": ms, "status": "ok",
                          "device": "pred-cpu"})
    good = tmp_path / "archs-good.parquet"
    frame.to_parquet(good)
    out = tmp_path / "cal.pkl"
    code, stdout, err = cli("fit-predictor", "--table", measured, "-r", "32", "--calibration", good, "--out", out)
    assert code == 0, err
    cal = load_predictor(out)
    assert cal.calibration_["n"] == 6 and cal.calibration_["scale"] == pytest.approx(1.2)
    assert np.allclose(cal.predict(archs), ms)
    foreign = tmp_path / "archs-foreign.parquet"
    frame.assign(device="rasp4").to_parquet(foreign)
    code, _, err = cli("fit-predictor", "--table", measured, "-r", "32", "--calibration", foreign, "--out", out)
    assert code == 2 and "calibration tables are from device rasp4 but the op tables from 'pred-cpu'" in err
    code, _, err = cli("fit-predictor", "--table", measured, "-r", "32", "--calibration", measured, "--out", out)
    assert code == 2 and "not an architecture table" in err


def test_gbdt_refuses_far_extrapolation(gbdt, tmp_path, cli, caplog):
    """A 100000-px network is far outside what the xgb predictor saw (32–64 px): refused in one line, unless allowed
    (then a warning); a network inside the domain predicts as before."""
    from predictors.gbdt import ExtrapolationError

    huge = Space(resolution=100000).smallest()
    with pytest.raises(ExtrapolationError, match=r"in_h .*50000.*allow-extrapolation"):
        gbdt.predict(huge)
    assert gbdt.predict(SPACE.smallest()) > 0
    gbdt.save(tmp_path / "g.pkl")
    huge.save(tmp_path / "huge.json")
    code, out, err = cli("predict", "--predictor", tmp_path / "g.pkl", "--arch", tmp_path / "huge.json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "extrapolation" in err
    code, out, err = cli("predict", "--predictor", tmp_path / "g.pkl", "--arch", tmp_path / "huge.json",
                         "--allow-extrapolation", "--json")
    assert code == 0 and json.loads(out)["latency_ms"] > 0
    assert "extrapolation" in caplog.text


@pytest.mark.parametrize("field,value", [("scale", float("nan")), ("scale", -1.0), ("scale", 0.0),
                                         ("scale", float("inf")), ("offset", float("nan")), ("scale", "fast")])
def test_bad_calibration_refused_on_load(lut, tmp_path, field, value):
    from predictors.io import PREDICTOR_FILE, load_payload, write_plain

    path = lut.save(tmp_path / "lut.pkl")
    payload = load_payload(path)
    payload["base"]["calibration"][field] = value
    write_plain(path, payload, PREDICTOR_FILE)
    with pytest.raises(PredictorFileError, match=f"calibration {field} must be"):
        load_predictor(path)
