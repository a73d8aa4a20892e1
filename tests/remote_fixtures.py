"""Fixtures shared by the remote-device tests (import them into a test module's namespace)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from latbench.runners.process import free_port, port_is_open

#: A meta-path hook that makes `import tvm` fail, for "board without tvm" runs: python -c PRELUDE + runpy.
NO_TVM_PRELUDE = """
import sys, runpy
class _NoTVM:
    def find_spec(self, name, path=None, target=None):
        if name == "tvm" or name.startswith("tvm."):
            raise ImportError("import of " + name + " blocked: runtime-only test")
sys.meta_path.insert(0, _NoTVM())
"""


def small_op_jobs(n_mb: int = 2):
    """A handful of cheap ops at resolution 32 (stem, final 1x1, logits + n_mb MBConvs)."""
    from latbench.campaign import Job
    from latbench.space import Space

    ops = Space(resolution=32).distinct_ops()
    mb = [o for o in ops if o.kind == "expanded_conv"]
    return [Job.op(o) for o in [o for o in ops if o.kind != "expanded_conv"] + mb[:n_mb]]


#: Built artifact sets, so each is compiled once per session even though several test modules import
#: these fixtures (pytest then sees one fixture definition per module).
_SETS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def x86_set(tmp_path_factory) -> Path:
    """An artifact set (manifest + libs) of three small ops for this machine's CPU."""
    from latbench.campaign import compile_jobs

    if "x86" not in _SETS:
        out = tmp_path_factory.mktemp("x86set")
        compile_jobs(small_op_jobs(0), "local-cpu", out)
        _SETS["x86"] = out
    return _SETS["x86"]


@pytest.fixture(scope="session")
def arm_set(tmp_path_factory) -> Path:
    """An artifact set of two small ops cross-compiled for the Raspberry Pi 4 (cortex-a72)."""
    from latbench.campaign import compile_jobs

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (apt-get install g++-aarch64-linux-gnu)")
    if "arm" not in _SETS:
        out = tmp_path_factory.mktemp("armset")
        compile_jobs(small_op_jobs(0)[:2], "rasp4", out)
        _SETS["arm"] = out
    return _SETS["arm"]


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 (own host key, own config, free port); stopped even on failure.

    Yields a dict: port, host key line, client key path, known_hosts path (holding the host key).
    """
    sshd_bin = "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin):
        pytest.skip("openssh-server is not installed (apt-get install -y openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    for k in ("hostkey", "clientkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / k)], check=True)
    shutil.copy(d / "clientkey.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'hostkey'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin yes\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir (a fresh machine lacks it)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"))
    try:
        deadline = time.monotonic() + 10
        while not port_is_open("127.0.0.1", port, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        keytype, keydata = (d / "hostkey.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {keytype} {keydata}\n")
        yield {"port": port, "dir": d, "client_key": d / "clientkey", "known_hosts": d / "known_hosts",
               "host_key": f"{keytype} {keydata}"}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
