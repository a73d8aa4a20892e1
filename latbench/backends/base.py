"""The backend registry: how an op's PyTorch module becomes something that can be timed.

A backend is one small class registered by name (``@register_backend``), like timm's models.
``kind`` says how it is timed:

* ``"tvm"``: :meth:`TVMBackend.build` writes a TVM shared library (``.so``) that a TVM RPC server
  loads and times with TVM's time evaluator (locally, on a board, or through a tracker pool).
* ``"host"``: the backend times the PyTorch module itself (``torch``, ``onnxruntime``), in a
  subprocess of its own on this machine, so thread pools of different runtimes never overlap.

Adding a backend is one new module that defines and registers a subclass, plus its name in
:data:`BACKEND_MODULES` so that it is imported on demand.
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

from latbench.errors import LatbenchError

#: Modules that register backends when imported (imported lazily: TVM and torch are heavy).
BACKEND_MODULES: tuple[str, ...] = (
    "latbench.backends.tvm",
    "latbench.backends.tvm_schedules",
    "latbench.backends.tvm_tuned",
    "latbench.backends.host",
)

#: The backend ``latbench measure`` uses when none is given.
DEFAULT_BACKEND = "tvm"

_REGISTRY: dict[str, type[Backend]] = {}
_loaded = False


class Backend:
    """Base class of all backends. Subclasses set ``name``, ``description`` and ``kind``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "tvm"

    def check_available(self) -> None:
        """Raise :class:`LatbenchError` with a one-line reason if this backend cannot run here."""

    def settings(self) -> dict[str, Any]:
        """Backend settings recorded with every row (and part of the artifact cache key)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in BACKEND_MODULES:
        importlib.import_module(mod)
    _loaded = True


def available_backends() -> dict[str, str]:
    """Registered backend names → one-line descriptions."""
    _load_all()
    return {name: cls.description for name, cls in sorted(_REGISTRY.items())}


def get_backend(name: str | None = None, **params: Any) -> Backend:
    """A backend instance by name (``None`` → :data:`DEFAULT_BACKEND`)."""
    _load_all()
    name = name or DEFAULT_BACKEND
    if name not in _REGISTRY:
        raise LatbenchError(
            f"unknown backend {name!r}; available: {', '.join(sorted(_REGISTRY))} (see `latbench backends`)"
        )
    backend = _REGISTRY[name](**params)
    backend.check_available()
    return backend
