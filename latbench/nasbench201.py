"""NAS-Bench-201 cells: parse an ``arch_str`` and turn it into features for latency models.

A cell string lists, per node 1..3, its input edges ``op~from``:
``|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from latbench.errors import AdaptError
from latbench.paths import SHARED_ENV, help_nb201_csv

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The standard macro skeleton: C channels in the first stage, N cells per stage, 32×32 input, 10 classes.
NB201_C, NB201_N, NB201_RESOLUTION, NB201_CLASSES = 16, 5, 32, 10
#: Number of architectures (5 ops on 6 edges); official indices are 0..15624.
NB201_SIZE = len(NB201_OPS) ** 6
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


# --------------------------------------------------------------------------------------------
# the whole network: official index, costs, op keys
# --------------------------------------------------------------------------------------------
def nb201_str(ops: Sequence[str]) -> str:
    """The official cell string of 6 edge ops in :data:`NB201_EDGES` order (inverse of :func:`parse_nb201`)."""
    if len(ops) != len(NB201_EDGES):
        raise AdaptError(f"a NAS-Bench-201 cell has {len(NB201_EDGES)} edges, got {len(ops)} ops")
    nodes = []
    for to in (1, 2, 3):
        nodes.append("|".join(f"{op}~{f}" for (t, f), op in zip(NB201_EDGES, ops) if t == to))
    out = "|" + "|+|".join(nodes) + "|"
    parse_nb201(out)
    return out


@lru_cache(maxsize=2)
def _official_order(path: str) -> tuple[tuple[str, ...], dict[str, int]]:
    import pandas as pd  # deferred: only the index lookup needs it

    p = Path(path)
    if not p.exists():
        raise AdaptError(f"the official NAS-Bench-201 index needs the published table {p} (its arch_index ↔ "
                         f"arch_str columns); set {SHARED_ENV} to the shared directory")
    df = pd.read_csv(p, usecols=["arch_index", "arch_str"])
    if len(df) != NB201_SIZE or sorted(df["arch_index"]) != list(range(NB201_SIZE)):
        raise AdaptError(f"{p} does not list the {NB201_SIZE} NAS-Bench-201 architectures once each")
    strs = tuple(df.sort_values("arch_index")["arch_str"].astype(str))
    return strs, {s: i for i, s in enumerate(strs)}


def official_order() -> tuple[tuple[str, ...], dict[str, int]]:
    """(index → string, string → index) of the official NAS-Bench-201 order, read from the published
    HELP table's ``arch_index``/``arch_str`` columns (HELP's ``str_arch2idx.pt``, which is the
    NAS-Bench-201 API's order: index 0 is ``|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+…``)."""
    return _official_order(str(help_nb201_csv()))


def nb201_resolve(spec: str | int) -> tuple[int, str]:
    """An architecture given by official string or index (``"1462"`` too) → ``(index, string)``."""
    text = str(spec).strip()
    strs, index = official_order()
    if isinstance(spec, int) or text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < NB201_SIZE:
            raise AdaptError(f"NAS-Bench-201 index {i} is out of range (0..{NB201_SIZE - 1})")
        return i, strs[i]
    ops = parse_nb201(text)
    canonical = nb201_str(ops)
    return index[canonical], canonical


def nb201_sample(n: int, seed: int = 0) -> list[tuple[int, str]]:
    """``n`` distinct architectures drawn uniformly with ``seed`` (the same on every machine; the first
    ``m`` of a draw of ``n`` are the draw of ``m``)."""
    if not 1 <= n <= NB201_SIZE:
        raise AdaptError(f"can draw 1..{NB201_SIZE} NAS-Bench-201 architectures, not {n}")
    strs, _ = official_order()
    picks = np.random.default_rng(seed).permutation(NB201_SIZE)[:n]  # prefix-stable: n=60 ⊂ n=300
    return [(int(i), strs[int(i)]) for i in picks]


def _conv(h: int, cin: int, cout: int, k: int) -> tuple[float, float]:
    """(MACs, params) of a bias-free k×k conv with an h×h output, + its BN's params."""
    return float(h * h * cin * cout * k * k), float(cin * cout * k * k)


def nb201_op_costs(c: int = NB201_C, n: int = NB201_N, resolution: int = NB201_RESOLUTION,
                   n_classes: int = NB201_CLASSES) -> dict[str, dict[str, float]]:
    """Op keys of the network (stem, each cell op at each stage, reduction blocks, head) with their
    FLOPs (multiply-accumulates, counted as NAS-Bench-201's ``get_model_infos``: convolutions and
    the classifier incl. its bias; pools, BN and sums not) and parameter count."""
    h = resolution
    out: dict[str, dict[str, float]] = {}
    f, p = _conv(h, 3, c, 3)
    out[f"nb201-stem-input:{h}x{h}x3-output:{h}x{h}x{c}"] = {"flops": f, "params": p + 2 * c}
    ch = c
    for stage in range(3):
        if stage:
            h2 = h // 2
            fa, pa = _conv(h2, ch, 2 * ch, 3)
            fb, pb = _conv(h2, 2 * ch, 2 * ch, 3)
            fd, pd_ = _conv(h2, ch, 2 * ch, 1)
            out[f"nb201-resblock-input:{h}x{h}x{ch}-output:{h2}x{h2}x{2 * ch}"] = {
                "flops": fa + fb + fd, "params": pa + pb + pd_ + 8 * ch}
            h, ch = h2, 2 * ch
        for op in NB201_OPS:
            k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(op)
            f, p = _conv(h, ch, ch, k) if k else (0.0, 0.0)
            out[f"nb201-{op}-input:{h}x{h}x{ch}"] = {"flops": f, "params": p + (2 * ch if k else 0)}
    out[f"nb201-head-input:{h}x{h}x{ch}-classes:{n_classes}"] = {
        "flops": float(ch * n_classes + n_classes), "params": float(2 * ch + ch * n_classes + n_classes)}
    return out


def nb201_cost(arch_str: str, c: int = NB201_C, n: int = NB201_N, resolution: int = NB201_RESOLUTION,
               n_classes: int = NB201_CLASSES) -> dict[str, float]:
    """FLOPs (MACs, NAS-Bench-201's count) and parameters of the whole network of a cell string."""
    ops = parse_nb201(arch_str)
    costs = nb201_op_costs(c, n, resolution, n_classes)
    flops = params = 0.0
    for key, v in costs.items():
        parts = key.split("-")
        times = 1
        if parts[1] in NB201_OPS:
            times = n * ops.count(parts[1])
        flops += times * v["flops"]
        params += times * v["params"]
    return {"flops": flops, "params": params}
