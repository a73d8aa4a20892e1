"""Search spaces as a registry; NAS-Bench-201: official strings/indices, the whole-network builder
checked against published FLOPs/params, and a real measurement of one network."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from latbench.campaign import Job
from latbench.errors import AdaptError
from latbench.nasbench201 import NB201_SIZE, nb201_cost, nb201_resolve, nb201_sample, nb201_str, parse_nb201
from latbench.nasbench201_net import NB201Network
from latbench.spaces import SpaceError, get_space, nb201_arch

ISSUE_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
# Published NAS-Bench-201 costs (CIFAR-10; FLOPs in M as its get_model_infos counts them, params):
# index 0 -> 15.64737 MFLOPs (D-X-Y/NATS-Bench issue #24), 0.129306 M params (same as thop there);
# |skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2| ->
# 113.95137 MFLOPs, 0.802426 M params (NATS-Bench issue #36, hp=12); the space's range 7.78..220.11 MFLOPs,
# 0.073..1.531 M params (all-none, all-nor_conv_3x3).
PUBLISHED = [
    (0, 15.64737, 0.129306),
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 113.95137, 0.802426),
    (1462, 220.11969, 1.531546),  # |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|...
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 7.78305, 0.073306),
]


def _counted_macs(net: torch.nn.Module) -> float:
    """NAS-Bench-201's counter (xautodl utils/flop_benchmark.py): conv and linear MACs (+ bias), no pools."""
    total = [0.0]

    def conv(m, _i, o):
        total[0] += o.shape[2] * o.shape[3] * m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels

    def lin(m, _i, _o):
        total[0] += m.in_features * m.out_features + m.out_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else lin) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 10)
    return total[0]


@pytest.mark.parametrize("spec, mflops, mparams", PUBLISHED)
def test_builder_matches_published_flops_and_params(spec, mflops, mparams):
    _, arch_str = nb201_resolve(spec)
    net = NB201Network(arch_str)
    assert sum(p.numel() for p in net.parameters()) == round(mparams * 1e6)
    assert _counted_macs(net) == pytest.approx(mflops * 1e6, abs=1)
    cost = nb201_cost(arch_str)  # the analytic count agrees with the module
    assert cost == {"flops": pytest.approx(mflops * 1e6, abs=1), "params": round(mparams * 1e6)}


def test_official_index_and_string():
    assert nb201_resolve(ISSUE_EXAMPLE) == (1, ISSUE_EXAMPLE)
    assert nb201_resolve("0")[1].startswith("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|")
    assert nb201_resolve(1462)[1] == "|" + "|+|".join("|".join(f"nor_conv_3x3~{i}" for i in range(n))
                                                     for n in (1, 2, 3)) + "|"  # the all-3x3 cell, the largest
    assert nb201_resolve(NB201_SIZE - 1)[0] == NB201_SIZE - 1
    assert nb201_str(parse_nb201(ISSUE_EXAMPLE)) == ISSUE_EXAMPLE
    draws = nb201_sample(50, seed=3)
    assert draws == nb201_sample(50, seed=3) != nb201_sample(50, seed=4)
    assert nb201_sample(20, seed=3) == draws[:20]
    assert len({i for i, _ in draws}) == 50 and all(nb201_resolve(s)[0] == i for i, s in draws)


