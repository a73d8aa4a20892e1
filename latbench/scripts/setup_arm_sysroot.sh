#!/usr/bin/env bash
# Build an aarch64 Python 3.11 that runs under qemu-aarch64-static: the stand-in for a Raspberry Pi 4's
# Python used by the `rasp4-qemu` device and its tests. Idempotent and cached: a finished sysroot is
# marked with .done and reused. Checked recipe: ../shared/notes/arm-qemu.md.
#
#   latbench/scripts/setup_arm_sysroot.sh [DEST]     (default: ${LATBENCH_CACHE:-~/.cache/latbench}/arm64-python)
#
# Result: DEST/bin/python3-arm (wrapper: qemu + sysroot + site), DEST/sysroot (Debian arm64 packages,
# extracted, not installed), DEST/site (numpy for aarch64). Needs root for `dpkg --add-architecture arm64`
# + `apt-get update` (once), qemu-user-static, a host python3.11 (precompiles .pyc), pip.
set -euo pipefail

DEST="${1:-${LATBENCH_CACHE:-$HOME/.cache/latbench}/arm64-python}"
NUMPY_VERSION="${NUMPY_VERSION:-2.4.6}"
PIP="${PIP:-$(dirname "$0")/../.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"

if [ -f "$DEST/.done" ]; then
  echo "arm64 python ready: $DEST/bin/python3-arm"
  exit 0
fi
command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static missing: apt-get install -y qemu-user-static" >&2; exit 1; }

PKGS="libc6 gcc-12-base libgcc-s1 libstdc++6 libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11
libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3
libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libcom-err2 libgdbm6
libgdbm-compat4"

mkdir -p "$DEST/debs" "$DEST/sysroot" "$DEST/site" "$DEST/wheels" "$DEST/bin"
DEST="$(cd "$DEST" && pwd)"

# 1. Debian arm64 packages, downloaded and extracted (installing python3:arm64 would remove the amd64 python3).
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
missing=""
for p in $PKGS; do ls "$DEST/debs/${p}_"*_arm64.deb >/dev/null 2>&1 || missing="$missing $p:arm64"; done
if [ -n "$missing" ]; then
  (cd "$DEST/debs" && apt-get download -qq $missing) || { apt-get update -qq && (cd "$DEST/debs" && apt-get download -qq $missing); }
fi
for deb in "$DEST"/debs/*.deb; do dpkg -x "$deb" "$DEST/sysroot"; done

# 2. numpy for aarch64 (the runtime-only timer needs it; the RPC server does not).
if ! ls "$DEST/wheels"/numpy-*aarch64*.whl >/dev/null 2>&1; then
  $PIP download -q --only-binary=:all: --no-deps --python-version 3.11 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 -d "$DEST/wheels" "numpy==$NUMPY_VERSION"
fi
for w in "$DEST"/wheels/*.whl; do python3 -m zipfile -e "$w" "$DEST/site"; done

# 3. Precompile: the emulated python cannot write __pycache__ (import numpy 6 s -> 1.1 s).
HOSTPY="$(command -v python3.11 || true)"
if [ -n "$HOSTPY" ]; then
  "$HOSTPY" -m compileall -q -j2 "$DEST/sysroot/usr/lib/python3.11" "$DEST/site" >/dev/null 2>&1 || true
fi

# 4. Wrapper: -0 makes sys.executable the wrapper, so subprocesses re-enter qemu (binfmt is not mounted).
cat > "$DEST/bin/python3-arm" <<EOF
#!/bin/sh
# aarch64 Python 3.11 under qemu (made by latbench/scripts/setup_arm_sysroot.sh)
export PYTHONPATH="$DEST/site\${PYTHONPATH:+:\$PYTHONPATH}"
exec qemu-aarch64-static -0 "$DEST/bin/python3-arm" -L "$DEST/sysroot" "$DEST/sysroot/usr/bin/python3.11" "\$@"
EOF
chmod +x "$DEST/bin/python3-arm"

# 5. Check, then mark done.
out="$("$DEST/bin/python3-arm" -c 'import platform, numpy; print(platform.machine(), numpy.__version__)')"
case "$out" in
  aarch64*) ;;
  *) echo "arm64 python check failed: $out" >&2; exit 1 ;;
esac
touch "$DEST/.done"
echo "arm64 python ready: $DEST/bin/python3-arm ($out)"
