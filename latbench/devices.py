"""Device configurations: a YAML file in ``device_configs/`` becomes a validated :class:`Device`.

Schema (every field but ``name`` and ``target`` has a default)::

    name: rasp4                       # how commands refer to it (defaults to the file name)
    description: Raspberry Pi 4 Model B (cortex-a72)
    target: {kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a72, mattr: ["+neon"]}
                                      # a TVM target dict, or a tag/kind string ("cuda", "nvidia/nvidia-h100");
                                      # mcpu "native" means the CPU of the machine that compiles
    host_target: null                 # host side of a GPU target (default: llvm for this machine)
    cross_compiler: aarch64-linux-gnu-g++   # links the .so when the device is another architecture
    emulated: false                   # true when timings come from an emulator (qemu), not the board
    num_threads: 4                    # TVM_NUM_THREADS on the device (TVM otherwise uses 1 thread here)
    rpc:
      mode: tracker                   # local (latbench starts a server here) | direct | tracker
                                      # | ssh (= direct with tunnel: true)
      host: 127.0.0.1                 # direct: the RPC server; tracker: the tracker
      tunnel: false                   # true: reach the board's loopback-bound server (and let it reach a
                                      # loopback tracker) through port forwards on the ssh connection
      bind: null                      # address the board's server listens on (default 127.0.0.1)
      port: 9190
      key: rasp4                      # tracker only: the device key servers register under
      session_timeout: 600            # s; the server ends a session that runs longer
      connect_timeout: 20             # s; connecting or waiting for a free server
    timing:
      number: 1                       # runs per repeat (TVM raises it to reach min_repeat_ms)
      repeat: 15                      # repeats; statistics are over these
      min_repeat_ms: 40
      warmup: 3                       # untimed runs before timing
      cooldown_ms: 0
      op_timeout: 120                 # s; one op's timing may not take longer
      rounds: 5                       # interleaved rounds: every item visited once per round, shuffled;
                                      # each visit times ceil(repeat / rounds) repeats (see latbench.rounds)
      ci_target: 0.02                 # more visits while an item's 95 % CI half-width is above 2 % of it
      max_visits: 0                   # cap on visits per item (0: max(rounds, 9)); unsettled ones are `unstable`
      burst_threshold: 0.5            # a visit whose reference op ran > 50 % slower than its quiet level is
                                      # rejected (a burst) and taken again
      reference: true                 # time the reference op between visits (burst rejection, normalisation)
      normalize: true                 # each visit's latency x (reference quiet level / reference around it)
      seed: 0                         # seed of the visit order
    ssh: {host: pi4.local, port: 22, user: pi, key_file: ~/.ssh/id_ed25519}   # management (optional)
                                      # also: known_hosts, host_key_policy (reject | accept-new | warn),
                                      # password_env (env var with the password), connect_timeout, python, workdir

Every default is written once, in the pydantic models below. Errors are one line naming the file,
the dotted field (``timing.repeat``) and what was expected.
"""
from __future__ import annotations

import copy
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args, get_origin

import annotated_types
import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, field_validator,
                      model_validator)
from pydantic._internal._model_construction import ModelMetaclass
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from latbench import settings
from latbench.errors import ConfigError, read_config_text

#: The embedded default device: this machine's CPU through a local RPC server.
LOCAL_CPU: dict[str, Any] = {
    "name": "local-cpu",
    "description": "This machine's CPU, timed through a TVM RPC server that latbench starts on 127.0.0.1.",
    "target": {"kind": "llvm", "mcpu": "native"},
    "num_threads": 0,  # 0: all cores of this machine
    "rpc": {"mode": "local"},
}

#: How a device's TVM RPC server is reached: a server latbench starts here, a server at host:port, or
#: the servers registered with an RPC tracker under a key.
RPCMode = Literal["local", "direct", "tracker"]
RPC_MODES: tuple[str, ...] = get_args(RPCMode)
#: What SSH does with an unknown host key (as OpenSSH's StrictHostKeyChecking yes / accept-new / no).
HostKeyPolicy = Literal["reject", "accept-new", "warn"]
HOST_KEY_POLICIES: tuple[str, ...] = get_args(HostKeyPolicy)
#: The default RPC port of each mode (local: any free port).
DEFAULT_PORTS: dict[str, int] = {"local": 0, "direct": 9090, "tracker": 9190}


