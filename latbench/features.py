"""Analytic features of an op for latency predictors: FLOPs, params, memory traffic, shapes; and of a
whole ProxylessNAS architecture (:func:`arch_features`, used by the proxy adapter and the arch-level GBDT).

Counts are for batch 1, fp32, with BN folded into the convs (as deployed). A multiply-add counts
as 2 FLOPs. ``act_bytes`` is the activation traffic of an unfused implementation (every
intermediate tensor written once and read once), ``weight_bytes`` the parameters read once.
"""
from __future__ import annotations

import math

import numpy as np

from latbench.ops import OpSpec
from latbench.space import ZERO, Arch, parse_candidate

BYTES = 4  # fp32

#: Column names of :func:`op_features`, in a stable order (predictors rely on it).
FEATURE_NAMES: tuple[str, ...] = (
    "is_stem", "is_mbconv", "is_feature_mix", "is_logits",
    "in_h", "in_w", "in_ch", "out_h", "out_w", "out_ch", "mid_ch",
    "kernel", "stride", "expand", "idskip",
    "flops", "params", "weight_bytes", "act_bytes", "in_bytes", "out_bytes",
    "flops_expand", "flops_depthwise", "flops_project", "arith_intensity",
)


def _conv_flops(h: int, w: int, cin: int, cout: int, k: int, groups: int = 1) -> int:
    return 2 * h * w * cout * (cin // groups) * k * k


def op_features(op: OpSpec) -> dict[str, float]:
    """The feature vector of an op as a dict keyed by :data:`FEATURE_NAMES`."""
    hi, wi, ci = op.in_h, op.in_w, op.in_ch
    ho, wo, co = op.out_h, op.out_w, op.out_ch
    mid = op.mid_ch
    f_exp = f_dw = f_proj = 0
    if op.kind == "expanded_conv":
        has_expand = op.expand != 1
        if has_expand:
            f_exp = _conv_flops(hi, wi, ci, mid, 1)
        f_dw = _conv_flops(ho, wo, mid, mid, op.kernel, groups=mid)
        f_proj = _conv_flops(ho, wo, mid, co, 1)
        params = (ci * mid + mid if has_expand else 0) + (mid * op.kernel**2 + mid) + (mid * co + co)
        acts = hi * wi * ci + (hi * wi * mid if has_expand else 0) + ho * wo * mid + ho * wo * co
        flops = f_exp + f_dw + f_proj + (ho * wo * co if op.idskip else 0)
    elif op.kind == "Logits":
        flops = hi * wi * ci + 2 * ci * co
        params = ci * co + co
        acts = hi * wi * ci + ci + co
    else:  # Conv (stem, 3x3 s2) and Conv_1 (1x1)
        flops = _conv_flops(ho, wo, ci, co, op.kernel)
        params = ci * co * op.kernel**2 + co
        acts = hi * wi * ci + ho * wo * co
    weight_bytes = params * BYTES
    act_bytes = acts * BYTES
    return {
        "is_stem": float(op.kind == "Conv"),
        "is_mbconv": float(op.kind == "expanded_conv"),
        "is_feature_mix": float(op.kind == "Conv_1"),
        "is_logits": float(op.kind == "Logits"),
        "in_h": hi, "in_w": wi, "in_ch": ci, "out_h": ho, "out_w": wo, "out_ch": co, "mid_ch": mid,
        "kernel": op.kernel, "stride": op.stride, "expand": op.expand, "idskip": op.idskip,
        "flops": float(flops), "params": float(params),
        "weight_bytes": float(weight_bytes), "act_bytes": float(act_bytes),
        "in_bytes": float(hi * wi * ci * BYTES), "out_bytes": float(ho * wo * co * BYTES),
        "flops_expand": float(f_exp), "flops_depthwise": float(f_dw), "flops_project": float(f_proj),
        "arith_intensity": float(flops) / float(weight_bytes + act_bytes),
    }


#: The first columns of :func:`arch_features` (then two per searchable layer: :func:`arch_feature_names`).
ARCH_HEAD_FEATURES: tuple[str, ...] = ("log_flops", "log_params", "log_weight_bytes", "log_act_bytes",
                                       "log_flops_depthwise", "resolution", "width_mult", "n_blocks")


def arch_feature_names(n_layers: int) -> tuple[str, ...]:
    """Column names of :func:`arch_features` for an architecture of ``n_layers`` searchable layers."""
    return ARCH_HEAD_FEATURES + tuple(f"layer{i}_{p}" for i in range(n_layers) for p in ("kernel", "expand"))


def arch_features(arch: Arch) -> np.ndarray:
    """Features of a ProxylessNAS :class:`~latbench.space.Arch` (:func:`arch_feature_names`): summed
    FLOPs/params/bytes of its ops, resolution, width, and per searchable layer its kernel and expand
    (0 for ``zero``)."""
    tot = {"flops": 0.0, "params": 0.0, "weight_bytes": 0.0, "act_bytes": 0.0, "flops_depthwise": 0.0}
    for op in arch.op_specs:
        f = op_features(op)
        for k in tot:
            tot[k] += f[k]
    per_layer: list[float] = []
    for name in arch.ops:
        k, e = (0, 0) if name == ZERO else parse_candidate(name)
        per_layer += [float(k), float(e)]
    head = [math.log(tot["flops"]), math.log(tot["params"]), math.log(tot["weight_bytes"]),
            math.log(tot["act_bytes"]), math.log(max(tot["flops_depthwise"], 1.0)),
            float(arch.resolution), float(arch.width_mult), float(sum(o != ZERO for o in arch.ops))]
    return np.array(head + per_layer, dtype=float)
