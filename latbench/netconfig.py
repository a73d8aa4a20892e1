"""Official ProxylessNAS net configs (``net.config``): read, write, check, and their ops.

The official code (mit-han-lab/proxylessnas, ``ProxylessNASNets.config``) describes a network as
JSON::

    {"name": "ProxylessNASNets", "bn": {"momentum": 0.1, "eps": 0.001},
     "first_conv": {"name": "ConvLayer", "in_channels": 3, "out_channels": 40, "kernel_size": 3, "stride": 2, ...},
     "blocks": [{"name": "MobileInvertedResidualBlock",
                 "mobile_inverted_conv": {"name": "MBInvertedConvLayer", "in_channels": 40, "out_channels": 24,
                                          "kernel_size": 3, "stride": 1, "expand_ratio": 1},
                 "shortcut": null}, ...
                {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": {"name": "ZeroLayer", "stride": 1},
                 "shortcut": {"name": "IdentityLayer", "in_channels": 32, "out_channels": 32, ...}}, ...],
     "feature_mix_layer": {"name": "ConvLayer", ..., "kernel_size": 1}, "classifier": {"name": "LinearLayer", ...}}

with any per-block widths (the released nets use widths outside the search space, e.g. a 40-channel
stem). A net config has no input size: :class:`Net` is a config at a resolution, which fixes every
feature map and so the op keys (:mod:`latbench.ops`) the predictors price and the network a
campaign times. :meth:`NetConfig.from_arch` / :meth:`NetConfig.to_arch` convert to and from the
space's :class:`~latbench.space.Arch`. Only what the measured blocks compute is accepted (ReLU6,
BN after every conv, no squeeze-excite); anything else is one clear :class:`ConfigError`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latbench.errors import ConfigError, read_json_config
from latbench.ops import OpKeyError, OpSpec, conv_out
from latbench.space import _WIDTHS, ZERO, Arch, Space, parse_candidate

__all__ = ["NetConfig", "Net", "NetLayer", "load_net_config"]

NET_NAME: Final = "ProxylessNASNets"
ACT: Final = "relu6"  # the activation of every measured block (modules.conv_bn)


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvLayer(_Layer):
    """The official ``ConvLayer`` (the stem and the feature-mix 1x1 conv)."""

    name: Literal["ConvLayer"] = "ConvLayer"
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)
    kernel_size: int = 3
    stride: int = Field(1, ge=1)
    dilation: Literal[1] = 1
    groups: Literal[1] = 1
    bias: Literal[False] = False
    has_shuffle: Literal[False] = False
    use_bn: Literal[True] = True
    act_func: Literal["relu6"] = ACT
    dropout_rate: float = Field(0.0, ge=0, lt=1)
    ops_order: Literal["weight_bn_act"] = "weight_bn_act"


class IdentityLayer(_Layer):
    """The identity shortcut of a block (OFA writes its channels as one-element lists)."""

    name: Literal["IdentityLayer"] = "IdentityLayer"
    in_channels: int | list[int]
    out_channels: int | list[int]
    use_bn: Literal[False] = False
    act_func: None = None
    dropout_rate: float = 0.0
    ops_order: Literal["weight_bn_act"] = "weight_bn_act"

    @staticmethod
    def _one(v: int | list[int]) -> int:
        return v[0] if isinstance(v, list) and len(v) == 1 else v  # type: ignore[return-value]

    @property
    def channels(self) -> tuple[Any, Any]:
        return self._one(self.in_channels), self._one(self.out_channels)


class MBInvertedConvLayer(_Layer):
    """An MBConv: 1x1 expand (none for expand 1), kxk depthwise with stride, 1x1 linear project."""

    name: Literal["MBInvertedConvLayer"] = "MBInvertedConvLayer"
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(1, ge=1)
    expand_ratio: int = Field(6, ge=1)
    # written by the OFA/MCUNet variant of the format; accepted when they describe the same block
    mid_channels: int | None = None
    act_func: Literal["relu6"] | None = None
    use_se: Literal[False] | None = None


class ZeroLayer(_Layer):
    """A skipped layer: the block is the identity (the space's ``zero`` candidate)."""

    name: Literal["ZeroLayer"] = "ZeroLayer"
    stride: int = Field(1, ge=1)


class MobileInvertedResidualBlock(_Layer):
    name: Literal["MobileInvertedResidualBlock"] = "MobileInvertedResidualBlock"
    mobile_inverted_conv: Annotated[MBInvertedConvLayer | ZeroLayer, Field(discriminator="name")]
    shortcut: IdentityLayer | None = None

    @property
    def is_zero(self) -> bool:
        return isinstance(self.mobile_inverted_conv, ZeroLayer)


class LinearLayer(_Layer):
    """The classifier (after global average pooling)."""

    name: Literal["LinearLayer"] = "LinearLayer"
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)
    bias: Literal[True] = True
    use_bn: Literal[False] = False
    act_func: None = None
    dropout_rate: float = Field(0.0, ge=0, lt=1)
    ops_order: Literal["weight_bn_act"] = "weight_bn_act"


