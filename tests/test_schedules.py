"""The TVM backends built in issue 7: schedule rules (x86 + aarch64), CUDA fatbins, tuning database.

Fast tests cover every schedule pattern of the space (one op per pattern: stem, each MBConv shape
class — expand 1 / expand >1, stride 1/2, residual or not — at every feature-map width, feature
mix, classifier) at a small resolution and width 0.75, plus the 224 ops with the widest maps.
``-m slow`` runs every distinct op of the space at 224 and 32, width 1.0 and 0.75.
Numerics: the scheduled x86 code runs in-process (Relax VM) and is compared with PyTorch; the aarch64
(NEON) builds of the same ops run under qemu against PyTorch in ``test_bundle.py`` (``-m slow``).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
import tvm_ffi  # noqa: E402
from tvm import relax  # noqa: E402

from latbench.backends.tvm import export_relax  # noqa: E402
from latbench.backends.tvm_schedules import (  # noqa: E402
    apply_rules,
    channels_fill_better,
    column_tile,
    depthwise_tile,
    pack_array,
    pair_tile,
    parallel_speedup_bound,
    prepare,
    projection_vectors,
    row_pieces,
    row_tile,
    vector_lanes,
)
from latbench.devices import device_from_dict, get_device  # noqa: E402
from latbench.errors import LatbenchError  # noqa: E402
from latbench.modules import build_op_module, example_input  # noqa: E402
from latbench.ops import OpSpec  # noqa: E402
from latbench.space import Space  # noqa: E402

X86 = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
CONFIGS = [(224, 1.0), (224, 0.75), (32, 1.0), (32, 0.75)]


def covering_ops(space: Space) -> list[OpSpec]:
    """One op per schedule pattern (kind, map width, stride, residual, expand 1), kernels rotated."""
    groups: dict[tuple, list[OpSpec]] = {}
    for op in space.distinct_ops():
        groups.setdefault((op.kind, op.in_w, op.stride, op.idskip, op.expand == 1), []).append(op)
    return [ops[i % len(ops)] for i, ops in enumerate(groups.values())]


_EXPORTS: dict[str, tuple] = {}


def exported(op: OpSpec):
    """(torch module, input, Relax module, PyTorch output) of an op, exported once per session."""
    if op.key not in _EXPORTS:
        m = build_op_module(op)
        x = example_input(op.input_shape, op.key)
        with torch.no_grad():
            ref = m(x).numpy()
        _EXPORTS[op.key] = (m, x, export_relax(m, x), ref)
    return _EXPORTS[op.key]


def lower(op: OpSpec, target: dict):
    _, _, mod, _ = exported(op)
    tgt = tvm.target.Target(target)
    return apply_rules(prepare(mod, tgt), tgt), tgt


def check_x86(op: OpSpec) -> dict:
    """Schedule, compile and run ``op`` on this CPU; assert it matches PyTorch; return the notes."""
    (mod, notes), tgt = lower(op, X86)
    assert notes["fallbacks"] == [], notes["fallbacks"]
    assert len(notes["rules"]) >= 1
    ex = tvm.compile(mod, target=tgt)
    _, x, _, ref = exported(op)
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * max(scale, 1.0), err_msg=op.key)
    return notes


def check_aarch64(op: OpSpec) -> None:
    """Schedule and compile ``op`` for a NEON core (no run: this machine is x86)."""
    (mod, notes), tgt = lower(op, AARCH64)
    assert notes["fallbacks"] == [], notes["fallbacks"]
    assert notes["vector_lanes"] == 4
    ex = tvm.compile(mod, target=tgt)
    assert ex is not None


# -- tile choice -----------------------------------------------------------------------------------
def test_vector_lanes_follow_the_target():
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "znver5"})) == 16  # AVX-512
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})) == 8  # AVX2
    assert vector_lanes(tvm.target.Target(AARCH64)) == 4  # NEON


@pytest.mark.parametrize("width,lanes,tile", [(30, 16, 10), (30, 8, 6), (32, 16, 16), (114, 16, 6), (118, 16, 2),
                                              (16, 16, 16), (18, 16, 6), (8, 4, 4), (2, 16, 2)])
def test_pair_tile_keeps_even_odd_column_pairs_whole(width, lanes, tile):
    """A padding block scattering rows into even/odd planes vectorises whole column pairs, never past the lanes."""
    assert pair_tile(width, lanes) == tile and tile % 2 == 0 and width % tile == 0 and tile <= lanes


@pytest.mark.parametrize("vectors,cin,cout,pv", [(196, 144, 24, 4), (196, 24, 144, 1), (49, 240, 40, 1),
                                                 (98, 144, 24, 2), (784, 96, 16, 4), (4, 32, 32, 1)])
def test_projection_tiles_read_several_vectors_per_input_channel(vectors, cin, cout, pv):
    """A 1x1 conv reducing over more channels than it outputs takes whole pixel vectors dividing the map, up to 4."""
    assert projection_vectors(vectors, cin, cout) == pv and vectors % pv == 0


def test_56px_projection_tile_spans_four_vectors_and_matches_pytorch():
    op = OpSpec.parse("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1")
    notes = check_x86(op)
    lanes = notes["vector_lanes"]
    flat = sorted(r.split()[1] for r in notes["rules"].values() if r.startswith("pointwise-flat"))
    expand, projection = sorted(flat, key=lambda t: t.count("x"))  # F x lanes, F x vectors x lanes
    assert expand.endswith(f"x{lanes}") and projection.endswith(f"x4x{lanes}"), notes["rules"]
    assert int(projection.split("x")[0]) * 4 <= int(expand.split("x")[0]), notes["rules"]  # same registers


def test_28px_projection_prefetches_its_next_tile_and_matches_pytorch():
    """A projection reading one vector per input plane and step (28x28 at 16 lanes: 49 vectors, no multiple of 4)
    prefetches the next tile; one reading several vectors per plane (56x56) and the expansion do not."""
    for key in ["expanded_conv-input:28x28x40-output:28x28x40-expand:6-kernel:3-stride:1-idskip:1",
                "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1"]:
        op = OpSpec.parse(key)
        (mod, notes), _ = lower(op, X86)
        want = int(projection_vectors(op.in_w * op.in_w // notes["vector_lanes"], 6 * op.in_ch, op.out_ch) == 1)
        flat = [name for name, rule in notes["rules"].items() if rule.startswith("pointwise-flat")]
        prefetching = [name for name in flat if "llvm.prefetch" in mod[name].script()]
        assert len(flat) == 2 and len(prefetching) == want, (key, notes["rules"], prefetching)
        if want:
            (name,) = prefetching
            assert mod[name].params[0].shape[1] > mod[name].params[-1].shape[1]  # the projection
            check_x86(op)


@pytest.mark.parametrize("width,lanes,tile", [(112, 8, 8), (112, 16, 16), (56, 16, 14), (28, 8, 7), (14, 8, 14),
                                              (7, 8, 7), (7, 4, 7), (13, 4, 1), (1, 16, 1), (96, 16, 16)])
def test_column_tile_divides_the_width(width, lanes, tile):
    assert column_tile(width, lanes) == tile
    assert width % column_tile(width, lanes) == 0


@pytest.mark.parametrize("width,kernel,lanes,budget,registers,halves,tile", [
    (56, 3, 16, 12, 32, True, (56, 2)),  # 7 half vectors a row: 14 accumulators, 2 rows
    (56, 5, 16, 12, 32, True, (56, 4)),  # a larger kernel reuses each input row more: up to 28 accumulators
    (56, 7, 16, 12, 32, True, (56, 2)),  # 7x7 in half vectors: half of that (4 rows spilled)
    (56, 7, 16, 12, 32, False, (56, 7)),  # whole vectors (a conv on shuffled planes): 4 a row, 7 rows
    (28, 3, 16, 12, 32, True, (28, 4)),
    (14, 7, 16, 12, 32, True, (14, 7)),
    (112, 7, 16, 12, 32, True, (16, 8)),  # one vector a row: the budget already allows 8 rows
    (28, 7, 8, 8, 16, True, (28, 2)),  # AVX2: 16 registers leave no room for more rows; no half vectors
])
def test_depthwise_tile_rows_grow_with_the_kernel_within_the_registers(width, kernel, lanes, budget, registers,
                                                                      halves, tile):
    xt, yt = depthwise_tile(width, width, lanes, budget, kernel, registers, halves)
    assert (xt, yt) == tile and width % yt == 0
    vectors = row_pieces(xt, lanes) if halves else -(-xt // lanes)
    assert yt * vectors <= max(budget, registers - 4)


@pytest.mark.parametrize("columns,lanes,pieces", [(56, 16, 7), (28, 16, 2), (112, 16, 7), (14, 16, 1), (28, 8, 4),
                                                  (56, 8, 7), (7, 16, 1), (14, 4, 4)])
def test_row_pieces_use_half_vectors_only_where_they_fill_whole_8_lane_registers(columns, lanes, pieces):
    assert row_pieces(columns, lanes) == pieces


@pytest.mark.parametrize("mcpu,stem,pointwise", [("skylake-avx512", "conv 16x16", "conv 12x14"),
                                                 ("znver3", "conv 8x8", "conv 4x14")])
def test_a_strided_conv_tile_takes_more_output_channels(mcpu, stem, pointwise):
    """The stem's strided input loads are amortised over 16 output channels where 32 registers allow it (8 with
    AVX2's 16); a stride-1 conv (the 14-column 1x1s) keeps the accumulator budget."""
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    for op, rule in ((Space(224).fixed_ops[0], stem), (OpSpec.parse(
            "expanded_conv-input:14x14x96-output:14x14x96-expand:6-kernel:3-stride:1-idskip:1"), pointwise)):
        _, _, mod, _ = exported(op)
        rules = apply_rules(prepare(mod, tgt), tgt)[1]["rules"]
        assert any(r.startswith(rule) for r in rules.values()), rules


