#!/usr/bin/env bash
# Install latbench and everything it needs into .venv (system packages via apt when run as root).
# Idempotent: a second run only checks. Usage: scripts/install.sh   (PYTHON=python3.11 to choose Python)
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C++ compiler (TVM links libraries with it), the aarch64 cross compiler and
# qemu (Raspberry Pi builds and their emulated timing), OpenSSH (device management tests),
# Fashion-MNIST (the search's offline data set), Chromium (report rendering check).
APT_PACKAGES=(g++ g++-aarch64-linux-gnu qemu-user-static openssh-server openssh-client
              dataset-fashion-mnist chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO=none; fi
  if [ "$SUDO" = none ]; then
    echo "install.sh: please install these Debian packages as root: ${missing[*]}" >&2
    exit 1
  fi
  echo "install.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch==2.13.0 (pinned in pyproject.toml) is the CPU build; apache-tvm-ffi is pinned to
# 0.1.14.post1 because 0.1.15 crashes TVM's IR serialisation (and so its tuning).
.venv/bin/python -m pip install -q -e ".[test,lint]"
echo "install.sh: ready — .venv/bin/latbench --help" >&2
