"""Device YAMLs: the embedded default, validation errors that name file, field and expectation."""
from __future__ import annotations

import pytest

from latbench.devices import LOCAL_CPU, device_from_dict, get_device, load_device_file
from latbench.errors import ConfigError


def test_local_cpu_default_resolves_native():
    d = get_device("local-cpu")
    assert d.rpc.mode == "local" and d.threads >= 1
    t = d.resolved_target()
    assert t["mcpu"] != "native" and t["kind"] == "llvm"  # TVM ignores 'native': we resolve it
    assert str(d.tvm_target().kind) == "llvm"


def test_unknown_target_lists_known_devices():
    with pytest.raises(ConfigError, match="unknown target 'nope'.*local-cpu"):
        get_device("nope")


@pytest.mark.parametrize("text,pattern", [
    ("name: x\ntarget: {kind: llvm\n", r"malformed YAML at line"),
    ("- a\n- b\n", r"a YAML mapping"),
    ("name: x\n", r"missing field 'target'"),
    ("name: x\ntarget: 'llvm -mcpu=cortex-a72'\n", r"field 'target'.*dict"),
    ("name: x\ntarget: llvm\nrpc: {mode: carrier-pigeon}\n", r"rpc.mode.*local or direct or tracker"),
    ("name: x\ntarget: llvm\nrpc: {mode: tracker}\n", r"rpc.key"),
    ("name: x\ntarget: llvm\ntiming: {repeat: -3}\n", r"timing.repeat"),
    ("name: x\ntarget: llvm\ntiming: {repeat: many}\n", r"timing.repeat"),
    ("name: x\ntarget: llvm\nspeed: fast\n", r"unknown field 'speed'"),
    ("name: x\ntarget: llvm\nssh: {host: pi, password: hunter2}\n", r"ssh.password"),
])
def test_bad_yaml_names_file_and_field(tmp_path, text, pattern):
    p = tmp_path / "board.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_device_file(p)
    assert str(p) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read device config"):
        get_device(str(tmp_path / "absent.yaml"))


def test_embedded_default_is_valid():
    d = device_from_dict(LOCAL_CPU, "<embedded>")
    assert d.name == "local-cpu" and d.timing.repeat >= 5