def test_row_tile_divides_the_channels():
    assert row_tile(24, 12) == 12 and row_tile(40, 12) == 10 and row_tile(1280, 8) == 8 and row_tile(3, 8) == 3


def test_pack_array_puts_each_weight_where_the_index_map_says():
    w = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8, 3, 2)
    packed = pack_array(w, lambda f, c, k: (f // 4, c, k, f % 4), (2, 3, 2, 4))
    for f, c, k in np.ndindex(w.shape):
        assert packed[f // 4, c, k, f % 4] == w[f, c, k]


def _weight_shapes(mod) -> dict[str, list[tuple[int, ...]]]:
    return {gv.name_hint: [tuple(int(d) for d in p.shape) for p in f.params]
            for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("key", [
    "expanded_conv-input:8x8x24-output:8x8x24-expand:6-kernel:3-stride:1-idskip:1",  # pointwise-flat (64 px)
    "expanded_conv-input:2x2x72-output:2x2x72-expand:6-kernel:5-stride:1-idskip:1",  # pointwise-channels (2x2)
    "Logits-input:1x1x960-output:1000",  # dense
])
def test_constant_weights_are_packed_tile_major_and_still_match_pytorch(key):
    """The weights a 1×1 conv or dense tile reads are packed channel-tile-major (the PrimFunc's parameter and the
    constant every call passes alike) and the op still matches PyTorch; a PrimFunc that no Relax function in the
    module calls (how tvm-tuned schedules one function to time it) keeps its layouts."""
    op = OpSpec.parse(key)
    _, _, mod, _ = exported(op)
    tgt = tvm.target.Target(X86)
    fused = prepare(mod, tgt)
    before = _weight_shapes(fused)
    notes = check_x86(op)
    after = _weight_shapes(apply_rules(prepare(mod, tgt), tgt)[0])
    packed = notes["packed_weights"]
    assert packed and all(n in before for n in packed), notes
    for name in packed:  # one more axis: the output channels split into (tile, lane)
        changed = [(a, b) for a, b in zip(before[name], after[name]) if a != b]
        assert len(changed) == 1 and len(changed[0][1]) == len(changed[0][0]) + 1, changed
        assert int(np.prod(changed[0][0])) == int(np.prod(changed[0][1]))
    assert set(packed) >= {n for n in before if "matmul" in n or ("conv2d" in n and "pointwise" in
                                                                  notes["rules"].get(n, ""))}
    gv = next(g for g in fused.functions if g.name_hint == packed[0])
    alone, alone_notes = apply_rules(tvm.IRModule({gv: fused[gv]}), tgt)
    assert alone_notes["packed_weights"] == [] and _weight_shapes(alone)[gv.name_hint] == before[gv.name_hint]


def _unrolled_reductions(func) -> list[int]:
    """Extents of the unrolled loops that drive a reduction axis of ``func`` (from its TVMScript)."""
    text = func.script()
    loops = dict(re.findall(r"for (\w+) in T\.unroll\((?:T\.int64\()?(\d+)", text))
    bound = [line for line in text.splitlines() if "T.axis.reduce(" in line]  # v = T.axis.reduce(n, expr)
    for kinds, names in re.findall(r'T\.axis\.remap\("(\w+)", \[([^\]]*)\]\)', text):  # "SSR", [a, b, c]
        bound += [n for k, n in zip(kinds, names.split(", ")) if k == "R"]
    return sorted({int(n) for name, n in loops.items() if any(re.search(rf"\b{name}\b", b) for b in bound)})


@pytest.mark.parametrize("key,pattern,unroll", [
    ("Logits-input:1x1x960-output:1000", "matmul", 16),  # K = 960: DENSE_UNROLL
    ("expanded_conv-input:8x8x24-output:8x8x24-expand:6-kernel:3-stride:1-idskip:1", "conv2d_add", 8),  # 24 -> 8
    ("expanded_conv-input:2x2x72-output:2x2x72-expand:6-kernel:5-stride:1-idskip:1", "conv2d_add", 8),  # channels
    ("Conv-input:32x32x3-output:16x16x24", "conv2d", 3),  # the stem: its 3 input channels
])
def test_conv_and_dense_reductions_are_unrolled(key, pattern, unroll):
    """The input-channel reduction of a conv or dense register tile is unrolled by its largest divisor up to
    REDUCTION_UNROLL (DENSE_UNROLL for a dense layer): rolled, LLVM re-packed the classifier's 40-wide tile from
    scalars every step (2.6x slower)."""
    op = OpSpec.parse(key)
    _, _, mod, _ = exported(op)
    tgt = tvm.target.Target(X86)
    out, notes = apply_rules(prepare(mod, tgt), tgt)
    funcs = {gv.name_hint: f for gv, f in out.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    name = min((n for n in funcs if pattern in n), key=len)
    assert _unrolled_reductions(funcs[name]) and max(_unrolled_reductions(funcs[name])) == unroll, notes["rules"]
    if pattern == "matmul":
        assert notes["rules"][name].endswith(f"k-unroll {unroll}")
    assert set(notes["parallel"]) == set(notes["rules"]) and all(notes["parallel"][n] for n in notes["rules"])
    if pattern == "matmul":  # 1000 outputs in tiles of 40: 25 tasks, 13 on the busier of 2 threads
        assert notes["parallel"][name] == [25] and parallel_speedup_bound(25, 2) == pytest.approx(25 / 13)
    depthwise = [n for n, r in notes["rules"].items() if r.startswith("depthwise")]
    assert all(_unrolled_reductions(funcs[n]) == [int(op.kernel)] for n in depthwise)  # only its taps
    check_x86(op)  # still PyTorch's numbers


# -- x86 numerics, aarch64 builds --------------------------------------------------------------------
SMALL = covering_ops(Space(32, 0.75))
BIG = [op for op in Space(224, 1.0).distinct_ops()
       if op.kind in ("Conv", "Conv_1", "Logits") or (op.in_w == 112 and op.kernel == 7 and op.expand == 1)
       or (op.in_w == 112 and op.kernel == 7 and op.expand == 6)
       or (op.in_w == 7 and op.kernel == 5 and op.expand == 6)
       or (op.in_w == 28 and op.out_w == 28 and op.kernel == 3 and op.expand == 6)
       or (op.in_w == 14 and op.out_w == 7 and op.kernel == 3 and op.expand == 3)]


@pytest.mark.parametrize("op", SMALL, ids=lambda o: o.key)
def test_patterns_match_pytorch_on_x86_and_build_for_aarch64(op):
    notes = check_x86(op)
    if op.kind == "expanded_conv":
        assert all(r.startswith(("conv", "depthwise", "pointwise")) for r in notes["rules"].values()), notes["rules"]
        assert any(r.startswith("depthwise") for r in notes["rules"].values()), notes["rules"]
    check_aarch64(op)


def test_channels_rule_only_where_rows_leave_lanes_idle():
    assert channels_fill_better(7, 7, 320, 16) and channels_fill_better(2, 2, 24, 8)
    assert channels_fill_better(2, 2, 24, 16) and channels_fill_better(1, 1, 72, 16)  # 32 px: 8 of 16 lanes
    assert not channels_fill_better(28, 28, 240, 16)  # 784 = 49 x 16: the flat rule
    assert not channels_fill_better(14, 14, 480, 16)  # a 14-column row fills 14/16 lanes
    assert not channels_fill_better(7, 7, 6, 16)  # 6 channels fill no vector
    assert not channels_fill_better(7, 7, 320, 4)  # NEON: 7 columns fill 7/8 of two vectors


def _pointwise_rules(notes: dict) -> list[str]:
    return sorted(r.split()[0] for r in notes["rules"].values() if not r.startswith("depthwise"))


@pytest.mark.parametrize("op", BIG, ids=lambda o: o.key)
def test_224_ops_match_pytorch(op):
    notes = check_x86(op)
    lanes = notes["vector_lanes"]
    if op.kind == "expanded_conv" and (op.in_w * op.in_w) % lanes == 0 and (op.out_w * op.out_w) % lanes == 0:
        # 112, 56 and 28 px: both 1x1 convs run on the flattened map
        assert _pointwise_rules(notes) == ["pointwise-flat"] * (2 if op.expand > 1 else 1), notes["rules"]
    if op.kind == "Conv_1" or (op.kind == "expanded_conv" and op.in_w == 7 and lanes == 16):
        assert set(_pointwise_rules(notes)) == {"pointwise-channels"}, notes["rules"]


@pytest.mark.parametrize("key", ["expanded_conv-input:28x28x40-output:28x28x40-expand:3-kernel:3-stride:1-idskip:1",
                                 "Conv_1-input:1x1x240-output:1x1x1280"])
def test_avx2_target_gets_8_lane_rules_that_match_pytorch(key):
    """An x86 target without AVX-512 (znver3: AVX2, runs on this CPU too) gets the 8-lane rules."""
    op = OpSpec.parse(key)
    (mod, notes), tgt = lower(op, {"kind": "llvm", "mcpu": "znver3"})
    assert notes["vector_lanes"] == 8 and notes["fallbacks"] == []
    want = "pointwise-flat" if op.in_w == 28 else "pointwise-channels"
    assert want in _pointwise_rules(notes), notes["rules"]
    for rule in notes["rules"].values():  # the vector is 8 lanes: pixels (flat) or channels
        if rule.startswith("pointwise-flat"):
            assert rule.endswith("x8"), rule
        elif rule.startswith("pointwise-channels"):
            assert rule.split()[1].startswith("8x"), rule
    _, x, _, ref = exported(op)
    y = relax.VirtualMachine(tvm.compile(mod, target=tgt), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * max(float(np.abs(ref).max()), 1.0))


ZNVER3 = {"kind": "llvm", "mcpu": "znver3"}


@pytest.mark.parametrize("key, target, split", [
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:3-stride:2-idskip:0", X86, "shuffled"),
    ("expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:5-stride:2-idskip:0", X86, "shuffled"),
    ("expanded_conv-input:64x64x16-output:32x32x24-expand:3-kernel:5-stride:2-idskip:0", ZNVER3, "shuffled"),
    ("expanded_conv-input:14x14x96-output:7x7x192-expand:6-kernel:3-stride:2-idskip:0", X86, "scattered"),
    ("expanded_conv-input:28x28x40-output:14x14x80-expand:6-kernel:3-stride:2-idskip:0", X86, "scattered"),
    ("expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:7-stride:2-idskip:0", X86, "scattered"),
])
def test_stride2_depthwise_reads_planes_split_by_shuffles_where_the_slab_is_large(key, target, split):
    """A stride-2 depthwise conv reads even and odd column planes. From a slab of SHUFFLE_SLAB_FLOATS or more
    and a kernel up to SHUFFLE_MAX_KERNEL, a copy splits them with two vector loads and two shuffles per
    2 x lanes columns, its last chunk of a row running into padding no tap reads (planes of 57, 30 and 34
    columns); otherwise the padding block scatters them itself. Either way the result is PyTorch's."""
    op = OpSpec.parse(key)
    (mod, notes), tgt = lower(op, target)
    lanes = 8 if target is ZNVER3 else vector_lanes(tvm.target.Target(X86))
    assert notes["fallbacks"] == [] and notes["vector_lanes"] == lanes
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    [name] = [n for n, r in notes["rules"].items() if r.startswith("depthwise")]
    assert notes["rules"][name].endswith(f"s2-{split}"), notes["rules"]
    script = funcs[name].script()
    assert script.count("T.Shuffle(") == (2 if split == "shuffled" else 0)
    if split == "shuffled":
        assert f"float32x{lanes}" in script
    _, x, _, ref = exported(op)
    y = relax.VirtualMachine(tvm.compile(mod, target=tgt), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * max(float(np.abs(ref).max()), 1.0))


def test_a_failing_pointwise_rule_falls_back_to_the_conv_rule_with_a_note(monkeypatch):
    import latbench.backends.tvm_schedules as rules

    def broken(*args, **kwargs):
        raise RuntimeError("pointwise rule does not apply")

    monkeypatch.setattr(rules, "_schedule_pointwise_flat", broken)
    monkeypatch.setattr(rules, "_schedule_pointwise_channels", broken)
    op = Space(32, 0.75).fixed_ops[1]  # Conv_1 at 1x1: channels rule (x86) -> generic conv rule
    _, x, mod, ref = exported(op)
    tgt = tvm.target.Target(X86)
    lowered, notes = rules.apply_rules(prepare(mod, tgt), tgt)
    assert notes["fallbacks"] == []
    assert [f["error"] for f in notes["generic_conv"]] == ["pointwise rule does not apply"]
    assert all(r.startswith("conv") for r in notes["rules"].values()), notes["rules"]
    y = relax.VirtualMachine(tvm.compile(lowered, target=tgt), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_a_failing_rule_falls_back_to_the_unscheduled_function(monkeypatch):
    import latbench.backends.tvm_schedules as rules

    def broken(*args, **kwargs):
        raise RuntimeError("rule does not apply")

    monkeypatch.setattr(rules, "_schedule_conv", broken)
    op = Space(32, 0.75).fixed_ops[0]  # the stem: one conv PrimFunc
    _, x, mod, ref = exported(op)
    tgt = tvm.target.Target(X86)
    lowered, notes = rules.apply_rules(prepare(mod, tgt), tgt)
    assert [f["error"] for f in notes["fallbacks"]] == ["rule does not apply"]
    y = relax.VirtualMachine(tvm.compile(lowered, target=tgt), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_tvm_backend_builds_a_library_with_rule_notes(tmp_path):
    from latbench.backends.base import get_backend

    op = Space(32, 0.75).fixed_ops[1]
    m, x, _, ref = exported(op)
    notes = get_backend("tvm").build(m, x, get_device("local-cpu"), tmp_path / "lib.so")
    assert notes["rules"] and "fallbacks" not in notes
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "lib.so")), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x.numpy())).numpy(), ref, rtol=1e-4, atol=1e-4)


ALL_OPS = [op for r, w in CONFIGS for op in Space(r, w).distinct_ops()]  # 4 x 72 (keys differ per config)


@pytest.mark.slow
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.key)
def test_every_op_of_the_space(op):
    """Every distinct op at 224 and 32, width 1.0 and 0.75, matches PyTorch on x86 and builds for aarch64."""
    check_x86(op)
    check_aarch64(op)
    _EXPORTS.pop(op.key, None)


# -- CUDA --------------------------------------------------------------------------------------------
H100 = get_device("h100")
CUDA_OPS = [Space(224, 1.0).fixed_ops[0], Space(224, 1.0).fixed_ops[2],
            OpSpec.parse("expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:7-stride:2-idskip:0")]


def _cuda_build(op: OpSpec, device, path: Path) -> dict:
    from latbench.backends.cuda import compile_cuda_library

    return compile_cuda_library(exported(op)[2], device, path)


@pytest.mark.parametrize("op", CUDA_OPS, ids=lambda o: o.kind)
def test_cuda_build_contains_an_sm90_binary(op, tmp_path):
    facts = _cuda_build(op, H100, tmp_path / "lib.so")
    assert facts["fatbins"] >= 1 and facts["cuda_arch"] == "sm_90a"
    assert any(a.startswith("sm_90") for a in facts["gpu_arches"])
    # The embedded cubin is a CUDA ELF: its section headers name the kernels' .nv.info sections.
    data = (tmp_path / "lib.so").read_bytes()
    start = data.find(b"\x7fELF", 1)
    assert start > 0
    cubin = tmp_path / "cubin.elf"
    cubin.write_bytes(data[start:])
    sections = subprocess.run(["readelf", "-S", "-W", str(cubin)], capture_output=True, text=True).stdout
    assert ".nv.info" in sections and ".text." in sections


def test_generic_cuda_device_builds_for_its_arch(tmp_path):
    dev = device_from_dict({"name": "a100", "target": {"kind": "cuda", "arch": "sm_80"}})
    facts = _cuda_build(Space(32, 0.75).fixed_ops[2], dev, tmp_path / "lib.so")
    assert "sm_80" in facts["gpu_arches"]


def test_source_only_cuda_library_is_refused(tmp_path):
    """In this process TVM's CUDA runtime is not loaded (no libcuda), so codegen embeds source only."""
    from latbench.backends.cuda import check_gpu_binary

    tgt = tvm.target.Target("nvidia/nvidia-h100")
    with tgt:
        ex = tvm.compile(exported(Space(32, 0.75).fixed_ops[2])[2], target=tgt)
    ex.export_library(str(tmp_path / "src.so"))
    with pytest.raises(LatbenchError, match="source-only"):
        check_gpu_binary(tmp_path / "src.so", "sm_90a")
    facts = _cuda_build(Space(32, 0.75).fixed_ops[2], H100, tmp_path / "ok.so")
    with pytest.raises(LatbenchError, match="not sm_80"):
        check_gpu_binary(tmp_path / "ok.so", "sm_80")
    assert facts["fatbins"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("op", Space(224, 1.0).distinct_ops() + Space(32, 0.75).distinct_ops(), ids=lambda o: o.key)
def test_every_op_builds_for_cuda(op, tmp_path):
    assert _cuda_build(op, H100, tmp_path / "lib.so")["fatbins"] >= 1
    _EXPORTS.pop(op.key, None)


# -- tuning database -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_tuning_database_is_reused_across_runs_and_devices(tmp_path):
    from latbench.backends.tvm_tuned import TunedTVM, tuning_db_dir

    op = Space(32, 0.75).fixed_ops[2]  # Logits: a dense and a mean task
    m, x, _, ref = exported(op)
    dev_a = get_device("local-cpu")
    first = TunedTVM(trials_per_op=2, db_dir=tmp_path / "db").build(m, x, dev_a, tmp_path / "a.so")
    assert first["tasks"] == 2 and first["tuned_tasks"] == 2 and first["tune_s"] > 0
    records = (tuning_db_dir(dev_a.tvm_target(), tmp_path / "db") / "database_tuning_record.json").read_text()
    assert records.strip()
    # Another campaign, and another device with the same target: nothing is tuned again.
    dev_b = device_from_dict({"name": "other-box", "target": dev_a.resolved_target(), "num_threads": dev_a.threads})
    for dev, name in ((dev_a, "b.so"), (dev_b, "c.so")):
        again = TunedTVM(trials_per_op=2, db_dir=tmp_path / "db").build(m, x, dev, tmp_path / name)
        assert again["tuned_tasks"] == 0 and again["tune_s"] == 0.0
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / name)), tvm.cpu())
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x.numpy())).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_tuned_is_never_slower_than_the_rules(tmp_path):
    """A "tuned" function slower than the rules' schedule of it (here: the unscheduled dense of the classifier) is
    timed against it and replaced by it; the choice is recorded, and the next build reads it instead of timing."""
    from latbench.backends.tvm_tuned import TunedTVM, tuning_db_dir

    op = Space(32, 0.75).fixed_ops[2]  # Logits: a dense and a mean
    _, x, mod, ref = exported(op)
    dev = get_device("local-cpu")
    tgt = dev.tvm_target()
    fused = prepare(mod, tgt)
    dense = next(gv for gv in fused.functions if "matmul" in gv.name_hint)
    backend = TunedTVM(trials_per_op=1, db_dir=tmp_path / "db")
    slow = tvm.IRModule(dict(fused.functions))  # a copy; its dense "tuned" to the naive nest, the rest ruled
    slow[dense] = fused[dense].with_attr("tirx.is_scheduled", True)
    slow = apply_rules(slow, tgt)[0]
    ruled = {gv.name_hint for gv in slow.functions if gv != dense and isinstance(slow[gv], tvm.tirx.PrimFunc)}
    out, notes = backend.keep_the_faster(fused, slow, ruled, tgt, dev)
    (note,) = notes
    assert note["func"] == dense.name_hint and note["timed_now"] and note["kept"] == "rules", note
    assert 0 < note["rules_ms"] < note["tuned_ms"]
    assert not tvm_ffi.structural_equal(out[dense], fused[dense])  # the rules' schedule went in
    vm = relax.VirtualMachine(tvm.compile(out, target=tgt), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x.numpy())).numpy(), ref, rtol=1e-4, atol=1e-4)
    recorded = json.loads((tuning_db_dir(tgt, tmp_path / "db") / "vs_rules.json").read_text())
    assert [c["kept"] for c in recorded.values()] == ["rules"]
    slow[dense] = fused[dense].with_attr("tirx.is_scheduled", True)
    _, again = backend.keep_the_faster(fused, slow, ruled, tgt, dev)
    assert again[0]["kept"] == "rules" and not again[0]["timed_now"]


