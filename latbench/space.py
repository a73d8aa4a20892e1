"""The ProxylessNAS (MobileNetV2-based) search space and its architectures.

A :class:`Space` is fixed by its input resolution, width multiplier and number of classes. It has
22 searchable layers (the first MBConv block, then 21 stage layers) and three fixed layers (stem
``Conv``, feature-mix ``Conv_1``, ``Logits``). An :class:`Arch` picks one candidate per searchable
layer and is stored as plain JSON::

    {"resolution": 224, "width_mult": 1.0, "ops": ["3x3_MBConv1", "5x5_MBConv3", ..., "zero"]}

Candidate names follow the official code: ``{k}x{k}_MBConv{e}`` and ``zero`` (identity, allowed
where stride is 1 and input/output channels match).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

from latbench.errors import ConfigError, LatbenchError, read_json_config
from latbench.ops import OpSpec, conv_out

KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANDS: tuple[int, ...] = (3, 6)
ZERO = "zero"
FIRST_BLOCK_CANDIDATES: tuple[str, ...] = tuple(f"{k}x{k}_MBConv1" for k in KERNELS)
MBCONV_CANDIDATES: tuple[str, ...] = tuple(f"{k}x{k}_MBConv{e}" for k in KERNELS for e in EXPANDS)

#: (output channels, number of layers, stride of the first layer) of each searchable stage.
STAGES: tuple[tuple[int, int, int], ...] = (
    (24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1),
)
STEM_CHANNELS = 32
FIRST_BLOCK_CHANNELS = 16
FEATURE_MIX_CHANNELS = 1280

_CAND_RE = re.compile(r"^(\d+)x\1_MBConv(\d+)$")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (TF-slim/MobileNetV2 rule, as the official code)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def parse_candidate(name: str) -> tuple[int, int]:
    """``"5x5_MBConv6"`` -> ``(kernel=5, expand=6)``; raises ConfigError for anything else."""
    m = _CAND_RE.match(name)
    if m is None:
        raise ConfigError(f"unknown candidate op {name!r}; expected e.g. '5x5_MBConv6' or 'zero'")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Layer:
    """One searchable layer: its position, shapes and the candidates it may choose from."""

    index: int
    in_h: int
    in_w: int
    in_ch: int
    out_ch: int
    stride: int
    candidates: tuple[str, ...]

    @property
    def can_skip(self) -> bool:
        """Whether the layer may be an identity (``zero`` candidate)."""
        return ZERO in self.candidates

    def op(self, candidate: str) -> OpSpec | None:
        """The op a candidate makes at this layer; ``None`` for ``zero`` (costs nothing)."""
        if candidate not in self.candidates:
            raise ConfigError(
                f"layer {self.index} cannot be {candidate!r}; choices: {', '.join(self.candidates)}"
            )
        if candidate == ZERO:
            return None
        kernel, expand = parse_candidate(candidate)
        return OpSpec.mbconv(self.in_h, self.in_w, self.in_ch, self.out_ch, kernel, expand, self.stride)

    @property
    def out_h(self) -> int:
        return conv_out(self.in_h, 3, self.stride)

    @property
    def out_w(self) -> int:
        return conv_out(self.in_w, 3, self.stride)


@dataclass(frozen=True)
class Space:
    """The ProxylessNAS space at a given resolution, width multiplier and number of classes."""

    resolution: int = 224
    width_mult: float = 1.0
    n_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ConfigError(f"resolution must be an integer >= 8, got {self.resolution!r}")
        if not (0.1 <= float(self.width_mult) <= 4.0):
            raise ConfigError(f"width_mult must be in [0.1, 4], got {self.width_mult!r}")
        if self.n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1, got {self.n_classes!r}")

    # -- channel plan -----------------------------------------------------------------------
    def channels(self, c: int) -> int:
        return make_divisible(c * self.width_mult, 8)

    @property
    def stem_channels(self) -> int:
        return self.channels(STEM_CHANNELS)

    @property
    def last_channels(self) -> int:
        # As the official code: the feature-mix width only grows with width_mult > 1.
        return self.channels(FEATURE_MIX_CHANNELS) if self.width_mult > 1.0 else FEATURE_MIX_CHANNELS

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """The 22 searchable layers, in order."""
        h = w = conv_out(self.resolution, 3, 2)
        c = self.stem_channels
        out = [Layer(0, h, w, c, self.channels(FIRST_BLOCK_CHANNELS), 1, FIRST_BLOCK_CANDIDATES)]
        c = out[0].out_ch
        for width, n, first_stride in STAGES:
            oc = self.channels(width)
            for i in range(n):
                stride = first_stride if i == 0 else 1
                cands = MBCONV_CANDIDATES + ((ZERO,) if stride == 1 and c == oc else ())
                out.append(Layer(len(out), h, w, c, oc, stride, cands))
                h, w, c = conv_out(h, 3, stride), conv_out(w, 3, stride), oc
        return tuple(out)

    @cached_property
    def fixed_ops(self) -> tuple[OpSpec, OpSpec, OpSpec]:
        """The stem, feature-mix and logits ops, which every architecture has."""
        last = self.layers[-1]
        h, w = last.out_h, last.out_w
        return (
            OpSpec.stem(self.resolution, self.resolution, self.stem_channels, self.in_channels),
            OpSpec.feature_mix(h, w, last.out_ch, self.last_channels),
            OpSpec.logits(h, w, self.last_channels, self.n_classes),
        )

    def candidate_ops(self) -> list[list[OpSpec | None]]:
        """Per layer, the op of each candidate (``None`` for zero) in ``layer.candidates`` order."""
        return [[layer.op(c) for c in layer.candidates] for layer in self.layers]

    def distinct_ops(self) -> list[OpSpec]:
        """Every distinct op any architecture of the space can use (72 at 224, width 1.0), sorted by key."""
        ops = {op.key: op for op in self.fixed_ops}
        for row in self.candidate_ops():
            ops.update((op.key, op) for op in row if op is not None)
        return [ops[k] for k in sorted(ops)]

    # -- architectures ------------------------------------------------------------------------
    def arch(self, ops: Sequence[str]) -> Arch:
        """An architecture of this space (validated)."""
        return Arch(self.resolution, float(self.width_mult), tuple(ops), self.n_classes)

    def sample(self, rng: random.Random | int | None = None) -> Arch:
        """A uniformly random architecture."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        return self.arch([rng.choice(layer.candidates) for layer in self.layers])

    def uniform(self, op: str) -> Arch:
        """Every layer ``op``, none skipped; the first layer (MBConv1 only) takes the same kernel.
        ``uniform("3x3_MBConv6")`` is the MobileNetV2-style network of the space."""
        k = op.split("x")[0]
        return self.arch([f"{k}x{k}_MBConv1" if layer.index == 0 else op for layer in self.layers])

    def largest(self) -> Arch:
        """Every layer 7x7_MBConv6 (the slowest network of the space)."""
        return self.arch([layer.candidates[-1] if layer.index == 0 else "7x7_MBConv6" for layer in self.layers])

    def smallest(self) -> Arch:
        """Every layer as cheap as allowed: zero where allowed, else 3x3_MBConv3 (3x3_MBConv1 first)."""
        return self.arch([
            layer.candidates[0] if layer.index == 0 else (ZERO if layer.can_skip else "3x3_MBConv3")
            for layer in self.layers
        ])

    def ops_of(self, choices: Sequence[str]) -> list[OpSpec]:
        """The ops of an architecture (stem, non-zero layers, feature mix, logits), in network order."""
        if len(choices) != len(self.layers):
            raise ConfigError(f"an architecture of this space has {len(self.layers)} ops, got {len(choices)}")
        body = [layer.op(c) for layer, c in zip(self.layers, choices)]
        stem, mix, logits = self.fixed_ops
        return [stem, *(op for op in body if op is not None), mix, logits]


