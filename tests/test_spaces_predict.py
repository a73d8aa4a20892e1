"""Predictors on NAS-Bench-201: op keys of the network, a real (tiny) `measure --space nasbench201` on this CPU,
then fit-predictor / predict / evaluate with --space nasbench201 on its tables, and the one-line refusals
when spaces are mixed."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from latbench.nasbench201 import NB201Op, nb201_arch_ops, nb201_cost, nb201_op_costs, nb201_resolve
from latbench.space import Space
from latbench.spaces import SpaceError
from predictors import GBDTPredictor, LUTPredictor, load_predictor

ROOT = Path(__file__).resolve().parent.parent
#: ``measure --space nasbench201 --archs 1 --seed 342`` draws a cheap cell (skips and none: no cell convolution),
#: so the whole network compiles fast; its 7 ops (the stem, the two reduction blocks, the head and none at each
#: stage; the identity is free) are timed in the same rounds.
SEED, ARCH = 342, 7213
OFFICIAL_YAML = ROOT / "tests" / "data" / "proxylessnas_sample.yaml"


def test_op_keys_parse_and_sum_to_the_network():
    costs = nb201_op_costs()
    for key, cost in costs.items():
        op = NB201Op.parse(key)
        assert op.key == key and op.cost() == cost
    for bad in ("nb201-nor_conv_5x5-input:32x32x16", "nb201-stem-input:32x32x3", "nb201-head-input:8x8x64",
                "nb201-nor_conv_3x3-input:32x16x16", "Conv-input:224x224x3-output:112x112x32"):
        with pytest.raises(Exception, match="cannot parse NAS-Bench-201 op key"):
            NB201Op.parse(bad)
    for i in (0, 1, 1462, ARCH):
        s = nb201_resolve(i)[1]
        ops = nb201_arch_ops(s)  # the identity edges are free: no op
        assert len(ops) == 1 + 3 * 5 * (6 - s.count("skip_connect")) + 2 + 1
        assert sum(o.cost()["flops"] for o in ops) == pytest.approx(nb201_cost(s)["flops"])


@pytest.fixture(scope="module")
def nb201_tables(fast_device, cache_dir, tmp_path_factory) -> Path:
    """A real campaign on this CPU: a whole NAS-Bench-201 network and its 7 timed ops (no reference op: one
    compile less)."""
    from latbench.cli import main

    out = tmp_path_factory.mktemp("nb201")
    code = main(["measure", "--space", "nasbench201", "--archs", "1", "--seed", str(SEED), "--target",
                 str(fast_device), "--cache", str(cache_dir), "--out", str(out), "--rounds", "1",
                 "--max-visits", "2", "--no-reference"])
    assert code == 0
    return out / "fast-cpu"


def test_measure_writes_ops_and_networks(nb201_tables):
    archs = pd.read_parquet(nb201_tables / "archs-tvm.parquet")
    assert list(archs["arch_index"]) == [ARCH] and (archs["status"] == "ok").all()
    ops = pd.read_parquet(nb201_tables / "ops-tvm.parquet")
    timed = {o.key for o in nb201_arch_ops(nb201_resolve(ARCH)[1])}
    assert len(timed) == 7 and set(ops["key"]) == timed and (ops["space"] == "nasbench201").all()
    ok = ops[ops["status"] == "ok"]
    assert len(ok) == 7 and (ok["median_ms"] > 0).all() and (ok["max_abs_err"] < ok["tolerance"]).all()


def test_fit_predict_lut_and_xgb(cli, nb201_tables, tmp_path):
    ops_t, archs_t = nb201_tables / "ops-tvm.parquet", nb201_tables / "archs-tvm.parquet"
    code, out, err = cli("fit-predictor", "--space", "nasbench201", "--table", ops_t, "--kind", "lut",
                         "--out", tmp_path / "lut.pkl", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["search_space"] == "nasbench201" and info["n_train"] == 7 and info["kind"] == "lut"
    # the LUT is the sum of the network's measured ops
    ms = pd.read_parquet(ops_t).set_index("key")["median_ms"]
    arch_str = nb201_resolve(ARCH)[1]
    want = sum(ms[o.key] for o in nb201_arch_ops(arch_str))
    code, out, err = cli("predict", "-p", tmp_path / "lut.pkl", "--arch-index", ARCH, "--json")
    assert code == 0, err
    assert json.loads(out)["latency_ms"] == pytest.approx(want)
    code, out2, _ = cli("predict", "-p", tmp_path / "lut.pkl", "--space", "nasbench201", "--arch-str", arch_str,
                        "--json")
    assert code == 0 and out2 == out
    # xgb on op features, calibrated on the measured networks; by string and index, with a breakdown
    code, out, err = cli("fit-predictor", "--space", "nasbench201", "--table", ops_t, "--kind", "xgb",
                         "--n-estimators", "30", "--calibration", archs_t, "--out", tmp_path / "xgb.pkl")
    assert code == 0 and "space nasbench201" in out, err
    code, out, err = cli("predict", "-p", tmp_path / "xgb.pkl", "--arch-index", ARCH, "1462", "--breakdown",
                         "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["arch_index"] for r in rows] == [ARCH, 1462] and rows[1]["arch_str"] == nb201_resolve(1462)[1]
    for r in rows:
        total = sum(o["count"] * o["latency_ms"] for o in r["ops"]) + r["offset_ms"]
        assert r["latency_ms"] == pytest.approx(total, rel=1e-5) and r["latency_ms"] > 0
    pred = load_predictor(tmp_path / "xgb.pkl")
    assert isinstance(pred, GBDTPredictor) and pred.search_space == "nasbench201" and pred.calibration_["n"] == 1
    measured = pd.read_parquet(archs_t).set_index("arch_index")["median_ms"]
    assert pred.predict(ARCH) == pytest.approx(measured[ARCH], rel=0.01)  # calibrated on that network


def test_spaces_are_never_mixed(cli, nb201_tables, tmp_path):
    ops_t, archs_t = nb201_tables / "ops-tvm.parquet", nb201_tables / "archs-tvm.parquet"
    assert cli("fit-predictor", "--table", ops_t, "--out", tmp_path / "nb.pkl")[0] == 0  # space from the keys
    assert cli("fit-predictor", "--proxylessnas-yaml", OFFICIAL_YAML, "--out", tmp_path / "px.pkl")[0] == 0
    other = tmp_path / "px-ops.csv"  # a ProxylessNAS op row of the same device
    pd.DataFrame({"key": ["Conv-input:32x32x3-output:16x16x32"], "median_ms": [0.05], "status": ["ok"],
                  "device": ["fast-cpu"], "backend": ["tvm"]}).to_csv(other, index=False)
    arch_json = tmp_path / "arch.json"
    arch_json.write_text(Space(resolution=32).sample(0).to_json())
    mixed = tmp_path / "mixed.csv"
    pd.concat([pd.read_parquet(ops_t)[["key", "median_ms", "status", "device", "backend"]],
               pd.read_csv(other)]).to_csv(mixed, index=False)
    cases = [
        (["fit-predictor", "--table", ops_t, other, "--out", tmp_path / "x.pkl"],
         "mix ops of the nasbench201 and proxylessnas search spaces"),
        (["fit-predictor", "--space", "proxylessnas", "--table", ops_t, "--out", tmp_path / "x.pkl"],
         "no proxylessnas ops in these tables"),
        (["fit-predictor", "--table", other, "--calibration", archs_t, "--out", tmp_path / "x.pkl"],
         "hold nasbench201 networks but the predictor is for the proxylessnas space"),
        (["predict", "-p", tmp_path / "px.pkl", "--arch-index", "5"], "is a proxylessnas predictor"),
        (["predict", "-p", tmp_path / "nb.pkl", "--space", "proxylessnas", "--arch-index", "5"],
         "is a nasbench201 predictor, not a proxylessnas one"),
        (["predict", "-p", tmp_path / "nb.pkl", "--arch", arch_json],
         "the predictor is for the nasbench201 space"),
        (["evaluate", "-p", tmp_path / "nb.pkl", "--space", "proxylessnas", "--n", "1"], "is a nasbench201 predictor"),
        (["predict", "-p", tmp_path / "nb.pkl", "--arch-index", "15625"], "out of range"),
    ]
    for argv, message in cases:
        code, _, err = cli(*argv)
        assert code != 0 and message in err and err.count("\n") == 1, (argv, err)
    # one --out directory gathers both spaces' ops: --space picks its rows
    for space, n in (("nasbench201", 7), ("proxylessnas", 1)):
        code, out, err = cli("fit-predictor", "--space", space, "--table", mixed, "--out", tmp_path / "m.pkl", "--json")
        assert code == 0 and json.loads(out)["n_train"] == n, err
    px = LUTPredictor.from_latencies({"Conv-input:32x32x3-output:16x16x32": 0.05}, resolution=32)
    with pytest.raises(SpaceError, match="architecture is a nasbench201 one"):
        px.predict({"space": "nasbench201", "arch_str": nb201_resolve(1)[1], "arch_index": 1})


def test_evaluate_nasbench201(cli, nb201_tables, fast_device, tmp_path):
    """evaluate --space nasbench201 draws the same networks as measure --archs N --seed S: all cached here."""
    ops_t = nb201_tables / "ops-tvm.parquet"
    assert cli("fit-predictor", "--space", "nasbench201", "--table", ops_t, "--out", tmp_path / "lut.pkl")[0] == 0
    code, out, err = cli("evaluate", "-p", tmp_path / "lut.pkl", "--space", "nasbench201", "--target",
                         fast_device, "--n", "1", "--seed", SEED,
                         "--out", nb201_tables.parent, "--report", tmp_path / "eval", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["search_space"] == "nasbench201" and res["metrics"]["n"] == 1
    assert res["metrics_joint_lut"]["n"] == 1  # a LUT of the ops timed with the network
    table = pd.read_csv(res["table"])
    assert list(table["arch_index"]) == [ARCH] and table["measured_ms"].iloc[0] > 0
    assert table["predicted_ms"].iloc[0] == pytest.approx(load_predictor(tmp_path / "lut.pkl").predict(ARCH))