class BNParam(_Layer):
    momentum: float | None = 0.1
    eps: float = Field(1e-3, gt=0)
    ws_eps: None = None  # OFA's (weight standardisation off)


class NetConfig(_Layer):
    """An official ``ProxylessNASNets`` net config, validated (see the module docstring)."""

    name: Literal["ProxylessNASNets"] = NET_NAME
    bn: BNParam | None = None
    first_conv: ConvLayer
    blocks: list[MobileInvertedResidualBlock] = Field(min_length=1)
    feature_mix_layer: ConvLayer | None
    classifier: LinearLayer

    # -- reading and writing -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, source: str = "net config") -> NetConfig:
        """Validate a parsed net config; errors are one line naming ``source`` and the field."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: a net config is a JSON object with name, first_conv, blocks, "
                              f"feature_mix_layer, classifier (the official ProxylessNASNets format)")
        try:
            cfg = cls.model_validate(d)
        except ValidationError as e:
            raise ConfigError(f"{source}: {_first_error(e)}") from None
        cfg.check_channels(source)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> NetConfig:
        """Read a ``net.config`` JSON file; errors name the file."""
        path = Path(path)
        return cls.from_dict(read_json_config(path, "net config"), str(path))

    def to_dict(self) -> dict[str, Any]:
        """The official JSON form (every field the official ``config`` properties write)."""
        d = self.model_dump(exclude_none=False)
        for b, blk in zip(d["blocks"], self.blocks):  # the OFA-only optional fields stay out unless set
            conv = b["mobile_inverted_conv"]
            for k in ("mid_channels", "act_func", "use_se"):
                if conv.get(k, 0) is None:
                    conv.pop(k)
            if blk.shortcut is None:
                b["shortcut"] = None
        if d["bn"] is None:
            d.pop("bn")
        elif d["bn"].get("ws_eps", 0) is None:
            d["bn"].pop("ws_eps")
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(indent=1) + "\n")
        return path

    # -- checks -------------------------------------------------------------------------------------------------
    def check_channels(self, source: str = "net config") -> None:
        """Every layer's input channels are the previous layer's output channels; shortcuts fit."""
        c = self.first_conv.out_channels
        if self.first_conv.kernel_size != 3:
            raise ConfigError(f"{source}: first_conv: kernel_size {self.first_conv.kernel_size} is not supported "
                              "(the stem op is a 3x3 conv)")
        for i, blk in enumerate(self.blocks):
            where = f"{source}: blocks[{i}]"
            conv = blk.mobile_inverted_conv
            if isinstance(conv, ZeroLayer):
                if conv.stride != 1:
                    raise ConfigError(f"{where}: a ZeroLayer block must have stride 1 (it is the identity), "
                                      f"got {conv.stride}")
                out = c
            else:
                if conv.in_channels != c:
                    raise ConfigError(f"{where}: in_channels {conv.in_channels} does not match the {c} output "
                                      "channels of the layer before it")
                if conv.kernel_size % 2 == 0:
                    raise ConfigError(f"{where}: kernel_size must be odd, got {conv.kernel_size}")
                mid = conv.in_channels * conv.expand_ratio
                if conv.mid_channels is not None and conv.mid_channels != mid and conv.expand_ratio != 1:
                    raise ConfigError(f"{where}: mid_channels {conv.mid_channels} is not in_channels x expand_ratio "
                                      f"({mid}); such blocks are not in the op key format")
                out = conv.out_channels
            if blk.shortcut is not None:
                sin, sout = blk.shortcut.channels
                stride = 1 if isinstance(conv, ZeroLayer) else conv.stride
                if (sin, sout) != (c, out) or c != out or stride != 1:
                    raise ConfigError(f"{where}: an IdentityLayer shortcut needs stride 1 and equal channels; the "
                                      f"block maps {c} to {out} channels with stride {stride} "
                                      f"(shortcut {sin} -> {sout})")
            elif isinstance(conv, ZeroLayer):
                pass  # the official forward returns the input for a ZeroLayer block either way
            c = out
        if self.feature_mix_layer is not None:
            fm = self.feature_mix_layer
            if fm.in_channels != c:
                raise ConfigError(f"{source}: feature_mix_layer: in_channels {fm.in_channels} does not match the {c} "
                                  "output channels of the last block")
            if fm.kernel_size != 1 or fm.stride != 1:
                raise ConfigError(f"{source}: feature_mix_layer must be a 1x1 stride-1 ConvLayer, got "
                                  f"{fm.kernel_size}x{fm.kernel_size} stride {fm.stride}")
            c = fm.out_channels
        if self.classifier.in_features != c:
            raise ConfigError(f"{source}: classifier: in_features {self.classifier.in_features} does not match the "
                              f"{c} channels before it")

    @property
    def n_classes(self) -> int:
        return self.classifier.out_features

    @property
    def in_channels(self) -> int:
        return self.first_conv.in_channels

    def at(self, resolution: int) -> Net:
        """This network at an input resolution (checks every stride against its feature map)."""
        return Net(self, resolution)

    # -- the search space ---------------------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Arch, dropout: float = 0.0) -> NetConfig:
        """The net config of an architecture of the space (what the official code writes for it)."""
        space = arch.space
        stem, mix, logits = space.fixed_ops
        blocks = []
        for layer, choice in zip(space.layers, arch.ops):
            shortcut = (IdentityLayer(in_channels=layer.in_ch, out_channels=layer.out_ch)
                        if layer.stride == 1 and layer.in_ch == layer.out_ch else None)
            conv: MBInvertedConvLayer | ZeroLayer
            if choice == ZERO:
                conv = ZeroLayer(stride=1)
            else:
                k, e = parse_candidate(choice)
                conv = MBInvertedConvLayer(in_channels=layer.in_ch, out_channels=layer.out_ch, kernel_size=k,
                                           stride=layer.stride, expand_ratio=e)
            blocks.append(MobileInvertedResidualBlock(mobile_inverted_conv=conv, shortcut=shortcut))
        return cls(
            bn=BNParam(momentum=0.1, eps=1e-3),
            first_conv=ConvLayer(in_channels=stem.in_ch, out_channels=stem.out_ch, kernel_size=3, stride=2),
            blocks=blocks,
            feature_mix_layer=ConvLayer(in_channels=mix.in_ch, out_channels=mix.out_ch, kernel_size=1, stride=1),
            classifier=LinearLayer(in_features=logits.in_ch, out_features=logits.out_ch, dropout_rate=dropout),
        )

    def to_arch(self, resolution: int = 224) -> Arch | None:
        """The architecture of the space this config is (at ``resolution``), or ``None`` if it is not one."""
        if len(self.blocks) != 22 or self.in_channels != 3:
            return None
        try:
            want = [o.key for o in self.at(resolution).op_specs]
        except ConfigError:
            return None
        ops = []
        for blk in self.blocks:
            conv = blk.mobile_inverted_conv
            ops.append(ZERO if isinstance(conv, ZeroLayer)
                       else f"{conv.kernel_size}x{conv.kernel_size}_MBConv{conv.expand_ratio}")
        for w in _WIDTHS:
            try:
                arch = Space(resolution, w, self.n_classes).arch(ops)
            except ConfigError:
                continue
            if [o.key for o in arch.op_specs] == want:
                return arch
        return None


_UNION_TAGS = {"MBInvertedConvLayer", "ZeroLayer"}


def _first_error(e: ValidationError) -> str:
    """One line for the first problem pydantic found (location as ``blocks[3].mobile_inverted_conv``)."""
    err = e.errors()[0]
    parts = [p for p in err["loc"] if p not in _UNION_TAGS]  # pydantic names the union member it tried
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    kind, msg = err["type"], err["msg"]
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return (f"{loc}: unknown layer name {ctx.get('tag')!r} (expected one of "
                f"{ctx.get('expected_tags')})")
    if kind == "union_tag_not_found":
        return f"{loc}: the layer has no 'name'"
    if kind == "literal_error" and loc.endswith("name"):
        return f"{loc}: unknown layer name {err.get('input')!r} (expected {(err.get('ctx') or {}).get('expected')})"
    if kind == "literal_error":
        return (f"{loc}: {err.get('input')!r} is not supported (expected {(err.get('ctx') or {}).get('expected')}: "
                "latbench measures ReLU6 convs with BN and no bias, as the official ProxylessNAS nets)")
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (not in the official ProxylessNAS format)"
    if kind == "missing":
        return f"{loc}: missing field"
    return f"{loc}: {msg}" if loc else msg


@dataclass(frozen=True)
class NetLayer:
    """One layer of a :class:`Net` at its feature map: its op (``None`` for an identity block)."""

    where: str
    op: OpSpec | None


@dataclass(frozen=True)
class Net:
    """A net config at an input resolution: the unit a campaign measures as a whole network."""

    config: NetConfig
    resolution: int

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ConfigError(f"resolution must be a positive integer, got {self.resolution!r}")
        self.layers  # noqa: B018 - validates every stride against its feature map now

    @property
    def layers(self) -> list[NetLayer]:
        cfg, r = self.config, self.resolution
        out: list[NetLayer] = []

        def fits(where: str, h: int, stride: int) -> None:
            if h % stride:
                raise ConfigError(f"{where}: stride {stride} does not divide the {h}x{h} feature map at resolution "
                                  f"{r} (use a resolution divisible by the network's total stride)")

        fc = cfg.first_conv
        fits("first_conv", r, fc.stride)
        h = conv_out(r, 3, fc.stride)
        out.append(NetLayer("first_conv", OpSpec("Conv", r, r, fc.in_channels, h, h, fc.out_channels, 1, 3,
                                                 fc.stride, 0)))
        c = fc.out_channels
        for i, blk in enumerate(cfg.blocks):
            conv = blk.mobile_inverted_conv
            where = f"blocks[{i}]"
            if isinstance(conv, ZeroLayer):
                out.append(NetLayer(where, None))
                continue
            fits(where, h, conv.stride)
            try:
                op = OpSpec.mbconv(h, h, conv.in_channels, conv.out_channels, conv.kernel_size, conv.expand_ratio,
                                   conv.stride, idskip=blk.shortcut is not None)
            except OpKeyError as e:
                raise ConfigError(f"{where}: {e}") from None
            out.append(NetLayer(where, op))
            h, c = op.out_h, op.out_ch
        if cfg.feature_mix_layer is not None:
            out.append(NetLayer("feature_mix_layer",
                                OpSpec.feature_mix(h, h, c, cfg.feature_mix_layer.out_channels)))
            c = cfg.feature_mix_layer.out_channels
        out.append(NetLayer("classifier", OpSpec.logits(h, h, c, cfg.n_classes)))
        return out

    @property
    def op_specs(self) -> list[OpSpec]:
        """The ops of the network in order (identity blocks left out), in the official key format."""
        return [layer.op for layer in self.layers if layer.op is not None]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.config.in_channels, self.resolution, self.resolution)

    @property
    def key(self) -> str:
        """``net-r<resolution>-c<classes>-`` + a digest of its op keys in order: they fix what the network
        computes (identity blocks compute nothing; dropout, BN parameters and the OFA-only fields do not
        change it), so two configs of the same network share the key, its artifact and its table row."""
        digest = hashlib.sha256("|".join(o.key for o in self.op_specs).encode()).hexdigest()[:16]
        return f"net-r{self.resolution}-c{self.config.n_classes}-{digest}"

    def to_arch(self) -> Arch | None:
        return self.config.to_arch(self.resolution)

    def canonical(self) -> Arch | Net:
        """The arch of the space this network is (same key and table rows as measuring the arch), else itself."""
        return self.to_arch() or self

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "net_config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "net") -> Net:
        if not isinstance(d, dict) or "net_config" not in d:
            raise ConfigError(f"{source}: expected {{\"resolution\": R, \"net_config\": {{...}}}}")
        return cls(NetConfig.from_dict(d["net_config"], source), int(d.get("resolution", 224)))


def load_net_config(path: str | Path, resolution: int = 224) -> Net:
    """Read a ``net.config`` file and place it at ``resolution`` (errors name the file)."""
    cfg = NetConfig.load(path)
    try:
        return Net(cfg, resolution)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
