"""``python -m latbench.runners.serve PARENT_PID [rpc_server args]``: TVM's RPC server with a watchdog.

A server latbench starts must not outlive latbench: if the parent process disappears (even by
SIGKILL, which runs no cleanup), the watchdog kills the server's whole process group (the
listener and the per-session children TVM forks).
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

from latbench.board import conditions


def _watch(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def main() -> None:
    parent = int(sys.argv[1])
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    import tvm_ffi  # after the watchdog: importing takes seconds on a loaded machine, a window for orphans

    # the server's sessions (forked children) inherit this global function: clients read conditions through it
    tvm_ffi.register_global_func(conditions.RPC_FUNCTION, lambda: conditions.read_json(), override=True)
    sys.argv = ["tvm.exec.rpc_server", *sys.argv[2:]]
    runpy.run_module("tvm.exec.rpc_server", run_name="__main__")


if __name__ == "__main__":
    main()