def test_tuning_refuses_a_target_it_cannot_time_here(tmp_path):
    from latbench.backends.tvm_tuned import TunedTVM

    op = Space(32, 0.75).fixed_ops[2]
    m, x, _, _ = exported(op)
    pi = device_from_dict({"name": "pi", "target": AARCH64, "cross_compiler": "aarch64-linux-gnu-g++"})
    with pytest.raises(LatbenchError, match="tune on a machine of that architecture"):
        TunedTVM(trials_per_op=2, db_dir=tmp_path).build(m, x, pi, tmp_path / "x.so")


SEEDED_OP = "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:5-stride:2-idskip:0"
_REBUILD = """
import json, sys
from pathlib import Path
import numpy as np, torch, tvm
from tvm import relax
from latbench.backends.tvm_tuned import TunedTVM
from latbench.devices import get_device
from latbench.modules import build_op_module, example_input
from latbench.ops import OpSpec
op = OpSpec.parse(sys.argv[1]); db = Path(sys.argv[2])
m = build_op_module(op); x = example_input(op.input_shape, op.key)
notes = TunedTVM(trials_per_op=1, db_dir=db).build(m, x, get_device("local-cpu"), db / "lib.so")
vm = relax.VirtualMachine(tvm.runtime.load_module(str(db / "lib.so")), tvm.cpu())
with torch.no_grad():
    err = float(np.abs(vm["main"](tvm.runtime.tensor(x.numpy())).numpy() - m(x).numpy()).max())
print(json.dumps({"notes": notes, "err": err}, default=str))
"""


