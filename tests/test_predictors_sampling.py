"""Random MBConv configurations for predictor training data (``latbench measure --sample N``)."""
from __future__ import annotations

import random

import pytest

from latbench.errors import LatbenchError
from latbench.features import op_features
from latbench.ops import OpSpec
from latbench.sampling import DEPTH_CHANNELS, sample_ops
from latbench.space import Space


def test_seeded_distinct_and_valid():
    a = sample_ops(200, 3)
    assert [o.key for o in a] == [o.key for o in sample_ops(200, random.Random(3))]
    assert [o.key for o in a] != [o.key for o in sample_ops(200, 4)]
    assert len({o.key for o in a}) == 200
    for op in a:
        assert op.kind == "expanded_conv" and OpSpec.parse(op.key) == op  # official key format round-trips
        assert op.in_ch % 8 == 0 and op.out_ch % 8 == 0
        assert op.idskip == int(op.stride == 1 and op.in_ch == op.out_ch)


def test_covers_realistic_ranges_beyond_the_space():
    ops = sample_ops(300, 0)
    space_keys = {o.key for o in Space(224).distinct_ops()}
    assert sum(o.key not in space_keys for o in ops) >= 295  # beyond the fixed space
    assert {o.kernel for o in ops} == {3, 5, 7} and {o.expand for o in ops} == {1, 3, 4, 6}
    assert {o.stride for o in ops} == {1, 2}
    sizes = {o.in_h for o in ops}
    assert min(sizes) <= 10 and max(sizes) >= 100  # feature maps from late to early stages
    assert min(o.in_ch for o in ops) >= 8 and max(o.in_ch for o in ops) <= DEPTH_CHANNELS[5][1] + 8
    flops = sorted(op_features(o)["flops"] for o in ops)
    assert flops[0] > 1e5 and flops[-1] < 2e9  # measurable, not absurd


def test_options_and_exclude():
    small = sample_ops(20, 1, resolutions=(32,), depths=(1,), kernels=(3,), expands=(3,))
    assert all(o.in_h == 16 and o.kernel == 3 and o.expand == 3 for o in small)
    again = sample_ops(10, 1, resolutions=(32,), depths=(1,), kernels=(3,), expands=(3,),
                       exclude={o.key for o in small})
    assert not {o.key for o in again} & {o.key for o in small}
    with pytest.raises(LatbenchError, match="could only sample"):
        sample_ops(3000, 0, resolutions=(32,), depths=(5,), kernels=(3,), expands=(1,))
    with pytest.raises(LatbenchError, match=">= 0"):
        sample_ops(-1)
    assert sample_ops(0) == []
