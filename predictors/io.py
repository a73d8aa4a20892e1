"""The predictor file (``.pkl``): plain data only, loaded without ever executing code from it.

A ``.pkl`` is what users pass around, so it must be as safe to open as a JSON file. It is a pickle
(protocol 4) of one dict holding only ``None``, bools, ints, floats, strings, bytes, lists, tuples
and dicts::

    {"format": "latbench-predictor", "version": 1, "kind": "lut" | "gbdt",
     "params": {...}, "state": {...}, "fallback": <nested payload or None>}

The xgboost model travels as its own UBJSON bytes. Loading uses an :class:`pickle.Unpickler` whose
``find_class`` refuses every global, so a pickle that references any class or function (the way a
crafted file runs code via ``__reduce__``) fails before anything is called.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from latbench.errors import LatbenchError
from predictors.base import BasePredictor, predictor_class

FORMAT = "latbench-predictor"
VERSION = 1
_PLAIN = (type(None), bool, int, float, str, bytes)


class PredictorFileError(LatbenchError):
    """A predictor file that cannot be loaded (missing, corrupt, foreign, unsafe or too new)."""


class _Refused(pickle.UnpicklingError):
    """The pickle asked for a Python object (a class or function): never given."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds only builtin containers and scalars; any global lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent object id")


def _check_plain(obj: Any, where: str = "payload") -> None:
    """Raise if ``obj`` holds anything but plain data (so saving can never write an unsafe file)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}, not plain data")


def to_payload(pred: BasePredictor) -> dict[str, Any]:
    """The plain-data dict that represents a fitted predictor."""
    pred._check_fitted()
    fallback = getattr(pred, "fallback", None)
    payload = {"format": FORMAT, "version": VERSION, "kind": pred.kind, "params": pred._plain_params(),
               "base": pred._base_state(), "state": pred._state(),
               "fallback": to_payload(fallback) if isinstance(fallback, BasePredictor) else None}
    _check_plain(payload)
    return payload


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
    if not isinstance(pred, BasePredictor):
        raise LatbenchError(f"save_predictor needs a latbench predictor, got {type(pred).__name__}")
    data = pickle.dumps(to_payload(pred), protocol=4)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise LatbenchError(f"cannot write predictor to {path}: {e.strerror or e}") from None
    return path


def load_payload(path: str | Path) -> Any:
    """Unpickle ``path`` with the restricted unpickler (plain data only)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PredictorFileError(f"cannot read predictor file {path}: {e.strerror or e}") from None
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise PredictorFileError(
            f"refusing to load {path}: it references Python object {e} (latbench predictor files hold "
            "plain data only, so this one is foreign or crafted to run code)") from None
    except pickle.UnpicklingError as e:
        raise PredictorFileError(f"{path} is not a latbench predictor file (corrupt pickle: {e})") from None
    except Exception as e:  # truncated/garbage bytes raise EOFError, ValueError, IndexError, ...
        raise PredictorFileError(f"{path} is not a latbench predictor file (corrupt or not a pickle: "
                                 f"{type(e).__name__})") from None


def load_predictor(path: str | Path) -> BasePredictor:
    """Load a predictor written by :func:`save_predictor`; never executes code from the file."""
    return from_payload(load_payload(path), str(path))