def _package_configs() -> Path:
    """The device YAMLs shipped inside the package (``latbench/device_configs/``)."""
    return Path(str(resources.files("latbench") / "device_configs"))


def config_dirs() -> list[Path]:
    """Where device YAMLs are looked up, first match wins: ``$LATBENCH_DEVICE_CONFIGS`` (``:``-separated),
    ``./device_configs``, and the configs shipped with the package."""
    dirs = settings.device_config_dirs() + [Path.cwd() / "device_configs", _package_configs()]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


# -- field types: YAML scalars are taken as written (no "3" → 3, no true → 1) --------------------
def _integer(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise PydanticCustomError("latbench_type", "not an integer")
    return int(v)


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PydanticCustomError("latbench_type", "not a number")
    return float(v)


def _string(v: Any) -> Any:
    if not isinstance(v, str) or not v:
        raise PydanticCustomError("latbench_type", "not a non-empty string")
    return v


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_number)]
Str = Annotated[str, BeforeValidator(_string)]


def _fail(message: str) -> PydanticCustomError:
    """A validation error whose message (after ``<source>: ``) is exactly ``message``."""
    return PydanticCustomError("latbench", "{message}", {"message": message})


class _ConfigMeta(ModelMetaclass):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        # keyword construction (``Timing(repeat=3)``) reports like a YAML; nested validation never gets here
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            raise config_error(e, f"<{cls.__name__}>", cast("type[BaseModel]", cls)) from None


class _Config(BaseModel, metaclass=_ConfigMeta):
    """Frozen, validated, no unknown fields; keyword construction raises :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (like :func:`dataclasses.replace`)."""
        return type(self)(**{**dict(self), **changes})


class Timing(_Config):
    """How one op is timed (TVM time_evaluator settings plus warm-up, a per-op timeout and the
    measurement protocol's rounds)."""

    number: Int = Field(1, ge=1)  # runs per repeat (TVM raises it to reach min_repeat_ms)
    repeat: Int = Field(15, ge=1)  # repeats; statistics are over these
    min_repeat_ms: Int = Field(40, ge=0)
    warmup: Int = Field(3, ge=0)  # untimed runs before timing
    cooldown_ms: Int = Field(0, ge=0)
    op_timeout: Float = Field(120.0, ge=1)  # s; one op's timing may not take longer
    rounds: Int = Field(5, ge=1)  # interleaved rounds (latbench.rounds); a visit times ceil(repeat / rounds)
    ci_target: Float = Field(0.02, gt=0, lt=1)  # more visits while the CI half-width / median is above this
    max_visits: Int = Field(0, ge=0)  # cap on visits per item; 0 means max(rounds, 9) (latbench.rounds)
    burst_threshold: Float = Field(0.5, gt=0)  # a visit whose reference ran this much slower is rejected
    reference: StrictBool = True  # time the reference op between visits
    normalize: StrictBool = True  # normalise each visit by the reference timed around it
    seed: Int = Field(0, ge=0)  # seed of the visit order


class RPCConfig(_Config):
    """How to reach the device's TVM RPC server."""

    mode: RPCMode = "local"
    host: Str = "127.0.0.1"  # direct: the RPC server; tracker: the tracker
    port: Int = Field(DEFAULT_PORTS["local"], ge=0, le=65535, json_schema_extra={"expected": "a TCP port (0-65535)"})
    key: Str | None = None  # tracker only: the device key servers register under
    session_timeout: Float = Field(600.0, ge=1)  # s; the server ends a session that runs longer
    connect_timeout: Float = Field(20.0, ge=0.1)  # s; connecting or waiting for a free server
    tracker: Any = None  # accepted for older YAMLs, unused (the tracker is host:port)
    #: Reach the board's loopback-bound server through an SSH port forward (direct mode), or let the
    #: board's server register with a loopback tracker through a reverse forward (tracker mode).
    tunnel: StrictBool = False
    bind: Str | None = None  # the address the board's server listens on (default 127.0.0.1)

    @model_validator(mode="before")
    @classmethod
    def _mode_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") == "ssh":  # mode ssh: direct through an SSH tunnel
            if data.get("tunnel") is False:
                raise _fail("field 'rpc.tunnel': mode 'ssh' always tunnels, got tunnel: false")
            data = {**data, "mode": "direct", "tunnel": True}
        mode = data.get("mode", "local") if isinstance(data, dict) else None
        if isinstance(mode, str) and "port" not in data and mode in DEFAULT_PORTS:  # a bad mode: the field says
            data = {**data, "port": DEFAULT_PORTS[mode]}
        return data

    @model_validator(mode="after")
    def _tracker_key(self) -> RPCConfig:
        if self.mode == "tracker" and not self.key:
            raise _fail(f"field 'rpc.key': expected the device key its servers register under (tracker mode), "
                        f"got {self.key!r}")
        if self.tunnel and self.mode == "local":
            raise _fail("field 'rpc.tunnel': mode 'local' servers run here, there is nothing to tunnel")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class SSHConfig(_Config):
    """How to log into the device for management (start/stop its server, read its facts)."""

    host: Str
    port: Int = Field(22, ge=1)
    user: Str | None = None
    key_file: Str | None = None
    known_hosts: Str | None = None
    password: str | None = Field(None, repr=False)
    allow_password: bool = False  # a clear-text password is refused unless this is true
    connect_timeout: Float = Field(10.0, ge=0.1)
    python: Str = "python3"
    workdir: Str = "~/.latbench"
    host_key_policy: HostKeyPolicy = "reject"  # unknown host keys: reject | accept-new (saved to known_hosts) | warn
    password_env: Str | None = None  # name of an environment variable holding the password (opt-in)

    @model_validator(mode="after")
    def _password_opt_in(self) -> SSHConfig:
        if self.password is not None and not self.allow_password:
            raise _fail("field 'ssh.password': a clear-text password needs 'ssh.allow_password: true'; "
                        "prefer a key file or the SSH agent")
        return self


