"""Backends that time the op on this machine without TVM: PyTorch eager, torch.compile, ONNX Runtime.

They time the *same* PyTorch op modules as the TVM backends, with the same statistics, each in a
process of its own (``latbench.runners.host``) so that thread pools of different runtimes never
overlap. ``make_callable`` runs inside that process.
"""
from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latbench.backends.base import Backend, register_backend
from latbench.errors import LatbenchError
from latbench.files import temp_sibling


class HostBackend(Backend):
    """A backend timed in a local worker process by :class:`latbench.runners.host.HostRunner`."""

    kind = "host"

    def make_callable(self, module: Any, x: Any, workdir: Path, threads: int) -> Callable[[], Any]:
        """A zero-argument function running the op once and returning its output as numpy."""
        raise NotImplementedError


@register_backend
class TorchEager(HostBackend):
    name = "torch"
    description = "PyTorch eager (inference_mode), the same op modules, in its own process"

    def prepare(self, module: Any) -> Callable[[Any], Any]:
        """What runs the op (eager: the module itself); called with torch's thread count already set."""
        return module

    def make_callable(self, module: Any, x: Any, workdir: Path, threads: int) -> Callable[[], Any]:
        import torch

        torch.set_num_threads(threads)
        fn = self.prepare(module)

        def run() -> Any:
            with torch.inference_mode():
                return fn(x).numpy()

        return run


@register_backend
class TorchCompile(TorchEager):
    name = "torch-compile"
    description = "torch.compile (inductor) of the same op modules, in its own process"

    def check_available(self) -> None:
        if shutil.which("g++") is None and shutil.which("c++") is None:
            raise LatbenchError("backend torch-compile needs a C++ compiler (apt-get install g++)")

    def prepare(self, module: Any) -> Callable[[Any], Any]:
        import torch

        return torch.compile(module, dynamic=False)


@register_backend
class OnnxRuntime(HostBackend):
    name = "onnxruntime"
    description = "ONNX Runtime (CPU) on the op exported with torch.onnx, in its own process"

    def check_available(self) -> None:
        for pkg in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(pkg) is None:
                raise LatbenchError(f"backend onnxruntime needs the {pkg!r} package (pip install {pkg})")

    def make_callable(self, module: Any, x: Any, workdir: Path, threads: int) -> Callable[[], Any]:
        import warnings

        import onnxruntime as ort
        import torch

        path = workdir / "model.onnx"
        if not path.exists():
            tmp = temp_sibling(path, ".tmp.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), str(tmp), input_names=["x"], output_names=["y"],
                                  opset_version=17, dynamo=False)
            tmp.replace(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        return lambda: sess.run(None, feed)[0]
