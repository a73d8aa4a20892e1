"""Random MBConv configurations beyond the fixed space: training data for learned predictors.

The fixed space has only 69 MBConv ops at a resolution, all on MobileNetV2's channel plan. A learned
predictor that must generalise to other resolutions or channel counts needs ops off that plan.
:func:`sample_ops` draws them the way real networks look: an input resolution, a depth (how many
stride-2 stages came before), channel counts typical for that depth (drawn log-uniformly, so small
and large widths are equally represented), and any kernel/expand/stride.
"""
from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

from latbench.errors import LatbenchError
from latbench.ops import OpSpec, conv_out
from latbench.space import make_divisible

#: Typical (min, max) input channels of a block after ``d`` stride-2 reductions (MobileNet-like nets).
DEPTH_CHANNELS: dict[int, tuple[int, int]] = {1: (8, 48), 2: (16, 64), 3: (24, 128), 4: (48, 256), 5: (96, 448)}
RESOLUTIONS: tuple[int, ...] = tuple(range(96, 321, 16))
KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (1, 3, 4, 6)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def sample_op(rng: random.Random, resolutions: Sequence[int] = RESOLUTIONS, kernels: Sequence[int] = KERNELS,
              expands: Sequence[int] = EXPANDS, p_stride2: float = 0.3, p_same_channels: float = 0.4,
              depths: Sequence[int] = (1, 2, 3, 4, 5)) -> OpSpec:
    """One random MBConv op (see :func:`sample_ops`)."""
    res = rng.choice(list(resolutions))
    depth = rng.choice(list(depths))
    h = res
    for _ in range(depth):
        h = conv_out(h, 3, 2)
    h = max(h, 1)
    lo, hi = DEPTH_CHANNELS[min(max(depth, 1), 5)]
    in_ch = make_divisible(_log_uniform(rng, lo, hi))
    stride = 2 if rng.random() < p_stride2 and h >= 4 else 1
    if stride == 1 and rng.random() < p_same_channels:
        out_ch = in_ch
    else:
        # A stride-2 block usually widens; other blocks go either way within the depth's range.
        out_lo, out_hi = (in_ch, min(2.5 * in_ch, 2 * hi)) if stride == 2 else (lo, hi)
        out_ch = make_divisible(_log_uniform(rng, max(8, out_lo), max(8, out_hi)))
    return OpSpec.mbconv(h, h, in_ch, out_ch, rng.choice(list(kernels)), rng.choice(list(expands)), stride)


def sample_ops(n: int, rng: random.Random | int | None = None, *, resolutions: Sequence[int] = RESOLUTIONS,
               kernels: Sequence[int] = KERNELS, expands: Sequence[int] = EXPANDS, p_stride2: float = 0.3,
               depths: Sequence[int] = (1, 2, 3, 4, 5), exclude: Collection[str] = ()) -> list[OpSpec]:
    """``n`` distinct random MBConv ops (deterministic for a given seed).

    ``resolutions`` are network input sizes (the op's feature map is that halved ``depth`` times),
    ``exclude`` op keys not to return (e.g. those already measured). Raises if the ranges are too
    narrow to give ``n`` distinct ops.
    """
    if n < 0:
        raise LatbenchError(f"number of sampled ops must be >= 0, got {n}")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    seen = set(exclude)
    out: list[OpSpec] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 10 * n + 1000:
            raise LatbenchError(f"could only sample {len(out)} distinct ops of {n}: widen the ranges")
        op = sample_op(rng, resolutions, kernels, expands, p_stride2, depths=depths)
        if op.key not in seen:
            seen.add(op.key)
            out.append(op)
    return out
