"""The search space, op keys (official format) and the arch JSON."""
from __future__ import annotations

import json

import pytest

from latbench.errors import ConfigError
from latbench.features import FEATURE_NAMES, op_features
from latbench.ops import OpKeyError, OpSpec
from latbench.space import ZERO, Arch, Space

OFFICIAL_KEYS = [
    "Conv-input:224x224x3-output:112x112x32",
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
    "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:5-stride:1-idskip:1",
    "Conv_1-input:7x7x320-output:7x7x1280",
    "Logits-input:7x7x1280-output:1000",
]


@pytest.mark.parametrize("key", OFFICIAL_KEYS)
def test_official_keys_round_trip(key):
    assert OpSpec.parse(key).key == key


def test_space_at_224_has_the_published_72_ops():
    space = Space()
    keys = [o.key for o in space.distinct_ops()]
    assert len(keys) == len(set(keys)) == 72
    for key in OFFICIAL_KEYS:
        assert key in keys
    assert len(space.layers) == 22
    # 3 fixed + 3 first-block kernels + 6 candidates at each of the 11 distinct positions
    assert sum(k.startswith("expanded_conv-input:112x112x32") for k in keys) == 3


def test_zero_only_where_identity_is_possible():
    for layer in Space().layers:
        assert layer.can_skip == (layer.stride == 1 and layer.in_ch == layer.out_ch and layer.index > 0)


def test_uniform_networks_repeat_one_op_and_keep_every_layer():
    space = Space()
    mbv2 = space.uniform("3x3_MBConv6")  # the MobileNetV2-style net of the benchmarks
    assert mbv2.ops[0] == "3x3_MBConv1" and set(mbv2.ops[1:]) == {"3x3_MBConv6"}
    big = space.uniform("7x7_MBConv6")
    assert big.ops == space.largest().ops and ZERO not in big.ops
    assert sum(o.kind == "expanded_conv" for o in mbv2.op_specs) == len(space.layers)


@pytest.mark.parametrize("res,width", [(32, 1.0), (28, 1.0), (160, 0.75), (224, 1.4)])
def test_other_resolutions_and_widths(res, width):
    space = Space(resolution=res, width_mult=width)
    ops = space.distinct_ops()
    assert ops and all(OpSpec.parse(o.key) == o for o in ops)
    assert space.fixed_ops[0].in_h == res


@pytest.mark.parametrize("bad", [
    "Conv-input:224x224x3",
    "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:4-stride:1-idskip:1",
    "expanded_conv-input:56x56x24-output:28x28x24-expand:6-kernel:5-stride:1-idskip:0",
    "expanded_conv-input:56x56x24-output:28x28x32-expand:6-kernel:5-stride:2-idskip:1",
    "Pool-input:7x7x1280-output:1000",
])
def test_bad_keys_are_rejected(bad):
    with pytest.raises(OpKeyError):
        OpSpec.parse(bad)


def test_features_are_complete_and_sane():
    for op in Space().distinct_ops():
        f = op_features(op)
        assert tuple(f) == FEATURE_NAMES
        assert f["flops"] > 0 and f["params"] > 0 and f["act_bytes"] > 0
    big = OpSpec.parse("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1")
    small = OpSpec.parse("expanded_conv-input:56x56x24-output:56x56x24-expand:3-kernel:3-stride:1-idskip:1")
    assert op_features(big)["flops"] > op_features(small)["flops"]


def test_arch_json_round_trip(tmp_path):
    space = Space()
    arch = space.sample(3)
    path = arch.save(tmp_path / "arch.json")
    d = json.loads(path.read_text())
    assert set(d) >= {"resolution", "width_mult", "ops"} and len(d["ops"]) == 22
    assert Arch.load(path) == arch
    assert Arch.load(path).key == arch.key
    assert all(o == ZERO or o.endswith(("MBConv1", "MBConv3", "MBConv6")) for o in d["ops"])


def test_bad_arch_files_name_the_problem(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"resolution": 224, "width_mult": 1.0, "ops": ["3x3_MBConv1"]}')
    with pytest.raises(ConfigError, match="22"):
        Arch.load(p)
    ops = ["3x3_MBConv1"] + ["zero"] * 21
    p.write_text(json.dumps({"resolution": 224, "width_mult": 1.0, "ops": ops}))
    with pytest.raises(ConfigError, match="zero"):
        Arch.load(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=str(p.name)):
        Arch.load(p)
