"""The NAS-Bench-201 network as PyTorch modules, as the official code builds it.

Follows D-X-Y/AutoDL-Projects ``xautodl/models/cell_infers/tiny_network.py``, ``cells.py`` and
``cell_operations.py``: stem ``Conv3x3(3→C) + BN``; three stages of N cells (C, 2C, 4C) with a
residual reduction block (``ResNetBasicblock``, stride 2) between stages; ``BN + ReLU``; global
average pool; ``Linear(4C → classes)``. A cell sums, per node, its edges' ops applied to earlier
nodes; ``none`` is ``x * 0`` (computed, as in the official model), ``skip_connect`` the identity,
``nor_conv_kxk`` ``ReLU-Conv-BN``, ``avg_pool_3x3`` a 3×3 average pool (``count_include_pad=False``).

:class:`NB201Skeleton` is that network around any cell (the search's supernet puts a cell of mixed ops
in it, :mod:`search.nb201`); ``in_channels`` other than 3 (e.g. 1 for grey-scale training data) changes
the stem's input only.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from latbench.nasbench201 import NB201_C, NB201_CLASSES, NB201_EDGES, NB201_N, NB201Op, parse_nb201


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, k, stride, padding, bias=False),
                         nn.BatchNorm2d(cout))


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def edge_op(name: str, c: int) -> nn.Module:
    """The module of one cell edge (stride 1, c → c channels)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 op {name!r}")


class InferCell(nn.Module):
    """One cell: node j = Σ_i op_ij(node i), output = node 3. ``ops``: per edge (:data:`NB201_EDGES`
    order) an op name (built by :func:`edge_op`) or a ready module."""

    def __init__(self, ops: Sequence[str | nn.Module], c: int) -> None:
        super().__init__()
        self.edges = list(NB201_EDGES)
        self.layers = nn.ModuleList(edge_op(o, c) if isinstance(o, str) else o for o in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in (1, 2, 3):
            nodes.append(sum(layer(nodes[frm]) for (t, frm), layer in zip(self.edges, self.layers) if t == to))
        return nodes[-1]


class ResNetBasicblock(nn.Module):
    """The reduction block between stages: two ReLU-Conv-BN 3×3 (the first stride 2) + an
    ``AvgPool2d(2) → Conv1x1`` shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2, 1)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(cin, cout, 1, 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Skeleton(nn.Module):
    """The NAS-Bench-201 macro skeleton around ``cell(channels)``: stem, three stages of ``n`` cells (C, 2C,
    4C) with a reduction block between stages, ``BN + ReLU``, global average pool, ``Linear``."""

    def __init__(self, cell: Callable[[int], nn.Module], n_classes: int = NB201_CLASSES, c: int = NB201_C,
                 n: int = NB201_N, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        cells: list[nn.Module] = []
        ch = c
        for stage in range(3):
            if stage:
                cells.append(ResNetBasicblock(ch, ch * 2))
                ch *= 2
            cells += [cell(ch) for _ in range(n)]
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.global_pooling(self.lastact(self.cells(self.stem(x))))
        return self.classifier(out.flatten(1))


class NB201Network(NB201Skeleton):
    """The whole NAS-Bench-201 network of a cell string (32×32×3 input, 10 classes by default)."""

    def __init__(self, arch_str: str, n_classes: int = NB201_CLASSES, c: int = NB201_C, n: int = NB201_N,
                 in_channels: int = 3) -> None:
        ops = parse_nb201(arch_str)
        super().__init__(lambda ch: InferCell(ops, ch), n_classes, c, n, in_channels)


class Head(nn.Module):
    """The classifier of the network: ``BN + ReLU``, global average pool, ``Linear``."""

    def __init__(self, c: int, n_classes: int) -> None:
        super().__init__()
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


def nb201_op_module(op: NB201Op) -> nn.Module:
    """The module of one op of the network (:class:`latbench.nasbench201.NB201Op`), as the network builds it."""
    if op.kind == "stem":
        return nn.Sequential(nn.Conv2d(op.in_ch, op.out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(op.out_ch))
    if op.kind == "resblock":
        return ResNetBasicblock(op.in_ch, op.out_ch)
    if op.kind == "head":
        return Head(op.in_ch, op.out_ch)
    return edge_op(op.kind, op.in_ch)
