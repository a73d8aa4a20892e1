"""The whole-network predictor (``xgb-arch``): real xgboost on synthetic archs tables whose latency is a known
function of the architecture, real files, the CLI and the search's refusal."""
from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pandas as pd
import pytest

from latbench.errors import LatbenchError
from latbench.metrics import accuracy_metrics, spearman
from latbench.nasbench201 import nb201_measured_ops, nb201_sample, parse_nb201
from latbench.space import Space
from latbench.spaces import SpaceError
from predictors import (KINDS, ArchGBDTPredictor, LUTPredictor, NotFittedError, PredictorFileError,
                        WholeNetworkOnlyError, load_predictor, save_predictor)
from predictors.io import load_payload
from search.latency import flops_latencies
from search.run import main as search_main

#: ms of each edge op in one cell of stage 1; stages 2 and 3 cost STAGE times as much (halved pixels, doubled
#: channels: convs cost alike, the rest less), and each of the 15 cells repeats the cell's cost.
EDGE_MS = {"none": 0.02, "skip_connect": 0.0, "nor_conv_1x1": 0.35, "nor_conv_3x3": 1.1, "avg_pool_3x3": 0.25}
STAGE = (1.0, 0.9, 0.8)
N_FIT, N_TEST = 200, 100


def nb201_latency(arch_str: str) -> float:
    """A known latency: fixed part + Σ edges × stages + an interaction (two 3x3 convs into the output node
    share a cache-unfriendly sum) + a position effect (edge i costs a little more the later it is)."""
    ops = parse_nb201(arch_str)
    cells = sum(5 * s * sum(EDGE_MS[o] * (1 + 0.05 * i) for i, o in enumerate(ops)) for s in STAGE)
    inter = 2.0 * (ops[4] == "nor_conv_3x3") * (ops[5] == "nor_conv_3x3")
    return 1.5 + cells + inter


