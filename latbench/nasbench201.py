"""NAS-Bench-201 cells: parse an ``arch_str`` and turn it into features for latency models.

A cell string lists, per node 1..3, its input edges ``op~from``:
``|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
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


#: The official index ↔ string order shipped with the package (package data): one cell string per line,
#: line ``i`` = official index ``i``, gzip. Derived by :func:`write_order_file` from the published HELP table
#: (``arch_index``/``arch_str`` columns of ``$LATBENCH_SHARED/data/help-nasbench201/latency_ms.csv.gz``, HELP's
#: ``str_arch2idx.pt``, MIT licence, Copyright (c) 2024 HayeonLee); regenerate with
#: ``python scripts/nb201_order.py`` (which also checks the shipped file against the table).
ORDER_FILE = Path(__file__).resolve().parent / "data" / "nasbench201_order.txt.gz"


def _check_order(strs: Sequence[str], source: object) -> tuple[str, ...]:
    strs = tuple(strs)
    if len(strs) != NB201_SIZE or len(set(strs)) != NB201_SIZE:
        raise AdaptError(f"{source} does not list the {NB201_SIZE} NAS-Bench-201 architectures once each")
    return strs


def read_published_order(path: str | Path | None = None) -> tuple[str, ...]:
    """The index → string order from the published HELP table (``arch_index``/``arch_str`` columns);
    ``path`` defaults to :func:`latbench.paths.help_nb201_csv`. Only :func:`write_order_file` and the
    tests need it: lookups use the shipped :data:`ORDER_FILE`."""
    import pandas as pd  # deferred: only regenerating the shipped file reads the table

    p = Path(path) if path else help_nb201_csv()
    if not p.exists():
        raise AdaptError(f"the published NAS-Bench-201 table {p} is missing (its arch_index ↔ arch_str columns); "
                         f"set {SHARED_ENV} to the shared directory")
    df = pd.read_csv(p, usecols=["arch_index", "arch_str"])
    if len(df) != NB201_SIZE or sorted(df["arch_index"]) != list(range(NB201_SIZE)):
        raise AdaptError(f"{p} does not list the {NB201_SIZE} NAS-Bench-201 architectures once each")
    return _check_order(df.sort_values("arch_index")["arch_str"].astype(str), p)


def write_order_file(dest: str | Path = ORDER_FILE, table: str | Path | None = None) -> Path:
    """(Re)generate the shipped order file from the published table: every string is checked to be a
    canonical cell string (:func:`nb201_str` of its parse); gzip without a timestamp, so the bytes
    depend on the order only."""
    import gzip

    strs = read_published_order(table)
    for s in strs:
        if nb201_str(parse_nb201(s)) != s:
            raise AdaptError(f"the published table lists {s!r}, not a canonical cell string")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0,
                                                filename="") as f:
        f.write(("\n".join(strs) + "\n").encode())
    return dest


@lru_cache(maxsize=2)
def _official_order(path: str) -> tuple[tuple[str, ...], dict[str, int]]:
    import gzip

    p = Path(path)
    try:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            strs = _check_order([line.strip() for line in f if line.strip()], p)
    except OSError as e:
        raise AdaptError(f"cannot read the NAS-Bench-201 order file {p} ({e}); reinstall latbench or "
                         "regenerate it with scripts/nb201_order.py") from None
    return strs, {s: i for i, s in enumerate(strs)}


def official_order() -> tuple[tuple[str, ...], dict[str, int]]:
    """(index → string, string → index) of the official NAS-Bench-201 order, from the shipped
    :data:`ORDER_FILE` (derived from HELP's ``str_arch2idx.pt``, which is the NAS-Bench-201 API's order:
    index 0 is ``|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+…``); no shared directory needed."""
    return _official_order(str(ORDER_FILE))


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


# --------------------------------------------------------------------------------------------
# ops of the network: what a NAS-Bench-201 op table holds and a LUT sums
# --------------------------------------------------------------------------------------------
#: Op kinds of the network: the stem, the residual reduction block, the head (BN-ReLU, pool, linear)
#: and the five cell-edge ops.
NB201_OP_KINDS: tuple[str, ...] = ("stem", "resblock", "head") + NB201_OPS
NB201_OP_PREFIX = "nb201-"
#: Cell ops that compute nothing: the identity compiles to no kernel at all (TVM cannot time it alone, and in
#: a network it costs nothing), so it is not measured and adds 0 ms to a LUT's sum, like ProxylessNAS' zero.
NB201_FREE_OPS: tuple[str, ...] = ("skip_connect",)
_NB201_KEY = re.compile(r"^nb201-([a-z_0-9]+)-input:(\d+)x(\d+)x(\d+)(?:-output:(\d+)x(\d+)x(\d+)|-classes:(\d+))?$")
#: Features of a NAS-Bench-201 op for latency models (:meth:`NB201Op.features`).
NB201_OP_FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"is_{k}" for k in NB201_OP_KINDS)
    + ("in_h", "in_ch", "out_h", "out_ch", "flops", "params", "weight_bytes", "act_bytes"))


@dataclass(frozen=True)
class NB201Op:
    """One op of a NAS-Bench-201 network at its shape (batch 1, fp32), keyed as :func:`nb201_op_costs` keys
    them: ``nb201-stem-input:32x32x3-output:32x32x16``, ``nb201-nor_conv_3x3-input:16x16x32``,
    ``nb201-resblock-input:32x32x16-output:16x16x32``, ``nb201-head-input:8x8x64-classes:10``."""

    kind: str
    in_h: int
    in_ch: int
    out_h: int
    out_ch: int  # the classes for the head

    @property
    def key(self) -> str:
        inp = f"{NB201_OP_PREFIX}{self.kind}-input:{self.in_h}x{self.in_h}x{self.in_ch}"
        if self.kind == "head":
            return f"{inp}-classes:{self.out_ch}"
        if self.kind in NB201_OPS:
            return inp
        return f"{inp}-output:{self.out_h}x{self.out_h}x{self.out_ch}"

    @classmethod
    def parse(cls, key: str) -> NB201Op:
        """Parse an op key of the NAS-Bench-201 network; a one-line :class:`AdaptError` otherwise."""
        m = _NB201_KEY.match(key) if isinstance(key, str) else None
        if m is None or m.group(1) not in NB201_OP_KINDS:
            raise AdaptError(f"cannot parse NAS-Bench-201 op key {key!r}: expected e.g. "
                             "nb201-nor_conv_3x3-input:32x32x16 (see `latbench ops --space nasbench201`)")
        kind, h, w, c = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        out, classes = m.group(5) is not None, m.group(8) is not None
        if h != w or classes != (kind == "head") or out != (kind in ("stem", "resblock")):
            raise AdaptError(f"cannot parse NAS-Bench-201 op key {key!r}: the {kind} op has no such shape")
        if kind == "head":
            op = cls(kind, h, c, 1, int(m.group(8)))
        elif out:
            op = cls(kind, h, c, int(m.group(5)), int(m.group(7)))
        else:
            op = cls(kind, h, c, h, c)
        if op.key != key:
            raise AdaptError(f"cannot parse NAS-Bench-201 op key {key!r}: not canonical (expected {op.key})")
        return op

    def cost(self) -> dict[str, float]:
        """FLOPs (MACs, NAS-Bench-201's count) and params, as :func:`nb201_op_costs` counts them."""
        h, c, ho, co = self.in_h, self.in_ch, self.out_h, self.out_ch
        if self.kind == "stem":
            f, p = _conv(h, c, co, 3)
            return {"flops": f, "params": p + 2 * co}
        if self.kind == "resblock":
            fa, pa = _conv(ho, c, co, 3)
            fb, pb = _conv(ho, co, co, 3)
            fd, pd_ = _conv(ho, c, co, 1)
            return {"flops": fa + fb + fd, "params": pa + pb + pd_ + 4 * co}
        if self.kind == "head":
            return {"flops": float(c * co + co), "params": float(2 * c + c * co + co)}
        k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(self.kind)
        f, p = _conv(h, c, c, k) if k else (0.0, 0.0)
        return {"flops": f, "params": p + (2 * c if k else 0)}

    def features(self) -> dict[str, float]:
        """The feature vector (:data:`NB201_OP_FEATURE_NAMES`): kind one-hot, shapes, FLOPs, params, bytes."""
        cost = self.cost()
        acts = self.in_h * self.in_h * self.in_ch + (self.out_h * self.out_h * self.out_ch
                                                    if self.kind != "head" else self.out_ch)
        out = {f"is_{k}": float(self.kind == k) for k in NB201_OP_KINDS}
        out.update({"in_h": float(self.in_h), "in_ch": float(self.in_ch), "out_h": float(self.out_h),
                    "out_ch": float(self.out_ch), "flops": cost["flops"], "params": cost["params"],
                    "weight_bytes": 4.0 * cost["params"], "act_bytes": 4.0 * acts})
        return out

    def __str__(self) -> str:
        return self.key


def is_nb201_op_key(key: object) -> bool:
    """Whether ``key`` names an op of the NAS-Bench-201 network (by its prefix; :meth:`NB201Op.parse` checks it)."""
    return isinstance(key, str) and key.startswith(NB201_OP_PREFIX)


def nb201_ops() -> list[NB201Op]:
    """The distinct ops of the standard network (what `latbench ops --space nasbench201` lists)."""
    return [NB201Op.parse(k) for k in nb201_op_costs()]


def nb201_measured_ops() -> list[NB201Op]:
    """The ops a campaign times (:func:`nb201_ops` but the free ones, :data:`NB201_FREE_OPS`)."""
    return [op for op in nb201_ops() if op.kind not in NB201_FREE_OPS]


def nb201_arch_ops(arch_str: str) -> list[NB201Op]:
    """The ops of the whole network of a cell string that cost time, with repetition (stem; per stage N
    cells × its non-free edges; the two reduction blocks; the head): what a LUT sums. The identity edges
    (:data:`NB201_FREE_OPS`) and the cells' node sums are not ops (the calibration offset holds the sums)."""
    ops = parse_nb201(arch_str)
    out: list[NB201Op] = []
    for op in nb201_ops():
        if op.kind in NB201_FREE_OPS:
            continue
        if op.kind in NB201_OPS:
            out += [op] * (NB201_N * ops.count(op.kind))
        else:
            out.append(op)
    return out