class Device(_Config):
    """A validated device configuration."""

    name: Str
    description: str = ""
    target: Any
    host_target: Any = None
    cross_compiler: Str | None = None
    emulated: StrictBool = False
    num_threads: Int = Field(0, ge=0)
    rpc: RPCConfig = Field(default_factory=RPCConfig)
    timing: Timing = Field(default_factory=Timing)
    ssh: SSHConfig | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    source: str = "<embedded>"  # where it was read from (not a YAML field)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for k in ("rpc", "timing", "extra", "description"):
                if k in data and data[k] is None:
                    del data[k]
            if "description" in data:
                data["description"] = str(data["description"])
        return data

    @model_validator(mode="after")
    def _tunnel_needs_ssh(self) -> Device:
        if self.rpc.tunnel and self.ssh is None:
            raise _fail("field 'rpc.tunnel': an SSH tunnel needs the 'ssh' section (host, user, key_file)")
        return self

    @field_validator("target")
    @classmethod
    def _target(cls, t: Any) -> Any:
        if isinstance(t, dict):
            if not isinstance(t.get("kind"), str):
                raise _fail(f"field 'target.kind': expected a TVM target kind such as 'llvm' or 'cuda', "
                            f"got {t.get('kind')!r}")
        elif not isinstance(t, str) or not t or " -" in t:
            raise _fail("field 'target': expected a TVM target dict ({kind: llvm, mcpu: ...}) or a tag such as "
                        f"'cuda' (CLI strings like 'llvm -mcpu=x' are not accepted by TVM 0.27), got {t!r}")
        return t

    @property
    def threads(self) -> int:
        """Threads TVM uses on the device (0 in the YAML means all cores of this machine)."""
        return self.num_threads or (os.cpu_count() or 1)

    def resolved_target(self) -> Any:
        """The target with ``mcpu: native`` replaced by this machine's CPU name (TVM ignores 'native')."""
        t = copy.deepcopy(self.target)
        if isinstance(t, dict) and t.get("mcpu") == "native":
            import tvm  # deferred: importing TVM costs seconds

            t["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
            if self.rpc.mode == "local":
                t.setdefault("num-cores", self.threads)
        return t

    def target_json(self) -> str:
        """The resolved target as canonical JSON (what tables record and caches key on)."""
        t = self.resolved_target()
        return json.dumps(t, sort_keys=True) if isinstance(t, dict) else json.dumps(t)

    def tvm_target(self) -> Any:
        """A ``tvm.target.Target`` (TVM 0.27 wants a Target object, never a dict, in ``tvm.compile``)."""
        import tvm

        t = self.resolved_target()
        if self.host_target is not None:
            return tvm.target.Target(t, host=self.host_target)
        return tvm.target.Target(t)

    @property
    def is_cuda(self) -> bool:
        t = self.target
        kind = t.get("kind") if isinstance(t, dict) else str(t).split("/")[0]
        return kind in ("cuda", "nvidia")


#: Hints added to "missing field" errors.
_MISSING_HINTS = {"target": " (e.g. {kind: llvm, mcpu: native} or 'cuda')"}
_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
           annotated_types.Lt: ("<", "lt")}