def nb201_table(n: int, seed: int, device: str = "synth-cpu") -> pd.DataFrame:
    """An archs table as `latbench measure --space nasbench201 --archs N` writes it (the columns a predictor
    reads), with a few error rows that must be skipped."""
    drawn = nb201_sample(n, seed)
    rows = [{"key": s, "kind": "arch", "space": "nasbench201", "arch": json.dumps({"arch_index": i, "arch_str": s,
             "space": "nasbench201"}), "arch_str": s, "arch_index": i, "resolution": 32, "n_classes": 10,
             "device": device, "backend": "torch", "status": "ok", "median_ms": nb201_latency(s)} for i, s in drawn]
    for r in rows[:3]:
        rows.append({**r, "status": "error", "median_ms": None, "error": "run: killed"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def split():
    """One draw of N_FIT + N_TEST distinct archs: the first N_FIT fit, the rest test."""
    df = nb201_table(N_FIT + N_TEST, seed=7)
    ok = df[df["status"] == "ok"]
    return pd.concat([ok.iloc[:N_FIT], df[df["status"] == "error"]]), ok.iloc[N_FIT:]


@pytest.fixture(scope="module")
def table(split, tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "synth-cpu" / "archs-torch.parquet"
    path.parent.mkdir()
    split[0].to_parquet(path)
    return path


@pytest.fixture(scope="module")
def pred(table) -> ArchGBDTPredictor:
    return ArchGBDTPredictor().fit(table)


def test_learns_held_out_nb201_networks(pred, split):
    fit, test = split
    assert KINDS["xgb-arch"] is ArchGBDTPredictor
    assert pred.n_train_ == N_FIT and pred.search_space == "nasbench201" and pred.device_ == "synth-cpu"
    measured = test["median_ms"].to_numpy(float)
    predicted = pred.predict(list(test["arch_str"]))
    m = accuracy_metrics(predicted, measured)
    constant = accuracy_metrics(np.full(len(measured), float(np.exp(np.log(fit["median_ms"].dropna()).mean()))),
                                measured)
    assert m["spearman"] > 0.9 and m["mape_pct"] < constant["mape_pct"] / 3 and m["rmse_ms"] < constant["rmse_ms"] / 3
    # the same archs by official index and as dicts; one arch gives a float
    assert np.allclose(pred.predict([int(i) for i in test["arch_index"]]), predicted)
    a = {"space": "nasbench201", "arch_str": test["arch_str"].iloc[0], "arch_index": int(test["arch_index"].iloc[0])}
    assert pred.predict(a) == pytest.approx(predicted[0])
    assert pred.score(list(test["arch_str"]), measured) > 0.8
    d = pred.describe()
    assert d["kind"] == "xgb-arch" and d["trained_on"] == "networks" and d["search_space"] == "nasbench201"


def test_holdout_is_reported(table):
    p = ArchGBDTPredictor(holdout=0.25, random_state=3, n_estimators=200).fit(table)
    assert p.n_train_ == N_FIT - 50 and p.holdout_["n"] == 50 and p.holdout_["spearman"] > 0.85
    assert p.describe()["holdout"] == p.holdout_
    with pytest.raises(LatbenchError, match="holdout must be a fraction"):
        ArchGBDTPredictor(holdout=1.5).fit(table)


def test_no_per_layer_latencies(pred):
    for call in (lambda: pred.layer_latencies(), lambda: pred.fixed_latency(), pred.check_decomposable,
                 lambda: pred.predict_ops(["nb201-nor_conv_3x3-input:32x32x16"]), lambda: pred.predict_network([])):
        with pytest.raises(WholeNetworkOnlyError, match="use a lut or xgb predictor") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(NotFittedError):
        ArchGBDTPredictor().predict(1462)


def test_save_load_round_trip(pred, split, tmp_path):
    archs = list(split[1]["arch_str"])
    path = save_predictor(pred, tmp_path / "arch.pkl")
    back = load_predictor(path)
    assert type(back) is ArchGBDTPredictor and back.get_params() == pred.get_params()
    assert np.array_equal(back.predict(archs), pred.predict(archs))
    assert back.describe() == pred.describe()
    pred.save(tmp_path / "again.pkl")
    assert np.array_equal(load_predictor(tmp_path / "again.pkl").predict(archs), pred.predict(archs))


class _RunsCode:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_file_is_refused(pred, tmp_path):
    payload = load_payload(save_predictor(pred, tmp_path / "arch.pkl"))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({**payload, "state": {**payload["state"], "model_ubj": _RunsCode(marker)}}))
    with pytest.raises(PredictorFileError, match=r"refusing to load .*(posix|os)\.system"):
        load_predictor(evil)
    assert not marker.exists()
    for state, match in [({"model_ubj": b"{not a model"}, "xgboost model in the file is corrupt"),
                         ({"model_ubj": None}, "no xgboost model bytes"),
                         ({"feature_names": ["x"]}, "other architecture features"),
                         ({"holdout": "lots"}, "malformed held-out metrics")]:
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps({**payload, "state": {**payload["state"], **state}}))
        with pytest.raises(PredictorFileError, match=match):
            load_predictor(bad)


def nb201_op_table(path):
    """A NAS-Bench-201 op table (what `measure --space nasbench201` writes beside the archs table)."""
    ops = nb201_measured_ops()
    pd.DataFrame({"key": [o.key for o in ops], "kind": [o.kind for o in ops], "device": "synth-cpu",
                  "backend": "torch", "status": "ok", "median_ms": np.linspace(0.1, 1.0, len(ops))}).to_parquet(path)
    return path


def test_cli_fit_predict_and_wrong_inputs(table, pred, tmp_path, cli):
    out = tmp_path / "arch.pkl"
    code, stdout, err = cli("fit-predictor", "--kind", "xgb-arch", "--table", table, "--space", "nasbench201",
                            "--holdout", "0.2", "--n-estimators", "200", "--out", out)
    assert code == 0, err
    assert "xgb-arch predictor fitted on 160 networks" in stdout and "held out 40: MAPE" in stdout
    fitted = load_predictor(out)
    code, stdout, _ = cli("predict", "--predictor", out, "--arch-index", "1462", "--json")
    assert code == 0 and json.loads(stdout) == {"latency_ms": pytest.approx(float(fitted.predict(1462)))}
    s = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|"
    code, stdout, _ = cli("predict", "--predictor", out, "--arch-str", s)
    assert code == 0 and stdout.strip().endswith(s)

    def one_line(match, *args):
        code, _, err = cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err

    ops = nb201_op_table(tmp_path / "ops-torch.parquet")
    assert ArchGBDTPredictor(n_estimators=20).fit([table, ops]).n_train_ == N_FIT  # a directory's op rows: skipped
    one_line("this is an op table", "fit-predictor", "--kind", "xgb-arch", "--table", ops, "--out", out)
    one_line("this is an architecture table", "fit-predictor", "--kind", "lut", "--table", table, "--out", out)
    one_line("this is an architecture table", "fit-predictor", "--kind", "xgb", "--table", table, "--out", out)
    one_line("these are nasbench201 networks, not proxylessnas ones", "fit-predictor", "--kind", "xgb-arch",
             "--table", table, "--space", "proxylessnas", "--out", out)
    one_line("--holdout applies to --kind xgb-arch", "fit-predictor", "--table", ops, "--holdout", "0.2",
             "--out", out)
    one_line("has no per-op latencies", "predict", "--predictor", out, "--arch-index", "1", "--breakdown")
    arch = tmp_path / "a.json"
    Space(resolution=32).smallest().save(arch)
    one_line("is for the nasbench201 space", "predict", "--predictor", out, "--arch", arch)


def test_search_refuses_it_in_one_line(pred, tmp_path, capsys):
    path = save_predictor(pred, tmp_path / "arch.pkl")
    assert search_main(["--predictor", str(path), "--out", str(tmp_path / "s"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "arch.pkl" in err and "use a lut or xgb predictor" in err, err
    assert not (tmp_path / "s").exists()


def test_proxylessnas_networks(tmp_path):
    """ProxylessNAS archs at 32 px: the latency a FLOPs LUT gives each net plus a per-layer effect."""
    space = Space(resolution=32)
    lut = LUTPredictor.from_latencies(flops_latencies(space, ms_per_gflop=50.0), resolution=32)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(90)]
    ms = np.asarray(lut.predict(archs)) + np.array([0.05 * sum(o.startswith("7x7") for o in a.ops) for a in archs])
    df = pd.DataFrame({"key": [a.key for a in archs], "kind": "arch", "arch": [a.to_json() for a in archs],
                       "resolution": 32, "width_mult": 1.0, "device": "synth-cpu", "backend": "tvm",
                       "status": "ok", "median_ms": ms})
    df.to_parquet(tmp_path / "archs-tvm.parquet")
    p = ArchGBDTPredictor(n_estimators=300).fit(tmp_path / "archs-tvm.parquet", space="proxylessnas")
    test = [space.sample(rng) for _ in range(40)]
    truth = np.asarray(lut.predict(test)) + np.array([0.05 * sum(o.startswith("7x7") for o in a.ops) for a in test])
    assert p.search_space == "proxylessnas" and p.deployment_space() == space
    assert spearman(p.predict(test), truth) > 0.8
    back = load_predictor(save_predictor(p, tmp_path / "p.pkl"))
    assert np.array_equal(back.predict([a.to_dict() for a in test]), p.predict(test))
    with pytest.raises(SpaceError, match="learnt networks at resolution 32"):
        p.predict(Space(resolution=64).sample(rng))
    with pytest.raises(SpaceError, match="is a nasbench201 one"):
        p.predict(1462)
    with pytest.raises(WholeNetworkOnlyError):
        p.layer_latencies(space)


def test_calibration_tables_still_read(table, tmp_path, cli):
    """fit-predictor --calibration shares the archs-table reading (space, ok rows, archs) with xgb-arch."""
    ops = nb201_op_table(tmp_path / "ops-torch.parquet")
    code, out, err = cli("fit-predictor", "--space", "nasbench201", "--table", ops, "--calibration", table,
                         "--out", tmp_path / "lut.pkl", "--json")
    assert code == 0, err
    assert json.loads(out)["calibration"]["n"] == N_FIT
    px = tmp_path / "px-ops.csv"
    pd.DataFrame({"key": ["Conv-input:32x32x3-output:16x16x32"], "median_ms": [0.05], "status": ["ok"],
                  "device": ["synth-cpu"], "backend": ["torch"]}).to_csv(px, index=False)
    for argv, message in [(["--table", px, "--calibration", table],
                           "hold nasbench201 networks but the predictor is for the proxylessnas space"),
                          (["--kind", "xgb-arch", "--table", table, "--calibration", table],
                           "--calibration apply to op predictors")]:
        code, _, err = cli("fit-predictor", *argv, "--out", tmp_path / "x.pkl")
        assert code == 2 and message in err and err.count("\n") == 1, err
