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
      host: 127.0.0.1                 # direct: the RPC server; tracker: the tracker
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
      max_visits: 0                   # cap on visits per item (0: 3 x rounds); unsettled items are `unstable`
      burst_threshold: 0.10           # a visit whose reference op ran > 10 % slower than its best is rejected
      reference: true                 # time the reference op between visits (burst rejection)
      seed: 0                         # seed of the visit order
    ssh: {host: pi4.local, port: 22, user: pi, key_file: ~/.ssh/id_ed25519}   # management (optional)
                                      # also: known_hosts, host_key_policy (reject | accept-new | warn),
                                      # password_env (env var with the password), connect_timeout, python, workdir

Errors name the file, the field and what was expected.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from latbench.errors import ConfigError

#: The embedded default device: this machine's CPU through a local RPC server.
LOCAL_CPU: dict[str, Any] = {
    "name": "local-cpu",
    "description": "This machine's CPU, timed through a TVM RPC server that latbench starts on 127.0.0.1.",
    "target": {"kind": "llvm", "mcpu": "native"},
    "num_threads": 0,  # 0: all cores of this machine
    "rpc": {"mode": "local"},
}

RPC_MODES = ("local", "direct", "tracker")


def _package_configs() -> Path:
    return Path(__file__).resolve().parent.parent / "device_configs"


