"""latbench's safe files (predictors ``.pkl`` and adapters): plain data only, loaded without ever executing code.

A ``.pkl`` is what users pass around, so it must be as safe to open as a JSON file. It is a pickle
(protocol 4) of one dict holding only ``None``, bools, ints, floats, strings, bytes, lists, tuples
and dicts. A predictor file is::

    {"format": "latbench-predictor", "version": 1, "kind": "lut" | "gbdt" | "xgb-arch",
     "params": {...}, "state": {...}, "fallback": <nested payload or None>}

and an adapter file (:func:`latbench.adapt.save_adapter`) ``{"format": "latbench.adapted-proxy", ...}``.
The xgboost models travel as their own UBJSON bytes. Loading uses an :class:`pickle.Unpickler` whose
``find_class`` refuses every global, so a pickle that references any class or function (the way a
crafted file runs code via ``__reduce__``) fails before anything is called.
:func:`write_plain` / :func:`read_plain` are the file layer both formats share.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.errors import LatbenchError

if TYPE_CHECKING:  # predictors.base imports this module (its save() and the registry)
    from predictors.base import BasePredictor

FORMAT = "latbench-predictor"
VERSION = 1
_PLAIN = (type(None), bool, int, float, str, bytes)


class PredictorFileError(LatbenchError):
    """A predictor file that cannot be loaded (missing, corrupt, foreign, unsafe or too new)."""


@dataclass(frozen=True)
class FileKind:
    """How one kind of plain-data file is named in its errors."""

    name: str                    # "predictor file"
    error: type[LatbenchError]   # raised for any unreadable/unsafe file
    refused: str                 # message for a pickle that asks for a global: {path}, {name}
    corrupt: str                 # message for bytes that are no plain pickle: {path}, {detail}


PREDICTOR_FILE = FileKind(
    "predictor file", PredictorFileError,
    refused="refusing to load {path}: it references Python object {name} (latbench predictor files hold "
            "plain data only, so this one is foreign or crafted to run code)",
    corrupt="{path} is not a latbench predictor file ({detail})")


class _Refused(pickle.UnpicklingError):
    """The pickle asked for a Python object (a class or function): never given."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds only builtin containers and scalars; any global lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent object id")


def plain_data(obj: Any, where: str = "payload") -> Any:
    """``obj`` as plain data (numpy scalars become Python numbers); a TypeError for anything else,
    so saving can never write an unsafe file."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict key {k!r} is not a string")
        return {k: plain_data(v, f"{where}.{k}") for k, v in obj.items()}
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}, not plain data")


def write_plain(path: str | Path, doc: Any, kind: FileKind = PREDICTOR_FILE) -> Path:
    """Pickle the plain data ``doc`` to ``path`` atomically; returns the path."""
    data = pickle.dumps(plain_data(doc), protocol=4)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise kind.error(f"cannot write {kind.name} {path}: {e.strerror or e}") from None
    return path


def read_plain(path: str | Path, kind: FileKind = PREDICTOR_FILE) -> Any:
    """Unpickle ``path`` with the restricted unpickler (plain data only)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise kind.error(f"cannot read {kind.name} {path}: {e.strerror or e}") from None
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise kind.error(kind.refused.format(path=path, name=e)) from None
    except pickle.UnpicklingError as e:
        raise kind.error(kind.corrupt.format(path=path, detail=f"corrupt pickle: {e}")) from None
    except Exception as e:  # truncated/garbage bytes raise EOFError, ValueError, IndexError, ...
        raise kind.error(kind.corrupt.format(path=path, detail=f"corrupt or not a pickle: "
                                                               f"{type(e).__name__}")) from None


# -- predictor files --------------------------------------------------------------------------------
_REGISTRY: dict[str, type[BasePredictor]] = {}


def register_predictor(cls: type[BasePredictor]) -> type[BasePredictor]:
    """Class decorator: make a predictor kind loadable from files by its ``kind`` name."""
    _REGISTRY[cls.kind] = cls
    return cls


def predictor_class(kind: str) -> type[BasePredictor]:
    """The predictor class registered under ``kind`` (``lut``, ``gbdt``, ``xgb-arch``)."""
    if kind not in _REGISTRY:
        raise LatbenchError(f"unknown predictor kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def _is_predictor(obj: Any) -> bool:
    """An instance of a registered predictor kind (what a predictor file can hold)."""
    return isinstance(obj, tuple(_REGISTRY.values()))


def to_payload(pred: BasePredictor) -> dict[str, Any]:
    """The plain-data dict that represents a fitted predictor."""
    pred._check_fitted()
    fallback = getattr(pred, "fallback", None)
    payload = {"format": FORMAT, "version": VERSION, "kind": pred.kind, "params": pred._plain_params(),
               "base": pred._base_state(), "state": pred._state(),
               "fallback": to_payload(fallback) if _is_predictor(fallback) else None}
    return plain_data(payload)


def from_payload(payload: Any, source: str = "predictor file") -> BasePredictor:
    """Rebuild a predictor from :func:`to_payload`'s dict (validated)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PredictorFileError(f"{source} is a pickle but not a latbench predictor file "
                                 "(create one with `latbench fit-predictor`)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise PredictorFileError(f"{source} has format version {version!r}; this latbench reads up to "
                                 f"{VERSION} (upgrade latbench or refit the predictor)")
    try:
        cls = predictor_class(payload["kind"])
        params = dict(payload.get("params") or {})
        if payload.get("fallback") is not None:
            params["fallback"] = from_payload(payload["fallback"], source)
        pred = cls(**params)
        pred._load_base_state(payload["base"])
        pred._load_state(payload["state"])
    except PredictorFileError:
        raise
    except LatbenchError as e:
        raise PredictorFileError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PredictorFileError(f"{source} is damaged ({type(e).__name__}: {e}); refit the predictor") from None
    return pred


def save_predictor(pred: BasePredictor, path: str | Path) -> Path:
    """Write ``pred`` to ``path`` atomically; returns the path."""
    if not _is_predictor(pred):
        raise LatbenchError(f"save_predictor needs a latbench predictor, got {type(pred).__name__}")
    return write_plain(path, to_payload(pred), PREDICTOR_FILE)


def load_payload(path: str | Path) -> Any:
    """Unpickle a predictor file with the restricted unpickler (plain data only)."""
    return read_plain(path, PREDICTOR_FILE)


def load_predictor(path: str | Path) -> BasePredictor:
    """Load a predictor written by :func:`save_predictor`; never executes code from the file."""
    return from_payload(load_payload(path), str(path))
