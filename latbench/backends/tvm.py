"""TVM backends: PyTorch module → torch.export → Relax → ``tvm.compile`` → shared library.

:class:`TVMBackend` owns the steps every TVM backend shares; subclasses only override
:meth:`TVMBackend.lower` (the Relax-to-Relax/TIR rewriting: schedules, tuning records). The
library is linked with the device's cross compiler when it has one (e.g. aarch64 for a Pi).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from latbench.backends.base import Backend, register_backend
from latbench.backends.cuda import compile_cuda_library
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.files import temp_sibling

log = logging.getLogger(__name__)


def export_relax(module: Any, example: Any) -> Any:
    """Export an eval-mode PyTorch module to a Relax IRModule with its weights as constants."""
    import torch
    from torch.export import export
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        ep = export(module.eval(), (example,))
    # Weights become constants (one input, "x"); a single output comes back as a tensor, not a tuple,
    # so a remote time evaluator and a remote output both work over RPC.
    return from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)


class TVMBackend(Backend):
    """Shared build path of all TVM backends (timed with TVM's time evaluator over RPC)."""

    kind = "tvm"

    def lower(self, mod: Any, target: Any, device: Device) -> tuple[Any, dict[str, Any]]:
        """Rewrite the Relax module before ``tvm.compile``; returns it and notes for the table."""
        return mod, {}

    def build(self, module: Any, example: Any, device: Device, path: Path) -> dict[str, Any]:
        """Compile ``module`` for ``device`` into the shared library ``path``; returns build notes."""
        import tvm

        t0 = time.perf_counter()
        mod = export_relax(module, example)
        target = device.tvm_target()
        mod, notes = self.lower(mod, target, device)
        t1 = time.perf_counter()
        notes = dict(notes)
        if device.is_cuda:  # needs a libcuda stub + nvcc, so it compiles in a child process

            notes.update(compile_cuda_library(mod, device, path))
        else:
            ex = self.compile(mod, target, device)
            self.export(ex, device, path)
        notes.update(export_s=round(t1 - t0, 3), compile_s=round(time.perf_counter() - t1, 3),
                     tvm_version=tvm.__version__)
        return notes

    def compile(self, mod: Any, target: Any, device: Device) -> Any:
        """``tvm.compile`` for ``target`` (override for targets that need a special environment)."""
        import tvm

        return tvm.compile(mod, target=target)

    def export(self, ex: Any, device: Device, path: Path) -> None:
        """Link the executable into ``path`` (cross-linked when the device has a cross compiler)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path, ".tmp.so")
        if device.cross_compiler:
            import shutil

            from tvm.support import cc

            if shutil.which(device.cross_compiler) is None:
                raise LatbenchError(
                    f"cross compiler {device.cross_compiler!r} of device {device.name!r} is not installed "
                    "(Debian: apt-get install g++-aarch64-linux-gnu)"
                )
            ex.export_library(str(tmp), fcompile=cc.cross_compiler(device.cross_compiler))
        else:
            ex.export_library(str(tmp))
        tmp.replace(path)  # atomic: a killed build never leaves a half-written library in the cache


@register_backend
class UntunedTVM(TVMBackend):
    """TVM's default pipeline, no schedules: the reference every faster backend is checked against."""

    name = "tvm-untuned"
    description = "TVM Relax default CPU/GPU pipeline, no schedule rules or tuning (reference)"