def test_tuning_is_seeded_with_the_rules_and_a_new_process_replays_the_seeds(tmp_path):
    """Before tuning, each task's rules' schedule is timed and committed as a tuning record; a campaign in another
    process then finds every task in the database, applies the seeds (the stride-2 depthwise one tensorizes with
    latbench's shuffle intrinsic, which that process registers before replaying), and matches PyTorch."""
    from tvm.s_tir import meta_schedule as ms

    from latbench.backends.tvm_tuned import TunedTVM

    op = OpSpec.parse(SEEDED_OP)
    _, _, mod, _ = exported(op)
    dev = get_device("local-cpu")
    tgt = tvm.target.Target({**dev.tvm_target().export(), "num-cores": dev.threads})
    backend = TunedTVM(trials_per_op=1, db_dir=tmp_path)
    db = backend.database(tgt)
    tasks = ms.relax_integration.extract_tasks(prepare(mod, tgt), tgt)
    seeds, notes = backend.seed(tasks, db, tgt, dev)
    assert [n["task"] for n in notes] == [t.task_name for t in tasks] and len(seeds) == len(tasks) == 3
    assert all(n["rules_ms"] > 0 for n in notes), notes
    assert any(n["rule"].endswith("s2-shuffled") for n in notes), notes
    for (workload, trace), note in zip(seeds, notes):
        (top,) = db.get_top_k(db.commit_workload(workload), 1)  # the seed is the database's record of the task
        assert str(top.trace) == str(trace)
        assert ("tensorize" in str(trace)) == note["rule"].endswith("s2-shuffled"), note
    out = subprocess.run([sys.executable, "-c", _REBUILD, SEEDED_OP, str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["notes"]["tuned_tasks"] == 0 and res["notes"]["untuned_funcs"] == [], res["notes"]
    assert len(res["notes"]["vs_rules"]) == 3  # every function came from a (seeded) tuning record
    # The 1×1 convs' seeds are the rules' code (no prefetch to tell them apart): their rules' schedule went into
    # the whole module, where their constant weights are packed.
    assert any(v.get("same_code") for v in res["notes"]["vs_rules"]), res["notes"]["vs_rules"]
    assert res["notes"]["packed_weights"], res["notes"]
    assert res["err"] < 1e-4, res["err"]
