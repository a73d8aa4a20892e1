"""The board's facts as one JSON line: uname, CPU, cores, memory, governors, clocks, temperatures, Python, TVM.

Run with the board's Python, fed on stdin: ``python3 - BUNDLE_DIR < facts.py`` (``latbench device info``).
Standard library only; reads /proc and /sys and never fails (an unreadable fact is null).
"""
import glob
import json
import os
import platform
import sys

PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
         "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
         "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2"}


def rd(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_and_board():
    cpu = board = part = None
    for line in (rd("/proc/cpuinfo") or "").splitlines():
        if ":" not in line:
            continue
        k, v = [x.strip() for x in line.split(":", 1)]
        k = k.lower()
        if k in ("model name", "cpu model") and not cpu:
            cpu = v
        elif k == "hardware" and not board:
            board = v
        elif k == "model" and not v.isdigit():
            board = v
        elif k == "cpu part" and not part:
            part = PARTS.get(v.lower(), v)
    board = rd("/proc/device-tree/model") or board
    return cpu or part, board.strip("\x00") if board else board


def mem_gb():
    for line in (rd("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return None


def main():
    cpu, board = cpu_and_board()
    govs = sorted(set(filter(None, (rd(p) for p in
                                    glob.glob("/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")))))
    freqs = [int(x) // 1000 for x in
             filter(None, (rd(p) for p in glob.glob("/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq")))]
    temps = {}
    for z in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = rd(z + "/temp")
        if t and t.lstrip("-").isdigit():
            temps[rd(z + "/type") or os.path.basename(z)] = int(t) / 1000
    out = {"uname": " ".join(platform.uname()), "machine": platform.machine(), "cpu_model": cpu, "board": board,
           "cores": os.cpu_count(), "mem_gb": mem_gb(), "governors": govs, "freq_mhz": freqs,
           "temperature_c": temps, "python": platform.python_version()}
    bundle = sys.argv[1] if len(sys.argv) > 1 else ""
    if bundle and os.path.isdir(os.path.join(bundle, "site")):
        sys.path.insert(0, os.path.join(bundle, "site"))
    try:
        import tvm_ffi

        out["tvm_ffi"] = getattr(tvm_ffi, "__version__", "?")
    except Exception:
        out["tvm_ffi"] = None
    b = rd(os.path.join(bundle, "bundle.json")) if bundle else None
    if b:
        b = json.loads(b)
        out["tvm_runtime"] = "%s (latbench bundle, %s)" % (b.get("apache-tvm"), b.get("arch"))
    else:
        try:
            import tvm

            out["tvm_runtime"] = tvm.__version__ + " (full tvm)"
        except Exception:
            out["tvm_runtime"] = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
