"""What is measured: a :class:`Job` is one op (key = official op key) or one whole network (key = arch key).

Every runner, the build and the campaign take jobs; this module sits below all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from latbench.features import op_features
from latbench.ops import OpSpec
from latbench.space import Arch
from latbench.spaces import DEFAULT_SPACE, arch_key, build_arch, describe_arch, space_of
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
    def network(arch: Arch | dict) -> Job:
        """A whole network: an :class:`Arch` of our space, or an architecture dict of any registered
        space (:mod:`latbench.spaces`, e.g. ``{"space": "nasbench201", "arch_str": …}``)."""
        if isinstance(arch, dict):
            return Job(arch_key(arch), "archs", dict(arch))
        return Job(arch.key, "archs", arch.to_dict())

    def describe(self) -> dict[str, Any]:
        """The row fields that identify this job (shape fields and features, or the arch)."""
        if self.what == "ops":
            op = OpSpec.parse(self.key)
            row = {"kind": op.kind, "in_h": op.in_h, "in_w": op.in_w, "in_ch": op.in_ch,
                   "out_h": op.out_h, "out_w": op.out_w, "out_ch": op.out_ch, "expand": op.expand,
                   "kernel": op.kernel, "stride": op.stride, "idskip": op.idskip}
            row.update(op_features(op))  # shape fields repeat with the same values
            return row
        if space_of(self.arch or {}) != DEFAULT_SPACE:
            return describe_arch(self.arch or {})
        arch = Arch.from_dict(self.arch or {})
        return {"kind": "arch", "arch": arch.to_json(), "resolution": arch.resolution,
                "width_mult": arch.width_mult}

    def module_and_input(self) -> tuple[Any, Any]:
        """The eval-mode PyTorch module and its seeded example input."""
        from latbench.modules import build_network, build_op_module, example_input

        if self.what == "ops":
            op = OpSpec.parse(self.key)
            return build_op_module(op), example_input(op.input_shape, self.key)
        if space_of(self.arch or {}) != DEFAULT_SPACE:
            net, shape = build_arch(self.arch or {})
            return net, example_input(shape, self.key)
        arch = Arch.from_dict(self.arch or {})
        return build_network(arch), example_input((1, 3, arch.resolution, arch.resolution), self.key)


