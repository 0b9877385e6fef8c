"""Child processes that cannot outlive the CLI.

Heavy or crash-prone work (AOTInductor compiles, TensorRT builds, tritonserver) runs in children
in their own session, so a timeout can kill the whole group. How each way of dying is covered:

* SIGINT, SIGTERM, SIGHUP: ``handle_termination`` turns them into ``Terminated`` (a
  ``KeyboardInterrupt``), so ``finally`` blocks stop servers and remove staging dirs;
* SIGKILL (no chance to clean up): the kernel's parent-death signal (``die_with_parent``) ends
  the direct child, and a ``Watchdog`` (a small process in its own session, holding the read end
  of a pipe only the CLI writes to) sees the pipe close, kills the child's whole process group
  (tritonserver's Python stubs included, which the parent-death signal does not reach) and
  removes the shared-memory regions the group leaves in ``/dev/shm``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess.Popen: SIGKILL this child when its parent dies (Linux).

    The signal fires when the *thread* that started the child ends, so start long-lived children
    from the main thread.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so the same cleanup runs; ``signum`` gives the exit code."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    # tritonclient.http runs on gevent: a signal that lands in gevent's hub is re-raised in the main
    # greenlet (KeyboardInterrupt is a "system error" there) but printed first with a traceback
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        try:
            gevent.get_hub().exception_stream = None  # we are ending: nothing the hub prints matters now
        except Exception:  # noqa: BLE001 - best effort
            pass
    raise Terminated(signum)


def handle_termination() -> None:
    """Make SIGTERM and SIGHUP unwind the main thread like Ctrl-C (only callable from it)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_group(pgid: int, shm_glob: str | None = None, wait_s: float = 10.0) -> None:
    """SIGKILL a process group, wait until it is gone, then remove ``/dev/shm/<shm_glob>`` regions."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + wait_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if shm_glob:
        for region in Path("/dev/shm").glob(shm_glob):
            try:
                region.unlink()
            except OSError:
                pass


class Watchdog:
    """Kills a process group and removes its shared memory once this process is gone, however it ends.

    ``arm(pgid)`` starts the watchdog; ``disarm()`` (after a clean stop) lets it exit without
    touching anything. Only this process holds the pipe's write end (the fd is not inheritable),
    so the pipe closes exactly when this process exits, SIGKILL included.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._write_fd: int | None = None

    def arm(self, pgid: int | None = None, shm_glob: str | None = None, remove: tuple[Path, ...] = (),
            lock_file: Path | None = None) -> None:
        """Start watching. On this process's death the watchdog kills group ``pgid`` (if given) and its
        ``/dev/shm/<shm_glob>`` regions, deletes the ``remove`` trees (a killed writer's staging dir) and
        releases ``lock_file`` the way a clean release does (lock it, unlink it), if nobody holds it."""
        read_fd, write_fd = os.pipe()
        args = [str(pgid or 0), shm_glob or "", str(lock_file or ""), *(str(p) for p in remove)]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _WATCHDOG_MAIN, str(Path(__file__).resolve().parents[1]), *args],
                stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or a kill of the CLI's group does not reach it
            )
        finally:
            os.close(read_fd)
        self._write_fd = write_fd

    def disarm(self) -> None:
        """The group was stopped cleanly: tell the watchdog to exit without killing anything."""
        if self._write_fd is not None:
            try:
                os.write(self._write_fd, b"x")
            except OSError:
                pass
            os.close(self._write_fd)
            self._write_fd = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def _release_stale_lock(lock_file: Path) -> None:
    """Unlink a lock file nobody holds, under the lock itself (as a clean release does)."""
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for _ in range(40):  # the dead owner's descriptors close while we wake: allow them 2 s
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            return  # held by a live run: leave it
        if os.fstat(fd).st_ino == os.lstat(lock_file).st_ino:
            os.unlink(lock_file)
    except OSError:
        pass  # already gone
    finally:
        os.close(fd)


def _watch(pgid: int, shm_glob: str, lock_file: str = "", *remove: str) -> None:
    """Watchdog main: block until the pipe closes; EOF without the "disarm" byte means the owner died."""
    import shutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    data = os.read(0, 1)
    if data:  # disarmed: the owner cleaned up itself
        return
    if pgid:
        reap_group(pgid, shm_glob or None)
    for path in remove:
        shutil.rmtree(path, ignore_errors=True)
    if lock_file:
        _release_stale_lock(Path(lock_file))


# -I: no user site, no PYTHON* variables; the package's own root goes first on sys.path
_WATCHDOG_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); from aitune_triton.procs import _watch; "
                  "_watch(int(sys.argv[2]), *sys.argv[3:])")