@dataclass(frozen=True)
class Arch:
    """An architecture: resolution, width multiplier and one candidate name per searchable layer."""

    resolution: int
    width_mult: float
    ops: tuple[str, ...]
    n_classes: int = 1000
    space: Space = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        space = Space(self.resolution, self.width_mult, self.n_classes)
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "space", space)
        space.ops_of(self.ops)  # validates length and every choice

    @property
    def op_specs(self) -> list[OpSpec]:
        """The ops of the network, in order (zero layers left out)."""
        return self.space.ops_of(self.ops)

    @property
    def key(self) -> str:
        """A canonical short id: ``r224-w1.0-`` + the ops joined (stable across runs and machines)."""
        return f"r{self.resolution}-w{self.width_mult:g}-c{self.n_classes}-" + ",".join(self.ops)

    def at_resolution(self, resolution: int) -> Arch:
        """The same layer choices at another resolution (e.g. the deployment resolution)."""
        return Arch(resolution, self.width_mult, self.ops, self.n_classes)

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"resolution": self.resolution, "width_mult": self.width_mult, "ops": list(self.ops)}
        if self.n_classes != 1000:
            d["n_classes"] = self.n_classes
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, source: str = "arch") -> Arch:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: an architecture is a JSON object with resolution, width_mult, ops")
        missing = [k for k in ("ops",) if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing field {missing[0]!r} (expected {{\"resolution\": 224, "
                              f"\"width_mult\": 1.0, \"ops\": [22 names]}})")
        ops = d["ops"]
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise ConfigError(f"{source}: field 'ops' must be a list of op names such as '5x5_MBConv6'")
        try:
            return cls(int(d.get("resolution", 224)), float(d.get("width_mult", 1.0)), tuple(ops),
                       int(d.get("n_classes", 1000)))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        """Read an arch JSON file; errors name the file."""
        path = Path(path)
        return cls.from_dict(read_json_config(path, "arch file"), str(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def random_archs(space: Space, n: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[Arch]:
    """``n`` distinct uniformly random architectures of ``space`` (deterministic per seed; keys in
    ``exclude`` are skipped)."""
    if n < 1:
        raise LatbenchError(f"number of architectures must be >= 1, got {n}")
    rng = random.Random(seed)
    seen, out = set(exclude), []
    while len(out) < n:
        a = space.sample(rng)
        if a.key not in seen:
            seen.add(a.key)
            out.append(a)
    return out


def distinct_ops(archs: Iterable[Arch]) -> list[OpSpec]:
    """The distinct ops a set of architectures uses, sorted by key."""
    ops = {op.key: op for a in archs for op in a.op_specs}
    return [ops[k] for k in sorted(ops)]


# -- the space of a set of op keys -------------------------------------------------------------------
#: Width multipliers tried when inferring the deployment space from a table's keys.
_WIDTHS = (1.0, 0.35, 0.5, 0.75, 0.9, 1.1, 1.25, 1.3, 1.4, 1.5, 2.0)


def infer_space(keys: Iterable[str], resolution: int | None = None, width_mult: float | None = None,
                n_classes: int | None = None) -> Space:
    """The space whose ops a set of keys covers best (explicit arguments win).

    Candidates come from the stem (``Conv``) keys' resolutions and the ``Logits`` keys' class counts;
    ties prefer width 1.0 and the largest resolution. Without stem keys, 224/1.0/1000 is assumed.
    """
    keys = set(keys)
    ops = [OpSpec.parse(k) for k in keys]
    stems = [o for o in ops if o.kind == "Conv"]
    res_c = [resolution] if resolution else sorted({o.in_h for o in stems}, reverse=True) or [224]
    cls_c = [n_classes] if n_classes else sorted({o.out_ch for o in ops if o.kind == "Logits"}) or [1000]
    if width_mult:
        w_c: Sequence[float] = [float(width_mult)]
    else:
        stem_ch = {o.out_ch for o in stems}
        w_c = [w for w in _WIDTHS if not stem_ch or make_divisible(STEM_CHANNELS * w) in stem_ch] or [1.0]
    best, best_cov = None, -1.0
    for r in res_c:
        for w in w_c:
            for c in cls_c:
                try:
                    sp = Space(int(r), float(w), int(c))
                    need = {o.key for o in sp.distinct_ops()}
                except LatbenchError:
                    continue
                cov = len(need & keys) / len(need)
                if cov > best_cov + 1e-12:
                    best, best_cov = sp, cov
    if best is None:
        raise LatbenchError("cannot infer the deployment space from the table; pass resolution/width_mult")
    return best


def space_to_dict(space: Space) -> dict[str, Any]:
    """The three numbers that fix a space, as plain data."""
    return {"resolution": int(space.resolution), "width_mult": float(space.width_mult),
            "n_classes": int(space.n_classes)}