def config_dirs() -> list[Path]:
    """Where device YAMLs are looked up: ``$LATBENCH_DEVICE_CONFIGS`` (``:``-separated), ``./device_configs``,
    and the repository's ``device_configs/``."""
    dirs = [Path(p) for p in os.environ.get("LATBENCH_DEVICE_CONFIGS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "device_configs", _package_configs()]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


@dataclass(frozen=True)
class Timing:
    """How one op is timed (TVM time_evaluator settings plus warm-up and a per-op timeout)."""

    number: int = 1
    repeat: int = 15
    min_repeat_ms: int = 40
    warmup: int = 3
    cooldown_ms: int = 0
    op_timeout: float = 120.0
    rounds: int = 5
    ci_target: float = 0.02
    max_visits: int = 0
    burst_threshold: float = 0.10
    reference: bool = True
    seed: int = 0


@dataclass(frozen=True)
class RPCConfig:
    """How to reach the device's TVM RPC server."""

    mode: str = "local"
    host: str = "127.0.0.1"
    port: int = 0
    key: str | None = None
    session_timeout: float = 600.0
    connect_timeout: float = 20.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SSHConfig:
    """How to log into the device for management (start/stop its server, read its facts)."""

    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    password: str | None = None
    connect_timeout: float = 10.0
    python: str = "python3"
    workdir: str = "~/.latbench"
    host_key_policy: str = "reject"  # unknown host keys: reject | accept-new (saved to known_hosts) | warn
    password_env: str | None = None  # name of an environment variable holding the password (opt-in)


@dataclass(frozen=True)
class Device:
    """A validated device configuration."""

    name: str
    target: Any
    description: str = ""
    host_target: Any = None
    cross_compiler: str | None = None
    emulated: bool = False
    num_threads: int = 0
    rpc: RPCConfig = field(default_factory=RPCConfig)
    timing: Timing = field(default_factory=Timing)
    ssh: SSHConfig | None = None
    source: str = "<embedded>"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

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

    def tvm_target(self):
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


# -- loading and validation ------------------------------------------------------------------
class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, fld: str, expected: str, got: Any) -> ConfigError:
        return ConfigError(f"{self.source}: field '{fld}': expected {expected}, got {got!r}")

    def section(self, d: dict, name: str, allowed: tuple[str, ...]) -> dict:
        sub = d.get(name) or {}
        if not isinstance(sub, dict):
            raise self.fail(name, "a mapping", sub)
        unknown = sorted(set(sub) - set(allowed))
        if unknown:
            raise ConfigError(f"{self.source}: unknown field '{name}.{unknown[0]}'; known: {', '.join(allowed)}")
        return sub

    def num(self, d: dict, fld: str, default: Any, kind: type, minimum: float, prefix: str = "") -> Any:
        v = d.get(fld, default)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
        if not ok or v < minimum:
            what = "an integer" if kind is int else "a number"
            raise self.fail(prefix + fld, f"{what} >= {minimum}", v)
        return kind(v)

    def string(self, d: dict, fld: str, default: Any = None, prefix: str = "", required: bool = False) -> Any:
        v = d.get(fld, default)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(prefix + fld, "a non-empty string", v)
        return v


_TOP = ("name", "description", "target", "host_target", "cross_compiler", "emulated", "num_threads",
        "rpc", "timing", "ssh", "extra")


HOST_KEY_POLICIES = ("reject", "accept-new", "warn")


def _bool(c: _Checker, d: dict, fld: str, default: bool) -> bool:
    v = d.get(fld, default)
    if not isinstance(v, bool):
        raise c.fail("timing." + fld, "true or false", v)
    return v


def _host_key_policy(c: _Checker, s: dict) -> str:
    v = s.get("host_key_policy", "reject")
    if v not in HOST_KEY_POLICIES:
        raise c.fail("ssh.host_key_policy", " or ".join(HOST_KEY_POLICIES), v)
    return v


def device_from_dict(d: Any, source: str = "<dict>", default_name: str | None = None) -> Device:
    """Validate a parsed YAML mapping and build a :class:`Device`."""
    c = _Checker(source)
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a device config is a YAML mapping (name, target, rpc, timing, ...), "
                          f"got {type(d).__name__}")
    unknown = sorted(set(d) - set(_TOP))
    if unknown:
        raise ConfigError(f"{source}: unknown field '{unknown[0]}'; known: {', '.join(_TOP)}")
    name = c.string(d, "name", default_name, required=True)
    if "target" not in d:
        raise ConfigError(f"{source}: missing field 'target' (e.g. {{kind: llvm, mcpu: native}} or 'cuda')")
    target = d["target"]
    if isinstance(target, dict):
        if not isinstance(target.get("kind"), str):
            raise c.fail("target.kind", "a TVM target kind such as 'llvm' or 'cuda'", target.get("kind"))
    elif not isinstance(target, str) or not target or " -" in target:
        raise c.fail("target", "a TVM target dict ({kind: llvm, mcpu: ...}) or a tag such as 'cuda' "
                     "(CLI strings like 'llvm -mcpu=x' are not accepted by TVM 0.27)", target)

    r = c.section(d, "rpc", ("mode", "host", "port", "key", "session_timeout", "connect_timeout", "tracker"))
    mode = r.get("mode", "local")
    if mode not in RPC_MODES:
        raise c.fail("rpc.mode", " or ".join(RPC_MODES), mode)
    host = c.string(r, "host", "127.0.0.1", "rpc.")
    port = c.num(r, "port", 0 if mode == "local" else (9190 if mode == "tracker" else 9090), int, 0, "rpc.")
    if port > 65535:
        raise c.fail("rpc.port", "a TCP port (0-65535)", port)
    key = c.string(r, "key", None, "rpc.")
    if mode == "tracker" and not key:
        raise c.fail("rpc.key", "the device key its servers register under (tracker mode)", key)
    rpc = RPCConfig(mode, host, port, key,
                    c.num(r, "session_timeout", 600, float, 1, "rpc."),
                    c.num(r, "connect_timeout", 20, float, 0.1, "rpc."))

    t = c.section(d, "timing", tuple(Timing.__dataclass_fields__))
    timing = Timing(c.num(t, "number", 1, int, 1, "timing."), c.num(t, "repeat", 15, int, 1, "timing."),
                    c.num(t, "min_repeat_ms", 40, int, 0, "timing."), c.num(t, "warmup", 3, int, 0, "timing."),
                    c.num(t, "cooldown_ms", 0, int, 0, "timing."), c.num(t, "op_timeout", 120, float, 1, "timing."),
                    c.num(t, "rounds", 5, int, 1, "timing."), c.num(t, "ci_target", 0.02, float, 1e-6, "timing."),
                    c.num(t, "max_visits", 0, int, 0, "timing."), c.num(t, "burst_threshold", 0.1, float, 1e-6, "timing."),
                    _bool(c, t, "reference", True), c.num(t, "seed", 0, int, 0, "timing."))

    ssh = None
    if d.get("ssh") is not None:
        s = c.section(d, "ssh", tuple(SSHConfig.__dataclass_fields__) + ("allow_password",))
        password = s.get("password")
        if password is not None and not s.get("allow_password"):
            raise ConfigError(f"{source}: field 'ssh.password': a clear-text password needs 'ssh.allow_password: true'; "
                              "prefer a key file or the SSH agent")
        ssh = SSHConfig(c.string(s, "host", None, "ssh.", required=True), c.num(s, "port", 22, int, 1, "ssh."),
                        c.string(s, "user", None, "ssh."), c.string(s, "key_file", None, "ssh."),
                        c.string(s, "known_hosts", None, "ssh."), password,
                        c.num(s, "connect_timeout", 10, float, 0.1, "ssh."),
                        c.string(s, "python", "python3", "ssh."), c.string(s, "workdir", "~/.latbench", "ssh."),
                        _host_key_policy(c, s), c.string(s, "password_env", None, "ssh."))

    emulated = d.get("emulated", False)
    if not isinstance(emulated, bool):
        raise c.fail("emulated", "true or false", emulated)
    extra = d.get("extra") or {}
    if not isinstance(extra, dict):
        raise c.fail("extra", "a mapping", extra)
    return Device(
        name=name, target=target, description=str(d.get("description", "")),
        host_target=d.get("host_target"), cross_compiler=c.string(d, "cross_compiler"),
        emulated=emulated, num_threads=c.num(d, "num_threads", 0, int, 0), rpc=rpc, timing=timing, ssh=ssh,
        source=source, extra=extra,
    )


def load_device_file(path: str | Path) -> Device:
    """Load and validate one device YAML."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read device config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    return device_from_dict(data, str(path), default_name=path.stem)


@lru_cache(maxsize=None)
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
