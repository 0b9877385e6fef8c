"""Child processes that cannot outlive the CLI.

Heavy or crash-prone work (AOTInductor compiles, TensorRT builds) runs in children in their own
session, so a timeout can kill the whole group. If the CLI itself is killed (SIGKILL leaves it no
chance to clean up), the kernel's parent-death signal ends the child too.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess.Popen: SIGKILL this child when its parent dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
