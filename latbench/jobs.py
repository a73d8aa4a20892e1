"""What is measured: a :class:`Job` is one op (key = official op key) or one whole network (key = arch key,
or for a network from an official net config, :attr:`latbench.netconfig.Net.key`).

Every runner, the build and the campaign take jobs; this module sits below all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from latbench.features import op_features
from latbench.netconfig import Net
from latbench.ops import OpSpec
from latbench.space import Arch
from latbench.spaces import (DEFAULT_SPACE, arch_key, build_arch, build_space_op, describe_arch, describe_space_op,
                             space_of, space_of_op_key)
from latbench.board.timing import RTOL

__all__ = ["Job", "RTOL", "What", "REFERENCE_KEY"]

What = Literal["ops", "archs"]

#: The reference op timed between visits to detect slow moments of the machine (see latbench.rounds).
#: An MBConv of the space's 28x28 stage: ~0.1-0.5 ms on a CPU, compute- and memory-bound like most ops.
REFERENCE_KEY = "expanded_conv-input:28x28x40-output:28x28x40-expand:3-kernel:3-stride:1-idskip:1"


@dataclass(frozen=True)
class Job:
    """One thing to measure: an op (key = op key) or a whole network (key = arch key)."""

    key: str
    what: What
    arch: dict | None = None

    @staticmethod
    def op(op: OpSpec) -> Job:
        return Job(op.key, "ops")

    @staticmethod
    def space_op(key: str) -> Job:
        """An op of any registered space by its key (``nb201-…`` for NAS-Bench-201, see `latbench ops --space`)."""
        if space_of_op_key(key) == DEFAULT_SPACE:
            return Job.op(OpSpec.parse(key))
        describe_space_op(key)  # a bad key fails here, not in a build worker
        return Job(key, "ops")

    @staticmethod
    def network(net: Arch | Net | dict) -> Job:
        """A whole network: an :class:`Arch` of our space, a net config at a resolution (its ``arch``
        field then holds ``{"resolution": R, "net_config": {...}}``), or an architecture dict of any
        registered space (:mod:`latbench.spaces`, e.g. ``{"space": "nasbench201", "arch_str": …}``)."""
        if isinstance(net, dict):
            return Job(arch_key(net), "archs", dict(net))
        return Job(net.key, "archs", net.to_dict())

    @property
    def net(self) -> Arch | Net | dict:
        """The network of an ``archs`` job (a dict for another space than ProxylessNAS')."""
        d = self.arch or {}
        if "net_config" in d:
            return Net.from_dict(d, self.key)
        return Arch.from_dict(d) if space_of(d) == DEFAULT_SPACE else dict(d)

    def describe(self) -> dict[str, Any]:
        """The row fields that identify this job (shape fields and features, or the arch)."""
        if self.what == "ops":
            if space_of_op_key(self.key) != DEFAULT_SPACE:
                return describe_space_op(self.key)
            op = OpSpec.parse(self.key)
            row = {"kind": op.kind, "in_h": op.in_h, "in_w": op.in_w, "in_ch": op.in_ch,
                   "out_h": op.out_h, "out_w": op.out_w, "out_ch": op.out_ch, "expand": op.expand,
                   "kernel": op.kernel, "stride": op.stride, "idskip": op.idskip}
            row.update(op_features(op))  # shape fields repeat with the same values
            return row
        net = self.net
        if isinstance(net, dict):
            return describe_arch(net)
        if isinstance(net, Net):  # a network outside the space: no arch, its net config instead
            return {"kind": "arch", "net_config": net.config.to_json(), "resolution": net.resolution,
                    "n_classes": net.config.n_classes}
        return {"kind": "arch", "arch": net.to_json(), "resolution": net.resolution,
                "width_mult": net.width_mult}

    def module_and_input(self) -> tuple[Any, Any]:
        """The eval-mode PyTorch module and its seeded example input."""
        from latbench.modules import build_net, build_network, build_op_module, example_input

        if self.what == "ops":
            if space_of_op_key(self.key) != DEFAULT_SPACE:
                module, shape = build_space_op(self.key)
                return module, example_input(shape, self.key)
            op = OpSpec.parse(self.key)
            return build_op_module(op), example_input(op.input_shape, self.key)
        net = self.net
        if isinstance(net, dict):
            module, shape = build_arch(net)
            return module, example_input(shape, self.key)
        if isinstance(net, Net):
            return build_net(net), example_input(net.input_shape, self.key)
        return build_network(net), example_input((1, 3, net.resolution, net.resolution), self.key)


