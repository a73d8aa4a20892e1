"""Search spaces by name (a registry, as timm's models): ``latbench spaces`` lists them, ``--space NAME``
picks one.

``proxylessnas`` (the default) is :class:`latbench.space.Space`, with its official op keys.
``nasbench201`` is the NAS-Bench-201 cell space (:mod:`latbench.nasbench201`): architectures named by
their official string or index, whole networks built as the official code does
(:mod:`latbench.nasbench201_net`), op keys ``nb201-<op>-input:HxWxC`` with NAS-Bench-201's FLOPs
count. An architecture travels as a plain dict, ``{"space": "nasbench201", "arch_str": …,
"arch_index": …}``; a ProxylessNAS one keeps its old form (no ``space`` key).
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from latbench.errors import LatbenchError
from latbench.features import op_features
from latbench.nasbench201 import (NB201_CLASSES, NB201_OPS, NB201_RESOLUTION, NB201_SIZE, NB201Op, is_nb201_op_key,
                                  nb201_arch_ops, nb201_cost, nb201_measured_ops, nb201_op_costs, nb201_resolve,
                                  nb201_sample)
from latbench.space import Arch, Space

DEFAULT_SPACE = "proxylessnas"
NB201 = "nasbench201"


class SpaceError(LatbenchError):
    """An unknown space, or an architecture that is not one of the space's."""


@dataclass(frozen=True)
class SearchSpace:
    """One registered space: how to list its ops, draw architectures, key and describe them."""

    name: str
    description: str
    size: str
    ops: Callable[[], list[tuple[str, dict[str, float]]]]
    sample: Callable[[int, int], list[dict[str, Any]]]
    resolve: Callable[[str], dict[str, Any]]
    #: The op keys a campaign times (``ops`` but those that compute nothing); ``None``: all of ``ops``.
    measured: Callable[[], list[str]] | None = None
    #: The timed op keys of one architecture, with repetition (what a LUT sums); ``None``: not op-decomposed.
    ops_of: Callable[[dict[str, Any]], list[str]] | None = None

    def measured_ops(self) -> list[str]:
        """Keys of every op of the space a campaign times (what a LUT of the whole space needs)."""
        return self.measured() if self.measured else [k for k, _ in self.ops()]

    def arch_ops(self, arch: dict[str, Any]) -> list[str]:
        """The timed op keys of an architecture of this space, with repetition."""
        if self.ops_of is None:
            raise SpaceError(f"the {self.name} space does not list an architecture's ops")
        return self.ops_of(arch)

    def key(self, arch: dict[str, Any]) -> str:
        """The table key of an architecture of this space."""
        return arch_key(arch)


def _proxyless_ops() -> list[tuple[str, dict[str, float]]]:
    return [(o.key, op_features(o)) for o in Space().distinct_ops()]