@pytest.mark.parametrize("spec, message", [
    (15625, "index 15625 is out of range (0..15624)"),
    ("-1", "index -1 is out of range"),
    ("|nor_conv_3x3~0|+|conv_5x5~0|none~1|+|none~0|none~1|none~2|", "unknown NAS-Bench-201 op 'conv_5x5'"),
    ("|nor_conv_3x3~0|+|none~0|", "expected 3 nodes"),
])
def test_bad_architectures_are_one_clear_error(spec, message):
    with pytest.raises(AdaptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nb201_resolve(spec)


def test_registry_and_jobs():
    assert get_space(None).name == "proxylessnas" and get_space("NB201").name == "nasbench201"
    with pytest.raises(SpaceError, match="unknown search space 'fbnet'; known: proxylessnas, nasbench201"):
        get_space("fbnet")
    ops = get_space("nasbench201").ops()
    assert len(ops) == 1 + 3 * 5 + 2 + 1  # stem, 5 cell ops x 3 stages, 2 reduction blocks, head
    assert sum(1 for k, _ in ops if "nor_conv_3x3" in k) == 3
    job = Job.network(nb201_arch(1))
    assert job.key == ISSUE_EXAMPLE and job.what == "archs"
    row = job.describe()
    assert row["arch_index"] == 1 and row["arch_str"] == ISSUE_EXAMPLE and row["space"] == "nasbench201"
    assert json.loads(row["arch"])["arch_index"] == 1
    net, x = job.module_and_input()
    assert tuple(x.shape) == (1, 3, 32, 32) and tuple(net(x).shape) == (1, 10)
    # the default space is unchanged: its archs keep their keys
    from latbench.space import Space

    a = Space().sample(0)
    assert Job.network(a.to_dict()).key == Job.network(a).key == a.key


def test_cli_spaces_ops_and_errors(cli):
    code, out, _ = cli("spaces", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["proxylessnas", "nasbench201"]
    code, out, _ = cli("ops", "--space", "nasbench201")
    assert code == 0 and out.splitlines()[0] == "nb201-stem-input:32x32x3-output:32x32x16"
    code, out, _ = cli("ops")
    assert code == 0 and len(out.splitlines()) == 72  # the default space's keys, as before
    for argv, message in ((["ops", "--space", "fbnet"], "unknown search space 'fbnet'"),
                          (["measure", "--space", "nasbench201"], "name what to measure with --archs N"),
                          (["measure", "--space", "nasbench201", "--space-arch", "99999"], "out of range"),
                          (["measure", "--space", "nasbench201", "--archs", "2", "--op", "x"], "whole networks"),
                          (["ops", "--space", "nasbench201", "-r", "64"], "has a fixed skeleton (32x32, 10 classes)")):
        code, _, err = cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_measure_nasbench201_network_over_real_rpc(cli, fast_device, cache_dir, tmp_path):
    """A real TVM compile of a whole NAS-Bench-201 network (a cheap cell: pools, skips, none; the stem and
    reduction blocks are convolutions), checked against PyTorch, timed over RPC (the network alone: its ops
    are timed in tests/test_spaces_predict.py)."""
    code, out, err = cli("measure", "--space", "nasbench201", "--space-arch", "10330", "--target", str(fast_device),
                         "--cache", str(cache_dir), "--out", str(tmp_path), "--rounds", "1", "--max-visits", "2",
                         "--no-ops")
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "fast-cpu" / "archs-tvm.parquet")
    r = df.iloc[0]
    assert len(df) == 1 and r["status"] == "ok" and r["arch_index"] == 10330 and r["key"] == r["arch_str"]
    assert r["arch_str"] == nb201_resolve(10330)[1] and r["space"] == "nasbench201" and r["median_ms"] > 0
    assert r["max_abs_err"] < r["tolerance"]
    assert r["flops"] == nb201_cost(r["arch_str"])["flops"]


def test_order_ships_with_the_package_and_agrees_with_the_published_table():
    """The index ↔ string order comes from the package's own file (no shared directory needed: the suite
    runs with LATBENCH_SHARED pointing anywhere); it round-trips, and equals the published HELP table's when
    that table is present."""
    from latbench.nasbench201 import ORDER_FILE, official_order, read_published_order
    from latbench.paths import help_nb201_csv

    assert ORDER_FILE.is_file() and ORDER_FILE.stat().st_size < 1_000_000
    strs, index = official_order()
    assert len(strs) == len(index) == NB201_SIZE
    for i in (0, 1, 1462, 7777, 10330, NB201_SIZE - 1):
        s = nb201_resolve(i)[1]
        assert nb201_resolve(s) == (i, s) and nb201_str(parse_nb201(s)) == s and index[s] == i
    if not help_nb201_csv().exists():
        pytest.skip(f"published table {help_nb201_csv()} absent: round trip checked, agreement not")
    assert read_published_order() == strs


def test_order_needs_no_shared_dir(tmp_path, monkeypatch):
    from latbench import nasbench201

    monkeypatch.setenv("LATBENCH_SHARED", str(tmp_path))
    nasbench201._official_order.cache_clear()
    assert nb201_resolve(1) == (1, ISSUE_EXAMPLE) and nb201_sample(3, seed=0) == nb201_sample(3, seed=0)
    with pytest.raises(AdaptError, match="published NAS-Bench-201 table .* is missing"):
        nasbench201.read_published_order()


def test_regenerated_order_file_is_the_shipped_one(tmp_path):
    from latbench.nasbench201 import ORDER_FILE, write_order_file
    from latbench.paths import help_nb201_csv

    if not help_nb201_csv().exists():
        pytest.skip(f"published table {help_nb201_csv()} absent")
    assert write_order_file(tmp_path / "order.txt.gz").read_bytes() == ORDER_FILE.read_bytes()
