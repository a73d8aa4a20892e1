"""PyTorch modules for ops and whole architectures.

The same :class:`MBConv` class is used to measure ops, to build whole networks and as the
candidate paths of the search's supernet, so what is timed is what is searched. Weights are
seeded from the op key (:func:`build_op_module`), so every backend and every process sees the
same numbers and outputs can be compared across backends.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from latbench.netconfig import MBInvertedConvLayer, Net, NetConfig
from latbench.ops import OpSpec
from latbench.space import Arch, Space, ZERO, parse_candidate

BN_EPS = 1e-3  # as the official ProxylessNAS models


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU6), 'same' padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand (omitted for expand 1) → k×k depthwise → 1x1 project,
    plus the identity shortcut when ``residual`` (stride 1 and equal channels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, expand: int, stride: int,
                 residual: bool | None = None) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = conv_bn(in_ch, mid, 1, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, out_ch, 1, 1, act=False)
        self.residual = (stride == 1 and in_ch == out_ch) if residual is None else residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class Classifier(nn.Module):
    """Global average pooling + linear (the ``Logits`` op)."""

    def __init__(self, in_ch: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_ch, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x.mean(dim=(2, 3))))


def make_op_module(op: OpSpec) -> nn.Module:
    """An untrained module computing ``op`` (parameters from torch's default init)."""
    if op.kind == "expanded_conv":
        return MBConv(op.in_ch, op.out_ch, op.kernel, op.expand, op.stride, bool(op.idskip))
    if op.kind == "Conv":
        return conv_bn(op.in_ch, op.out_ch, 3, op.stride)
    if op.kind == "Conv_1":
        return conv_bn(op.in_ch, op.out_ch, 1, 1)
    return Classifier(op.in_ch, op.out_ch)


def seed_of(text: str) -> int:
    """A stable 63-bit seed from a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Give every BN non-trivial running statistics and affine parameters, so a backend that got
    BN folding wrong produces visibly wrong numbers."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def build_op_module(op: OpSpec) -> nn.Module:
    """The module of ``op`` in eval mode, with weights seeded from its key (same everywhere)."""
    torch.manual_seed(seed_of(op.key))
    m = make_op_module(op)
    randomize_bn(m, torch.Generator().manual_seed(seed_of("bn:" + op.key)))
    return m.eval()


def example_input(shape: tuple[int, ...], seed: str | int = 0) -> torch.Tensor:
    """A seeded standard-normal input of the given shape."""
    g = torch.Generator().manual_seed(seed if isinstance(seed, int) else seed_of(seed))
    return torch.randn(*shape, generator=g)


class Network(nn.Module):
    """A whole architecture of the space: stem, chosen blocks, feature mix, classifier."""

    def __init__(self, arch: Arch, dropout: float = 0.0) -> None:
        super().__init__()
        space: Space = arch.space
        stem, mix, logits = space.fixed_ops
        self.stem = conv_bn(stem.in_ch, stem.out_ch, 3, stem.stride)
        blocks = []
        for layer, choice in zip(space.layers, arch.ops):
            if choice == ZERO:
                continue
            k, e = parse_candidate(choice)
            blocks.append(MBConv(layer.in_ch, layer.out_ch, k, e, layer.stride))
        self.blocks = nn.Sequential(*blocks)
        self.feature_mix = conv_bn(mix.in_ch, mix.out_ch, 1, 1)
        self.classifier = Classifier(logits.in_ch, logits.out_ch, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_mix(self.blocks(self.stem(x))))


def build_network(arch: Arch) -> nn.Module:
    """The network of ``arch`` in eval mode, with weights seeded from its key."""
    torch.manual_seed(seed_of(arch.key))
    net = Network(arch)
    randomize_bn(net, torch.Generator().manual_seed(seed_of("bn:" + arch.key)))
    return net.eval()


class ConfigNetwork(nn.Module):
    """A network from an official net config (:mod:`latbench.netconfig`), any per-block widths.

    Built from the same blocks as :class:`Network` and with the same attribute names (``stem``,
    ``blocks`` without the identity blocks, ``feature_mix``, ``classifier``), so the net config of an
    arch of the space (:meth:`NetConfig.from_arch`) gives a module whose ``state_dict`` is
    interchangeable with ``Network(arch)``'s. BN momentum/eps come from the config's ``bn``.
    """

    def __init__(self, config: NetConfig, dropout: float | None = None) -> None:
        super().__init__()
        fc = config.first_conv
        self.stem = conv_bn(fc.in_channels, fc.out_channels, fc.kernel_size, fc.stride)
        blocks = []
        for blk in config.blocks:
            conv = blk.mobile_inverted_conv
            if isinstance(conv, MBInvertedConvLayer):
                blocks.append(MBConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.expand_ratio,
                                     conv.stride, residual=blk.shortcut is not None))
        self.blocks = nn.Sequential(*blocks)
        fm = config.feature_mix_layer
        self.feature_mix = conv_bn(fm.in_channels, fm.out_channels, 1, 1) if fm is not None else nn.Identity()
        cl = config.classifier
        self.classifier = Classifier(cl.in_features, cl.out_features,
                                     cl.dropout_rate if dropout is None else dropout)
        if config.bn is not None:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = config.bn.momentum
                    m.eps = config.bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_mix(self.blocks(self.stem(x))))


def build_net(net: Net) -> nn.Module:
    """The network of a net config at a resolution in eval mode, with weights seeded from its key."""
    torch.manual_seed(seed_of(net.key))
    module = ConfigNetwork(net.config)
    randomize_bn(module, torch.Generator().manual_seed(seed_of("bn:" + net.key)))
    return module.eval()
