"""Official ProxylessNAS net configs: round trips with the space's archs, the released nets, bad input, and
whole networks measured for real (TVM compile, local RPC server) through `latbench measure`.

The fixtures ``tests/data/proxyless_{cpu,mobile}.config`` are the released Proxyless-CPU/-Mobile nets written
by hand in the official ``ProxylessNASNets.config`` format from their published structure (per-block widths,
kernels, expand ratios, skipped blocks; the official configs download from hanlab's servers). Their parameter
counts are the ones published for these nets (4,361,648 and 4,080,512 with 1000 classes), which checks
every width and block of the fixture and of the module latbench builds from it.
"""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from latbench.errors import ConfigError
from latbench.features import op_features
from latbench.modules import ConfigNetwork, Network, build_net
from latbench.netconfig import Net, NetConfig, load_net_config
from latbench.ops import OpSpec
from latbench.sampling import sample_ops
from latbench.space import ZERO, Space, random_archs
from predictors import GBDTPredictor, LUTPredictor, save_predictor

DATA = Path(__file__).resolve().parent / "data"
CPU = DATA / "proxyless_cpu.config"
MOBILE = DATA / "proxyless_mobile.config"


def conv(i: int, o: int, k: int = 3, s: int = 1) -> dict:
    return {"name": "ConvLayer", "kernel_size": k, "stride": s, "dilation": 1, "groups": 1, "bias": False,
            "has_shuffle": False, "in_channels": i, "out_channels": o, "use_bn": True, "act_func": "relu6",
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def block(i: int, o: int, k: int, e: int, s: int = 1, shortcut: bool = False) -> dict:
    return {"name": "MobileInvertedResidualBlock",
            "mobile_inverted_conv": {"name": "MBInvertedConvLayer", "in_channels": i, "out_channels": o,
                                     "kernel_size": k, "stride": s, "expand_ratio": e},
            "shortcut": {"name": "IdentityLayer", "in_channels": i, "out_channels": o, "use_bn": False,
                         "act_func": None, "dropout_rate": 0, "ops_order": "weight_bn_act"} if shortcut else None}


def tiny() -> dict:
    """A small net outside the space: a 40-channel stem, odd widths, a skipped block, 10 classes."""
    skip = block(24, 24, 3, 3, shortcut=True)
    skip["mobile_inverted_conv"] = {"name": "ZeroLayer", "stride": 1}
    return {"name": "ProxylessNASNets", "bn": {"momentum": 0.1, "eps": 0.001}, "first_conv": conv(3, 40, 3, 2),
            "blocks": [block(40, 24, 3, 1), block(24, 24, 5, 3, shortcut=True), skip, block(24, 56, 3, 6, 2)],
            "feature_mix_layer": conv(56, 128, 1),
            "classifier": {"name": "LinearLayer", "in_features": 128, "out_features": 10, "bias": True,
                           "use_bn": False, "act_func": None, "dropout_rate": 0, "ops_order": "weight_bn_act"}}


# -- arch <-> net config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [Space(32, 0.35, 10), Space(224, 1.0, 1000), Space(64, 1.4, 100)])
def test_arch_round_trips_through_the_official_format(space):
    archs = random_archs(space, 3, seed=1) + [space.smallest(), space.largest()]
    for arch in archs:
        cfg = NetConfig.from_arch(arch)
        back = NetConfig.from_dict(json.loads(cfg.to_json()))
        assert back == cfg and back.to_arch(space.resolution) == arch
        net = cfg.at(space.resolution)
        assert [o.key for o in net.op_specs] == [o.key for o in arch.op_specs]  # what the predictors price
        assert net.canonical() == arch  # measured and tabled as the arch itself
        zeros = [b for b in cfg.blocks if b.is_zero]
        assert len(zeros) == arch.ops.count(ZERO) and all(b.shortcut is not None for b in zeros)
    assert NetConfig.from_arch(archs[0]).to_arch(space.resolution * 2) != archs[0]  # resolution is not in it


def test_module_of_an_arch_config_is_the_arch_network():
    arch = random_archs(Space(32, 0.35, 10), 1, seed=4)[0]
    ref = Network(arch).eval()
    mod = ConfigNetwork(NetConfig.from_arch(arch)).eval()
    assert [(k, v.shape) for k, v in mod.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(mod(x), ref(x), atol=1e-6)


# -- the released nets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, params, stem, mix", [(CPU, 4_361_648, 40, 1432), (MOBILE, 4_080_512, 32, 1280)])
def test_released_net_loads_builds_and_runs(path, params, stem, mix):
    raw = json.loads(path.read_text())
    cfg = NetConfig.load(path)
    assert cfg.to_dict() == raw  # the official fields, written back unchanged
    module = ConfigNetwork(cfg)
    assert sum(p.numel() for p in module.parameters()) == params
    assert cfg.to_arch(224) is None  # widths outside the space
    net = cfg.at(224)
    ops = net.op_specs
    assert ops[0].key == f"Conv-input:224x224x3-output:112x112x{stem}"
    assert ops[-2].key == f"Conv_1-input:7x7x{cfg.blocks[-1].mobile_inverted_conv.out_channels}-output:7x7x{mix}"
    assert ops[-1].key == f"Logits-input:7x7x{mix}-output:1000"
    assert all(OpSpec.parse(o.key) == o for o in ops)
    n_zero = sum(b.is_zero for b in cfg.blocks)
    assert len(ops) == 3 + len(cfg.blocks) - n_zero and n_zero >= 2
    skips = [o.idskip for o in ops if o.kind == "expanded_conv"]
    want = [int(b.shortcut is not None) for b in cfg.blocks if not b.is_zero]
    assert skips == want
    small = build_net(cfg.at(32))  # the same net at a tiny resolution (1x1 before the feature mix)
    with torch.no_grad():
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_ofa_variant_of_the_format_is_the_same_network():
    """Once-for-All / MCUNet write extra fields (mid_channels, act_func, use_se, list channels, ws_eps)."""
    d = tiny()
    d["bn"]["ws_eps"] = None
    for b in d["blocks"]:
        conv = b["mobile_inverted_conv"]
        if conv["name"] == "MBInvertedConvLayer":
            e = conv["expand_ratio"]
            conv.update(mid_channels=conv["in_channels"] * e if e > 1 else None, act_func="relu6", use_se=False)
        if sc := b["shortcut"]:
            sc.update(in_channels=[sc["in_channels"]], out_channels=[sc["out_channels"]])
    ofa = NetConfig.from_dict(d)
    assert NetConfig.from_dict(ofa.to_dict()) == ofa  # its own fields round-trip
    assert ofa.at(32).key == NetConfig.from_dict(tiny()).at(32).key
    assert [o.key for o in ofa.at(32).op_specs] == [o.key for o in NetConfig.from_dict(tiny()).at(32).op_specs]
    d["blocks"][1]["mobile_inverted_conv"]["mid_channels"] = 50
    with pytest.raises(ConfigError, match=r"blocks\[1\]: mid_channels 50 is not in_channels x expand_ratio \(72\)"):
        NetConfig.from_dict(d)


# -- bad input -----------------------------------------------------------------------------------------------
def _bad(edit) -> dict:
    d = copy.deepcopy(tiny())
    edit(d)
    return d


BAD = {
    "unknown layer": (lambda d: d["blocks"][1]["mobile_inverted_conv"].update(name="SepConvLayer"),
                      "blocks[1].mobile_inverted_conv: unknown layer name 'SepConvLayer'"),
    "unknown net": (lambda d: d.update(name="MobileNetV3"), "name: unknown layer name 'MobileNetV3'"),
    "unknown shortcut": (lambda d: d["blocks"][1]["shortcut"].update(name="ZeroLayer"),
                         "blocks[1].shortcut.name: unknown layer name 'ZeroLayer'"),
    "channels": (lambda d: d["blocks"][3]["mobile_inverted_conv"].update(in_channels=32),
                 "blocks[3]: in_channels 32 does not match the 24 output channels of the layer before it"),
    "mix channels": (lambda d: d["feature_mix_layer"].update(in_channels=64),
                     "feature_mix_layer: in_channels 64 does not match the 56 output channels"),
    "classifier": (lambda d: d["classifier"].update(in_features=56),
                   "classifier: in_features 56 does not match the 128 channels"),
    "shortcut on stride 2": (lambda d: d["blocks"][3].update(shortcut=block(24, 56, 3, 6, 2, True)["shortcut"]),
                             "blocks[3]: an IdentityLayer shortcut needs stride 1 and equal channels"),
    "activation": (lambda d: d["first_conv"].update(act_func="h_swish"), "first_conv.act_func: 'h_swish' is not"),
    "se": (lambda d: d["blocks"][0]["mobile_inverted_conv"].update(use_se=True),
           "blocks[0].mobile_inverted_conv.use_se"),
    "missing": (lambda d: d.pop("classifier"), "classifier: missing field"),
    "no blocks": (lambda d: d.update(blocks=[]), "blocks: "),
    "typo field": (lambda d: d["blocks"][0]["mobile_inverted_conv"].update(kernel=3),
                   "blocks[0].mobile_inverted_conv.kernel: unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_net_config_is_one_clear_error(case):
    edit, msg = BAD[case]
    with pytest.raises(ConfigError) as e:
        NetConfig.from_dict(_bad(edit), "x.config")
    assert str(e.value).startswith("x.config: ") and msg in str(e.value) and "\n" not in str(e.value)


def test_stride_must_divide_the_feature_map():
    cfg = NetConfig.from_dict(tiny())
    assert cfg.at(32) and cfg.at(8)  # 8 -> 4 -> 2
    with pytest.raises(ConfigError, match=r"blocks\[3\]: stride 2 does not divide the 5x5 feature map at "
                                          r"resolution 10"):
        cfg.at(10)
    with pytest.raises(ConfigError, match="first_conv: stride 2 does not divide the 7x7"):
        cfg.at(7)


@pytest.mark.parametrize("command", ["measure", "predict", "compile"])
def test_cli_bad_net_configs_one_line_each(cli, tmp_path, command):
    files = {"unknown.config": json.dumps(_bad(BAD["unknown layer"][0])),
             "channels.config": json.dumps(_bad(BAD["channels"][0])),
             "malformed.config": '{"name": "ProxylessNASNets", "blocks": [',
             "ok.config": json.dumps(tiny())}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    pred = save_predictor(LUTPredictor.from_latencies({"Conv-input:32x32x3-output:16x16x40": 1.0}, resolution=32,
                                                      width_mult=None, n_classes=None), tmp_path / "p.pkl")
    pre = {"measure": ["measure", "--out", tmp_path / "out"], "compile": ["compile", "--out", tmp_path / "out"],
           "predict": ["predict", "--predictor", pred]}[command]
    expect = {"unknown.config": "unknown layer name 'SepConvLayer'",
              "channels.config": "blocks[3]: in_channels 32 does not match",
              "malformed.config": "malformed.config: not valid JSON",
              "ok.config": "blocks[3]: stride 2 does not divide the 5x5 feature map at resolution 10"}
    for name, msg in expect.items():
        code, out, err = cli(*pre, "--net-config", tmp_path / name, "--resolution", "10" if name == "ok.config"
                             else "32")
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing was built or measured


# -- prediction --------------------------------------------------------------------------------------------------
def test_predict_net_config_with_lut_and_xgb(cli, tmp_path):
    space = Space(32, 0.35, 10)
    rng = random.Random(0)
    lut = LUTPredictor.from_latencies({o.key: rng.uniform(0.01, 1) for o in space.distinct_ops()}, resolution=32,
                                      width_mult=0.35, n_classes=10)
    arch = random_archs(space, 1, seed=2)[0]
    arch_file = arch.save(tmp_path / "arch.json")
    cfg_file = NetConfig.from_arch(arch).save(tmp_path / "net.config")
    lut_file = save_predictor(lut, tmp_path / "lut.pkl")
    code, out, err = cli("predict", "-p", lut_file, "--net-config", cfg_file, "--json")
    assert code == 0, err
    assert json.loads(out)["latency_ms"] == pytest.approx(float(lut.predict(arch)))  # = the arch's prediction
    code, out, _ = cli("predict", "-p", lut_file, "--arch", arch_file, "--net-config", cfg_file, "--json")
    both = json.loads(out)
    assert [r.get("arch") or r.get("net_config") for r in both] == [str(arch_file), str(cfg_file)]
    assert both[0]["latency_ms"] == pytest.approx(both[1]["latency_ms"])
    # The LUT has none of the released net's ops: one line naming the op; xgb predicts it from features.
    code, _, err = cli("predict", "-p", lut_file, "--net-config", CPU)
    assert code == 2 and "has no latency for op Conv-input:32x32x3-output:16x16x40" in err
    ops = space.distinct_ops() + sample_ops(40, 3, resolutions=(32, 16))
    ms = [5e-9 * op_features(o)["flops"] + 0.01 for o in ops]
    gbdt = GBDTPredictor(n_estimators=30).fit(ops, ms, resolution=32, width_mult=0.35, n_classes=10)
    g_file = save_predictor(gbdt, tmp_path / "g.pkl")
    code, out, err = cli("predict", "-p", g_file, "--net-config", CPU, "--breakdown", "--json")
    assert code == 0, err
    res = json.loads(out)
    net = load_net_config(CPU, 32)
    assert [o["key"] for o in res["ops"]] == [o.key for o in net.op_specs]
    assert res["latency_ms"] == pytest.approx(sum(o["latency_ms"] for o in res["ops"]) + res["offset_ms"])
    assert res["latency_ms"] == pytest.approx(gbdt.predict_network(net.op_specs)) and res["latency_ms"] > 0
    code, out, _ = cli("predict", "-p", g_file, "--net-config", CPU)  # text output names the file
    assert code == 0 and out.strip().endswith(str(CPU))


def test_search_writes_the_official_net_config(tmp_path):
    from latbench.space import Arch
    from search.latency import flops_latencies
    from search.run import main

    lut = save_predictor(LUTPredictor.from_latencies(flops_latencies(Space(224, 0.35)), resolution=224,
                                                     width_mult=0.35, n_classes=1000), tmp_path / "lut.pkl")
    out = tmp_path / "search"
    assert main(["--predictor", str(lut), "--epochs", "1", "--warmup-epochs", "0", "--train-batches", "1",
                 "--val-batches", "1", "--test-batches", "1", "--batch-size", "4", "--resolution", "16",
                 "--threads", "1", "--out", str(out)]) == 0
    arch = Arch.load(out / "arch.json")
    cfg = NetConfig.load(out / "net.config")
    assert cfg == NetConfig.from_arch(arch) and cfg.to_arch(arch.resolution) == arch


# -- measuring whole networks for real -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_device(tmp_path_factory) -> Path:
    """The local CPU with two rounds and no extra visits: these tests check what is measured, not how well."""
    from conftest import FAST_TIMING, write_device

    return write_device(tmp_path_factory.mktemp("devices"), "fast-cpu",
                        timing={**FAST_TIMING, "rounds": 2, "max_visits": 2})


def test_measure_net_config_times_the_network_and_its_ops(cli, quick_device, tmp_path):
    cfg_file = tmp_path / "tiny.config"
    cfg_file.write_text(json.dumps(tiny()))
    net = load_net_config(cfg_file, 32)
    out = tmp_path / "data"
    args = ["measure", "--target", quick_device, "--net-config", cfg_file, "-r", "32", "--out", out]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "1 networks measured on fast-cpu (0 errors)" in stdout and "6 of their 6 ops" in stdout
    nets = pd.read_parquet(next((out / "fast-cpu").glob("archs-*.parquet")))
    ops = pd.read_parquet(next((out / "fast-cpu").glob("ops-*.parquet")))
    assert list(nets["key"]) == [net.key] and (nets["status"] == "ok").all()
    row = nets.iloc[0]
    assert row["kind"] == "arch" and row["resolution"] == 32 and row["n_classes"] == 10
    assert NetConfig.from_dict(json.loads(row["net_config"])) == net.config  # the table says what was timed
    assert row["median_ms"] > 0 and row["max_abs_err"] < row["tolerance"]  # TVM agrees with the PyTorch module
    assert sorted(ops["key"]) == sorted(o.key for o in net.op_specs) and (ops["status"] == "ok").all()
    assert set(ops["rounds"]) == set(nets["rounds"])  # one campaign: the same interleaved rounds
    assert f"{row['median_ms']:10.4f} ms  {cfg_file}" in stdout
    # resumable: a rerun measures nothing and reports the same number
    code, stdout2, _ = cli(*args)
    assert code == 0 and f"{row['median_ms']:10.4f} ms" in stdout2
    assert len(pd.read_parquet(next((out / "fast-cpu").glob("archs-*.parquet")))) == 1


def test_compile_net_config_builds_the_network_for_offline_timing(cli, quick_device, tmp_path):
    cfg_file = tmp_path / "tiny.config"
    cfg_file.write_text(json.dumps(tiny()))
    net = load_net_config(cfg_file, 32)
    code, out, err = cli("compile", "--target", quick_device, "--net-config", cfg_file, "-r", "32",
                         "--out", tmp_path / "set", "--json")
    assert code == 0, err
    assert json.loads(out)["built"] == 1
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    (entry,) = [e for e in manifest["entries"] if e.get("role") != "reference"]
    assert entry["key"] == net.key and entry["status"] == "ok"


def test_measure_random_archs_then_the_same_arch_and_its_net_config(cli, quick_device, tmp_path, caplog):
    """``--archs 1 --seed 0`` at 32 px is the first network `latbench evaluate`'s test measures: through the
    shared artifact cache ($LATBENCH_CACHE) the suite compiles it once."""
    out = tmp_path / "data"
    common = ["-r", "32", "--target", quick_device, "--out", out, "--no-ops"]
    code, stdout, err = cli("measure", "--archs", "1", "--seed", "0", *common)
    assert code == 0, err
    arch = random_archs(Space(32), 1, seed=0)[0]
    table = next((out / "fast-cpu").glob("archs-*.parquet"))
    nets = pd.read_parquet(table)
    assert list(nets["key"]) == [arch.key] and nets["status"].tolist() == ["ok"]
    assert json.loads(nets["arch"].iloc[0]) == arch.to_dict()
    assert nets["max_abs_err"].iloc[0] < nets["tolerance"].iloc[0]
    assert not list((out / "fast-cpu").glob("ops-*.parquet"))  # --no-ops
    # the same network as an arch file and as its official net.config: already measured, nothing new
    caplog.set_level("INFO", logger="latbench.campaign")
    arch_file = arch.save(tmp_path / "arch.json")
    cfg_file = NetConfig.from_arch(arch).save(tmp_path / "net.config")
    code, stdout, err = cli("measure", "--arch", arch_file, "--net-config", cfg_file, *common)
    assert code == 0, err
    assert "0 to measure, 1 already done" in caplog.text
    ms = f"{nets['median_ms'].iloc[0]:10.4f} ms"
    assert f"{ms}  {arch_file}" in stdout and f"{ms}  {cfg_file}" in stdout
    assert len(pd.read_parquet(table)) == 1
    code, _, err = cli("measure", "--archs", "-1", *common)
    assert code == 2 and "--archs must be >= 1" in err


def test_net_round_trips_through_a_job():
    from latbench.jobs import Job

    net = Net(NetConfig.from_dict(tiny()), 32)
    job = Job.network(net)
    assert job.key == net.key and job.what == "archs" and isinstance(job.net, Net)
    assert job.net.key == net.key and job.describe()["resolution"] == 32
    module, x = job.module_and_input()
    assert tuple(x.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        assert module(x).shape == (1, 10)
        assert np.allclose(module(x).numpy(), build_net(net)(x).numpy())  # seeded from the key: same weights
