"""Op specifications: the unit that is measured, with a canonical string key.

An :class:`OpSpec` describes one layer at a fixed shape. Its key is compatible with the
official ProxylessNAS latency table (``mobile_trim.yaml``), e.g.::

    Conv-input:224x224x3-output:112x112x32
    expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0
    Conv_1-input:7x7x320-output:7x7x1280
    Logits-input:7x7x1280-output:1000

``OpSpec.parse(key).key == key`` for every key of that format.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from latbench.errors import LatbenchError

#: The op kinds, named as the official latency table names them.
KINDS = ("Conv", "expanded_conv", "Conv_1", "Logits")

_HWC = r"(\d+)x(\d+)x(\d+)"
_KEY_RE = {
    "Conv": re.compile(rf"^Conv-input:{_HWC}-output:{_HWC}$"),
    "Conv_1": re.compile(rf"^Conv_1-input:{_HWC}-output:{_HWC}$"),
    "Logits": re.compile(rf"^Logits-input:{_HWC}-output:(\d+)$"),
    "expanded_conv": re.compile(
        rf"^expanded_conv-input:{_HWC}-output:{_HWC}-expand:(\d+)-kernel:(\d+)-stride:(\d+)-idskip:([01])$"
    ),
}


class OpKeyError(LatbenchError, ValueError):
    """An op key that does not follow the ProxylessNAS key format."""


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a 'same'-padded conv (padding ``kernel // 2``), as the space uses everywhere."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True, order=True)
class OpSpec:
    """One layer of a network at a fixed input/output shape (batch 1, fp32, NCHW).

    ``kind`` is one of :data:`KINDS`. ``kernel``/``stride``/``expand``/``idskip`` only matter for
    ``expanded_conv`` (an MBConv block); the stem ``Conv`` is 3x3 stride 2, ``Conv_1`` is 1x1, and
    ``Logits`` is global average pooling + a linear classifier with ``out_ch`` classes.
    """

    kind: str
    in_h: int
    in_w: int
    in_ch: int
    out_h: int
    out_w: int
    out_ch: int
    expand: int = 1
    kernel: int = 1
    stride: int = 1
    idskip: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OpKeyError(f"unknown op kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        for name in ("in_h", "in_w", "in_ch", "out_h", "out_w", "out_ch", "expand", "kernel", "stride"):
            if getattr(self, name) < 1:
                raise OpKeyError(f"op field {name} must be >= 1, got {getattr(self, name)}")
        if self.kind == "expanded_conv":
            if self.kernel % 2 == 0:
                raise OpKeyError(f"MBConv kernel must be odd, got {self.kernel}")
            want_h = conv_out(self.in_h, self.kernel, self.stride)
            want_w = conv_out(self.in_w, self.kernel, self.stride)
            if (self.out_h, self.out_w) != (want_h, want_w):
                raise OpKeyError(
                    f"MBConv {self.in_h}x{self.in_w} stride {self.stride} gives {want_h}x{want_w}, "
                    f"not {self.out_h}x{self.out_w}"
                )
            if self.idskip and (self.stride != 1 or self.in_ch != self.out_ch):
                raise OpKeyError("idskip:1 needs stride 1 and equal input/output channels")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def mbconv(cls, h: int, w: int, in_ch: int, out_ch: int, kernel: int, expand: int, stride: int,
               idskip: bool | None = None) -> OpSpec:
        """An MBConv block; ``idskip`` defaults to 'has the identity shortcut when shapes allow'."""
        if idskip is None:
            idskip = stride == 1 and in_ch == out_ch
        return cls("expanded_conv", h, w, in_ch, conv_out(h, kernel, stride), conv_out(w, kernel, stride),
                   out_ch, expand, kernel, stride, int(idskip))

    @classmethod
    def stem(cls, h: int, w: int, out_ch: int, in_ch: int = 3) -> OpSpec:
        """The first 3x3 stride-2 conv + BN + ReLU6."""
        return cls("Conv", h, w, in_ch, conv_out(h, 3, 2), conv_out(w, 3, 2), out_ch, 1, 3, 2, 0)

    @classmethod
    def feature_mix(cls, h: int, w: int, in_ch: int, out_ch: int) -> OpSpec:
        """The 1x1 feature-mix conv + BN + ReLU6 (``Conv_1``)."""
        return cls("Conv_1", h, w, in_ch, h, w, out_ch, 1, 1, 1, 0)

    @classmethod
    def logits(cls, h: int, w: int, in_ch: int, n_classes: int) -> OpSpec:
        """Global average pooling + linear classifier (``Logits``)."""
        return cls("Logits", h, w, in_ch, 1, 1, n_classes, 1, 1, 1, 0)

    # -- key ----------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The canonical key, in the official ProxylessNAS latency-table format."""
        inp = f"input:{self.in_h}x{self.in_w}x{self.in_ch}"
        if self.kind == "Logits":
            return f"Logits-{inp}-output:{self.out_ch}"
        out = f"output:{self.out_h}x{self.out_w}x{self.out_ch}"
        if self.kind == "expanded_conv":
            return (f"expanded_conv-{inp}-{out}-expand:{self.expand}-kernel:{self.kernel}"
                    f"-stride:{self.stride}-idskip:{self.idskip}")
        return f"{self.kind}-{inp}-{out}"

    @classmethod
    def parse(cls, key: str) -> OpSpec:
        """Parse a key in the official format; raises :class:`OpKeyError` with the reason."""
        if not isinstance(key, str):
            raise OpKeyError(f"op key must be a string, got {type(key).__name__}")
        kind = key.split("-", 1)[0]
        pattern = _KEY_RE.get(kind)
        if pattern is None:
            raise OpKeyError(f"cannot parse op key {key!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
        m = pattern.match(key)
        if m is None:
            raise OpKeyError(f"cannot parse op key {key!r}: expected e.g. {_EXAMPLES[kind]}")
        g = [int(x) for x in m.groups()]
        if kind == "expanded_conv":
            return cls(kind, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9])
        if kind == "Logits":
            return cls(kind, g[0], g[1], g[2], 1, 1, g[3])
        if kind == "Conv":
            stride = 2 if g[3] < g[0] else 1
            return cls(kind, g[0], g[1], g[2], g[3], g[4], g[5], 1, 3, stride, 0)
        return cls(kind, g[0], g[1], g[2], g[3], g[4], g[5])

    @property
    def mid_ch(self) -> int:
        """Channels inside an MBConv block (after the expand conv)."""
        return self.in_ch * self.expand if self.kind == "expanded_conv" else self.in_ch

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW input shape at batch 1."""
        return (1, self.in_ch, self.in_h, self.in_w)

    def __str__(self) -> str:
        return self.key


_EXAMPLES = {
    "Conv": "Conv-input:224x224x3-output:112x112x32",
    "Conv_1": "Conv_1-input:7x7x320-output:7x7x1280",
    "Logits": "Logits-input:7x7x1280-output:1000",
    "expanded_conv": "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:5-stride:1-idskip:1",
}