def _proxyless_sample(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [Space().sample(rng).to_dict() for _ in range(n)]


def _proxyless_resolve(text: str) -> dict[str, Any]:
    return Arch.from_dict(json.loads(text)).to_dict()


def nb201_arch(spec: str | int) -> dict[str, Any]:
    """A NAS-Bench-201 architecture (official string or index) as the plain dict jobs carry."""
    index, arch_str = nb201_resolve(spec)
    return {"space": NB201, "arch_str": arch_str, "arch_index": index}


def _nb201_ops() -> list[tuple[str, dict[str, float]]]:
    return list(nb201_op_costs().items())


def _nb201_sample(n: int, seed: int) -> list[dict[str, Any]]:
    return [{"space": NB201, "arch_str": s, "arch_index": i} for i, s in nb201_sample(n, seed)]


SPACES: dict[str, SearchSpace] = {
    DEFAULT_SPACE: SearchSpace(
        DEFAULT_SPACE, "ProxylessNAS MobileNetV2 space: 22 searchable MBConv layers (kernel 3/5/7, expand 3/6, "
        "zero), 224x224, 1000 classes (the default)", "3·6^6·7^15", _proxyless_ops, _proxyless_sample,
        _proxyless_resolve),
    NB201: SearchSpace(
        NB201, "NAS-Bench-201 cell (6 edges x none/skip_connect/nor_conv_1x1/nor_conv_3x3/avg_pool_3x3) in the "
        f"standard skeleton: 3 stages x 5 cells, C=16/32/64, {NB201_RESOLUTION}x{NB201_RESOLUTION}, "
        f"{NB201_CLASSES} classes; official strings and indices", str(NB201_SIZE), _nb201_ops, _nb201_sample,
        lambda text: nb201_arch(text), lambda: [o.key for o in nb201_measured_ops()],
        lambda arch: [o.key for o in nb201_arch_ops(arch["arch_str"])]),
}


def get_space(name: str | None) -> SearchSpace:
    """The registered space ``name`` (``None`` = the default)."""
    key = (name or DEFAULT_SPACE).lower().replace("-", "").replace("_", "")
    aliases = {"nb201": NB201, "nasbench201": NB201, "proxylessnas": DEFAULT_SPACE, "proxyless": DEFAULT_SPACE}
    if key not in aliases:
        raise SpaceError(f"unknown search space {name!r}; known: {', '.join(SPACES)} (see `latbench spaces`)")
    return SPACES[aliases[key]]


def check_skeleton_args(space: SearchSpace, resolution: int, width_mult: float, n_classes: int) -> None:
    """--resolution/--width/--classes shape the ProxylessNAS space only; refuse them for another space."""
    if space.name != DEFAULT_SPACE and (resolution, float(width_mult), n_classes) != (224, 1.0, 1000):
        raise SpaceError(f"--space {space.name} has a fixed skeleton ({NB201_RESOLUTION}x{NB201_RESOLUTION}, "
                         f"{NB201_CLASSES} classes); --resolution/--width/--classes apply to {DEFAULT_SPACE} only")


def space_of(arch: dict[str, Any]) -> str:
    """The space an architecture dict belongs to."""
    return str(arch.get("space") or DEFAULT_SPACE)


def arch_key(arch: dict[str, Any]) -> str:
    """Table key: the official cell string for NAS-Bench-201 (joins with published tables), the
    :attr:`Arch.key` for ProxylessNAS."""
    if space_of(arch) == NB201:
        return str(arch["arch_str"])
    return Arch.from_dict(arch).key


def describe_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Row fields of a whole-network measurement."""
    if space_of(arch) == NB201:
        cost = nb201_cost(arch["arch_str"])
        return {"kind": "arch", "space": NB201, "arch": json.dumps(arch, sort_keys=True),
                "arch_str": arch["arch_str"], "arch_index": int(arch["arch_index"]),
                "resolution": NB201_RESOLUTION, "n_classes": NB201_CLASSES,
                "flops": cost["flops"], "params": cost["params"]}
    a = Arch.from_dict(arch)
    return {"kind": "arch", "arch": a.to_json(), "resolution": a.resolution, "width_mult": a.width_mult}


def build_arch(arch: dict[str, Any]) -> tuple[Any, tuple[int, ...]]:
    """The eval-mode network (weights seeded from its key) and its input shape."""
    from latbench.modules import build_network, randomize_bn, seed_of

    if space_of(arch) == NB201:
        import torch

        from latbench.nasbench201_net import NB201Network

        key = arch_key(arch)
        torch.manual_seed(seed_of(key))
        net = NB201Network(arch["arch_str"])
        randomize_bn(net, torch.Generator().manual_seed(seed_of("bn:" + key)))
        return net.eval(), (1, 3, NB201_RESOLUTION, NB201_RESOLUTION)
    a = Arch.from_dict(arch)
    return build_network(a), (1, 3, a.resolution, a.resolution)


def space_of_op_key(key: str) -> str:
    """The space an op key belongs to (``nb201-…`` keys are NAS-Bench-201's, every other the default space's)."""
    return NB201 if is_nb201_op_key(key) else DEFAULT_SPACE


def describe_space_op(key: str) -> dict[str, Any]:
    """Row fields of an op of another space than the default (shape fields and features)."""
    op = NB201Op.parse(key)
    return {"kind": op.kind, "space": NB201, "in_h": op.in_h, "in_w": op.in_h, "in_ch": op.in_ch,
            "out_h": op.out_h, "out_w": op.out_h, "out_ch": op.out_ch, **op.features()}


def build_space_op(key: str) -> tuple[Any, tuple[int, ...]]:
    """The eval-mode module of an op of another space than the default (weights seeded from its key) and its
    input shape."""
    import torch

    from latbench.modules import randomize_bn, seed_of
    from latbench.nasbench201_net import nb201_op_module

    op = NB201Op.parse(key)
    torch.manual_seed(seed_of(key))
    m = nb201_op_module(op)
    randomize_bn(m, torch.Generator().manual_seed(seed_of("bn:" + key)))
    return m.eval(), (1, op.in_ch, op.in_h, op.in_h)


__all__ = ["DEFAULT_SPACE", "NB201", "NB201_OPS", "SPACES", "SearchSpace", "SpaceError", "arch_key", "build_arch",
           "build_space_op", "check_skeleton_args", "describe_arch", "describe_space_op", "get_space", "nb201_arch",
           "space_of", "space_of_op_key"]