def _unoptional(ann: Any) -> Any:
    args = [a for a in get_args(ann) if a is not type(None)]
    return args[0] if get_origin(ann) is not Literal and len(args) == 1 and type(None) in get_args(ann) else ann


def _expected(model: type[BaseModel], name: str) -> str:
    """What a field expects, in words, from its type and constraints."""
    f = model.model_fields[name]
    if isinstance(f.json_schema_extra, dict) and "expected" in f.json_schema_extra:
        return str(f.json_schema_extra["expected"])
    ann = _unoptional(f.annotation)
    if get_origin(ann) is Literal:
        return " or ".join(str(a) for a in get_args(ann))
    if ann is bool:
        return "true or false"
    if ann in (int, float):
        bounds = [f"{_BOUNDS[type(m)][0]} {getattr(m, _BOUNDS[type(m)][1]):g}" for m in f.metadata
                  if type(m) in _BOUNDS]
        return ("an integer" if ann is int else "a number") + (" " + " and ".join(bounds) if bounds else "")
    if ann is str:
        return "a non-empty string"
    return "a mapping"


def config_error(e: ValidationError, source: str, model: type[BaseModel] = Device) -> ConfigError:
    """One line for the first problem pydantic found: the source, the dotted field, what was expected."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # walk the models down the location (a field of a nested config names its section: 'timing.repeat')
    sections: dict[type[BaseModel], str] = {RPCConfig: "rpc.", Timing: "timing.", SSHConfig: "ssh."}
    prefix = sections.get(model, "")
    owner: type[BaseModel] = model
    for part in loc[:-1]:
        sub = _unoptional(owner.model_fields[part].annotation) if part in owner.model_fields else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            owner = sub
    dotted = prefix + ".".join(loc)
    if err["type"] == "latbench":
        return ConfigError(f"{source}: {err['ctx']['message']}")
    if err["type"] == "extra_forbidden":
        known = [k for k in owner.model_fields if not (owner is Device and k == "source")]
        return ConfigError(f"{source}: unknown field '{dotted}'; known: {', '.join(known)}")
    if err["type"] == "missing":
        return ConfigError(f"{source}: missing field '{dotted}'{_MISSING_HINTS.get(dotted, '')}")
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") or not loc:
        return ConfigError(f"{source}: field '{dotted}': expected a mapping, got {err['input']!r}")
    return ConfigError(f"{source}: field '{dotted}': expected {_expected(owner, loc[-1])}, got {err['input']!r}")


# -- loading ----------------------------------------------------------------------------------
def device_from_dict(d: Any, source: str = "<dict>", default_name: str | None = None) -> Device:
    """Validate a parsed YAML mapping and build a :class:`Device`."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a device config is a YAML mapping (name, target, rpc, timing, ...), "
                          f"got {type(d).__name__}")
    if "source" in d:
        known = [k for k in Device.model_fields if k != "source"]
        raise ConfigError(f"{source}: unknown field 'source'; known: {', '.join(known)}")
    data = {**d, "source": source}
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    try:
        return Device.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source) from None


def load_device_file(path: str | Path) -> Device:
    """Load and validate one device YAML."""
    path = Path(path)
    text = read_config_text(path, "device config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    return device_from_dict(data, str(path), default_name=path.stem)


@cache
def _scan(dirs: tuple[Path, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            found.setdefault(p.stem, p)
    return found


def available_devices() -> dict[str, Path | None]:
    """Device names → YAML path (``None`` for the embedded local-cpu default)."""
    found: dict[str, Path | None] = dict(_scan(tuple(config_dirs())))
    found.setdefault("local-cpu", None)
    return dict(sorted(found.items()))


def get_device(name_or_path: str) -> Device:
    """A device by name (looked up in :func:`config_dirs`) or by the path of a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_device_file(name_or_path)
    _scan.cache_clear()
    devices = available_devices()
    if name_or_path not in devices:
        raise ConfigError(f"unknown target {name_or_path!r}; known devices: {', '.join(devices)} "
                          f"(add a YAML to device_configs/ or pass its path)")
    path = devices[name_or_path]
    return device_from_dict(LOCAL_CPU, "<embedded local-cpu>") if path is None else load_device_file(path)
