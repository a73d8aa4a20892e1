"""Compiled artifacts on disk: a content-addressed cache and the manifest of an artifact set.

An artifact is one directory holding what is needed to time one op (or network) anywhere::

    lib.so         the compiled library (TVM backends)
    input.npy      the seeded input the op is timed with
    expected.npy   PyTorch's output for that input (every backend's output is checked against it)
    meta.json      key, backend, target, build notes, versions

Its directory name is a hash of everything that changes the library (key, backend and its
settings, resolved target, cross compiler, TVM version), so a rerun compiles nothing and a
change of any of those builds a new one. A *set* of artifacts (``latbench compile --out DIR``)
is such a cache with a ``manifest.json`` listing its entries, for offline transfer.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from latbench.errors import LatbenchError
from latbench.files import temp_sibling
from latbench.settings import cache_root

#: Bump when the way artifacts are built changes (invalidates every cache entry).
BUILD_FORMAT = 1
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$LATBENCH_CACHE`` or ``~/.cache/latbench`` (:func:`latbench.settings.cache_root`)."""
    return cache_root()


def artifact_id(key: str, backend: str, settings: dict[str, Any], target_json: str,
                cross_compiler: str | None, tvm_version: str) -> str:
    """The content hash naming an artifact directory."""
    blob = json.dumps(
        {"key": key, "backend": backend, "settings": settings, "target": target_json,
         "cc": cross_compiler, "tvm": tvm_version, "format": BUILD_FORMAT},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class _Member:
    """A read-only attribute naming one file of an artifact directory (``artifact.lib`` is ``root/lib.so``)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    @overload
    def __get__(self, artifact: None, owner: type) -> _Member: ...
    @overload
    def __get__(self, artifact: Artifact, owner: type | None = None) -> Path: ...

    def __get__(self, artifact: Artifact | None, owner: type | None = None) -> Path | _Member:
        return self if artifact is None else artifact.root / self.filename


@dataclass(frozen=True)
class Artifact:
    """One artifact directory (its files: the module docstring)."""

    root: Path

    lib = _Member("lib.so")
    input = _Member("input.npy")
    expected = _Member("expected.npy")
    meta_path = _Member("meta.json")

    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    def is_complete(self) -> bool:
        """meta.json is written last, so its presence means the build finished."""
        return self.meta_path.exists()

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = temp_sibling(self.meta_path)
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, self.meta_path)


class ArtifactCache:
    """Artifacts under ``root/<backend>/<id>/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "artifacts"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LatbenchError(f"cannot create artifact cache {self.root}: {exc.strerror or exc} "
                                "(set --cache or LATBENCH_CACHE to a writable directory)") from None

    def get(self, backend: str, ident: str) -> Artifact:
        return Artifact(self.root / backend / ident)

    def write_manifest(self, entries: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
        """Write ``manifest.json`` listing ``entries`` (paths relative to the root)."""
        path = self.root / MANIFEST
        tmp = temp_sibling(path)
        tmp.write_text(json.dumps({"format": BUILD_FORMAT, **extra, "entries": entries}, indent=1))
        os.replace(tmp, path)
        return path


def load_manifest(root: str | Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], Artifact]]]:
    """Read an artifact set written by ``latbench compile --out DIR``."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise LatbenchError(f"{root} has no {MANIFEST}; build it with `latbench compile --out {root}`")
    try:
        manifest = json.loads(path.read_text())
        entries = [(e, Artifact(root / e["path"])) for e in manifest["entries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LatbenchError(f"{path} is not a latbench artifact manifest ({exc})") from None
    missing = [str(a.lib) for e, a in entries if e.get("status") == "ok" and not a.lib.exists()]
    if missing:
        raise LatbenchError(f"artifact set {root} is incomplete: {len(missing)} libraries missing, e.g. {missing[0]}")
    return manifest, entries
