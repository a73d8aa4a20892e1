"""benchmarks/search_pareto.py: matched-latency baselines on a real LUT, the verdict, the journal and --resume."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from latbench.space import Space
from predictors import LUTPredictor, save_predictor
from search.latency import flops_latencies

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("search_pareto", ROOT / "benchmarks" / "search_pareto.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_pareto"] = mod
    spec.loader.exec_module(mod)
    return mod


sp = load_benchmark()


@pytest.fixture(scope="module")
def lut_file(tmp_path_factory) -> Path:
    """A real LUT predictor of the 224 px space (FLOP-derived op latencies)."""
    path = tmp_path_factory.mktemp("lut") / "lut.pkl"
    save_predictor(LUTPredictor.from_latencies(flops_latencies(Space()), resolution=224, width_mult=1.0), path)
    return path


def test_matched_random_baselines_are_within_5_percent_of_their_target(lut_file):
    from predictors import load_predictor

    pred = load_predictor(lut_file)
    space = pred.deployment_space()
    archs, lats = sp.pool_latencies(pred, space, 2000, 0)
    targets = sp.quantile_targets(lats)
    assert min(lats) < targets[0] < targets[1] < targets[2] < max(lats)
    nets = sp.matched_random(archs, lats, targets, 10, 0.05, seed=0)
    assert len(nets) == 10 and len({n.arch.key for n in nets}) == 10
    assert {n.target for n in nets} == set(targets)  # spread over every target
    for n in nets:
        assert n.kind == "random"
        assert abs(float(pred.predict(n.arch)) - n.target) <= 0.05 * n.target  # the LUT's own prediction
    again = sp.matched_random(archs, lats, targets, 10, 0.05, seed=0)
    assert [n.arch.key for n in again] == [n.arch.key for n in nets]  # seeded
    assert [n.arch.key for n in sp.matched_random(archs, lats, targets, 10, 0.05, seed=1)] != [
        n.arch.key for n in nets]
    # an impossible window gives what there is (nothing), not an endless loop
    assert sp.matched_random(archs, lats, [1e6], 3, 0.05, seed=0) == []

    uni = sp.uniform_nets(pred, space, targets, sp.UNIFORM_OPS, 10.0, 0.05)
    assert len(uni) == len(sp.UNIFORM_OPS)
    for n in uni:
        op = n.name.removeprefix("uniform-")
        assert set(n.arch.ops[1:]) == {op} and n.arch.ops[0].endswith("_MBConv1")
        assert n.predicted_ms == pytest.approx(float(pred.predict(n.arch)))
        assert n.target == min(targets, key=lambda t: abs(t - n.predicted_ms))
    # ordered by size: the smallest uniform net is the fastest
    by = {n.name: n.predicted_ms for n in uni}
    assert by["uniform-3x3_MBConv3"] < by["uniform-3x3_MBConv6"] < by["uniform-7x7_MBConv6"]


def test_verdict_compares_with_the_best_baseline_at_lower_or_equal_measured_latency():
    rows = [
        {"name": "g", "kind": "searched-gradient", "target": 5.0, "measured_ms": 5.0, "test_acc": 0.80},
        {"name": "r", "kind": "searched-reinforce", "target": 5.0, "measured_ms": 4.0, "test_acc": 0.70},
        {"name": "a", "kind": "random", "target": 5.0, "measured_ms": 4.5, "test_acc": 0.79},
        {"name": "b", "kind": "random", "target": 5.0, "measured_ms": 5.5, "test_acc": 0.95},  # slower: ignored
        {"name": "u", "kind": "uniform", "target": 5.0, "measured_ms": 3.9, "test_acc": 0.75},
        {"name": "x", "kind": "random", "target": 5.0, "measured_ms": None, "test_acc": 0.99},  # unmeasured
    ]
    v = {x["name"]: x for x in sp.verdicts(rows)}
    assert v["g"]["ok"] is True and v["g"]["best_baseline"]["name"] == "a"
    assert v["r"]["ok"] is False and v["r"]["best_baseline"]["name"] == "u"
    rows[4]["measured_ms"] = 4.1
    assert sp.verdicts(rows)[1]["ok"] is None  # no baseline at <= 4.0 ms


def test_journal_resume_skips_finished_networks(lut_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--predictor", str(lut_file), "--budget", "smoke", "--out", str(out), "--no-measure",
            "--methods", "gradient", "--random", "2", "--uniform", "3x3_MBConv6", "--uniform-window", "10",
            "--pool", "500", "--timeout-search", "1", "--timeout-train", "1"]
    args = sp.build_parser().parse_args(argv + ["--resume"])
    b = sp.budget_of(args)
    _, _, targets, _, nets, config = sp.plan(args, b, ["gradient"], out)
    assert [n.kind for n in nets].count("searched-gradient") == 3 and len(nets) == 3 + 2 + 1
    # every network already in the journal: --resume runs no subprocess (1 s timeouts would fail them)
    journal = sp.Journal(out / sp.JOURNAL, config, resume=False)
    for i, n in enumerate(nets):
        arch = n.arch or nets[3].arch
        journal.add({"name": n.name, "kind": n.kind, "target": n.target, "arch": arch.to_dict(),
                     "predicted_ms": n.predicted_ms if n.arch else n.target, "test_acc": 0.5 + 0.01 * i})
    assert sp.main(argv + ["--resume"]) == 0
    printed = capsys.readouterr().out
    for n in nets:
        assert n.name in printed
    result = json.loads((out / "pareto.json").read_text())
    assert {r["name"]: r["test_acc"] for r in result["results"]} == {n.name: 0.5 + 0.01 * i
                                                                    for i, n in enumerate(nets)}
    assert (out / "pareto.png").stat().st_size > 0
    # without --resume an existing journal is not overwritten; other settings are refused
    with pytest.raises(SystemExit, match="--resume"):
        sp.main(argv)
    with pytest.raises(SystemExit, match="seed"):
        sp.main(argv + ["--resume", "--seed", "1"])
    # a half-done journal: the missing network is attempted (and here fails on the 1 s timeout)
    lines = (out / sp.JOURNAL).read_text().splitlines()
    (out / sp.JOURNAL).write_text("\n".join(lines[:-1]) + "\n")
    assert sp.main(argv + ["--resume"]) == 1
    assert "FAILED uniform-3x3_MBConv6" in capsys.readouterr().out
