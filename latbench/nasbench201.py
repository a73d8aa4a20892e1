"""NAS-Bench-201 cells: parse an ``arch_str`` and turn it into features for latency models.

A cell string lists, per node 1..3, its input edges ``op~from``:
``|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from latbench.errors import AdaptError

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Edges of a NAS-Bench-201 cell as (to_node, from_node), in ``arch_str`` order.
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NB201_FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"count_{o}" for o in NB201_OPS) + tuple(f"live_{o}" for o in NB201_OPS)
    + ("connected",) + tuple(f"e{t}{f}_{o}" for t, f in NB201_EDGES for o in NB201_OPS)
)
_NB201_NODE = re.compile(r"([a-z_0-9]+)~(\d+)")


def parse_nb201(arch_str: str) -> list[str]:
    """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` → the 6 edge ops in :data:`NB201_EDGES` order."""
    if not isinstance(arch_str, str):
        raise AdaptError(f"a NAS-Bench-201 cell string is text, got {type(arch_str).__name__}")
    nodes = arch_str.strip().strip("|").split("|+|")
    ops: list[str] = []
    if len(nodes) != 3:
        raise AdaptError(f"not a NAS-Bench-201 cell string: {arch_str!r} (expected 3 nodes separated by '+')")
    for to, node in enumerate(nodes, start=1):
        edges = _NB201_NODE.findall(node)
        if [int(f) for _, f in edges] != list(range(to)):
            raise AdaptError(f"not a NAS-Bench-201 cell string: {arch_str!r} (node {to} must list inputs 0..{to - 1})")
        for op, _ in edges:
            if op not in NB201_OPS:
                raise AdaptError(f"unknown NAS-Bench-201 op {op!r} in {arch_str!r}; known: {', '.join(NB201_OPS)}")
            ops.append(op)
    return ops


def nb201_features(arch_str: str) -> np.ndarray:
    """Features of a NAS-Bench-201 cell: op counts, counts of ops on a live input→output path,
    whether the output is connected, and a one-hot op per edge (:data:`NB201_FEATURE_NAMES`)."""
    ops = parse_nb201(arch_str)
    edge_op = dict(zip(NB201_EDGES, ops))
    fwd = {0}  # nodes reachable from the input through non-'none' edges
    for to in (1, 2, 3):
        if any(edge_op[(to, f)] != "none" and f in fwd for f in range(to)):
            fwd.add(to)
    bwd = {3}  # nodes that reach the output
    for frm in (2, 1, 0):
        if any(edge_op[(t, frm)] != "none" and t in bwd for t in range(frm + 1, 4)):
            bwd.add(frm)
    counts = [ops.count(o) for o in NB201_OPS]
    live = [0] * len(NB201_OPS)
    for (t, f), o in edge_op.items():
        if o != "none" and f in fwd and t in bwd:
            live[NB201_OPS.index(o)] += 1
    onehot = [1.0 if edge_op[e] == o else 0.0 for e in NB201_EDGES for o in NB201_OPS]
    return np.array(counts + live + [float(3 in fwd)] + onehot, dtype=float)


def detect_feature_kind(ids: Sequence[str]) -> str | None:
    """``nb201`` when the ids look like NAS-Bench-201 cell strings, else ``None``."""
    sample = [s for s in list(ids)[:20]]
    try:
        for s in sample:
            parse_nb201(s)
    except AdaptError:
        return None
    return "nb201" if sample else None
