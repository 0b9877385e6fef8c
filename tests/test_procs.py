"""procs: children die with the CLI however it ends (real processes, real signals)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aitune_triton.procs import Terminated, Watchdog, handle_termination

# an "owner" (the CLI's stand-in) starts a group leader with a grandchild (a server and its stub),
# arms a watchdog for the group, creates a shared-memory file for it, prints the pids, and sleeps
OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from aitune_triton.procs import Watchdog, die_with_parent
    leader = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                               "print(c.pid, flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=die_with_parent)
    stub = int(leader.stdout.readline())
    Path("/dev/shm/%s0" % sys.argv[1]).write_bytes(b"x")
    dog = Watchdog()
    dog.arm(leader.pid, sys.argv[1] + "*")
    print(leader.pid, stub, flush=True)
    if sys.argv[2] == "clean":
        leader.kill(); leader.wait()
        subprocess.run(["kill", "-9", str(stub)])
        dog.disarm()
        print("disarmed", flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def shm_prefix():
    prefix = "aitune_test_watchdog_%d_" % os.getpid()
    yield prefix
    for p in Path("/dev/shm").glob(prefix + "*"):
        p.unlink()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_watchdog_reaps_the_group_and_its_shm_when_the_owner_dies(sig, shm_prefix):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, shm_prefix, "die"], stdout=subprocess.PIPE, text=True)
    leader, stub = map(int, owner.stdout.readline().split())
    assert _alive(leader) and _alive(stub) and list(Path("/dev/shm").glob(shm_prefix + "*"))
    owner.send_signal(sig)
    owner.wait(timeout=30)
    deadline = time.time() + 30
    while (_alive(leader) or _alive(stub) or list(Path("/dev/shm").glob(shm_prefix + "*"))) and time.time() < deadline:
        time.sleep(0.1)
    # the grandchild has no parent-death signal of its own: only the watchdog can end it
    assert not _alive(leader) and not _alive(stub)
    assert not list(Path("/dev/shm").glob(shm_prefix + "*"))


def test_disarmed_watchdog_touches_nothing(shm_prefix):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, shm_prefix, "clean"], stdout=subprocess.PIPE, text=True)
    try:
        owner.stdout.readline()
        assert owner.stdout.readline().strip() == "disarmed"
        # the owner stopped its group itself; its shm file (here: kept on purpose) is not removed
        time.sleep(0.5)
        assert list(Path("/dev/shm").glob(shm_prefix + "*"))
    finally:
        owner.kill()
        owner.wait()


def test_disarm_without_arm_is_a_no_op():
    Watchdog().disarm()


def test_sigterm_and_sighup_unwind_like_ctrl_c():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        handle_termination()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with pytest.raises(KeyboardInterrupt, match=signal.Signals(sig).name) as info:
                os.kill(os.getpid(), sig)
                time.sleep(5)
            assert isinstance(info.value, Terminated) and info.value.signum == sig
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_watchdog_removes_a_killed_writers_staging_dir_and_lock(tmp_path):
    """SIGKILL of a writer: its staging dir goes and its lock file is released (locked, then unlinked)."""
    staging, lock = tmp_path / ".aitune-staging-x", tmp_path / ".aitune.lock"
    staging.mkdir()
    (staging / "model.pt2").write_bytes(b"partial")
    code = ("import fcntl, os, signal, sys; from pathlib import Path; from aitune_triton import procs; "
            "fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "procs.Watchdog().arm(remove=(Path(sys.argv[1]),), lock_file=Path(sys.argv[2])); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(staging), str(lock)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while (staging.exists() or lock.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not staging.exists() and not lock.exists()


def test_watchdog_leaves_a_lock_held_by_a_live_run(tmp_path):
    lock = tmp_path / ".aitune.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code = ("import os, signal, sys; from pathlib import Path; from aitune_triton import procs; "
                "procs.Watchdog().arm(lock_file=Path(sys.argv[1])); os.kill(os.getpid(), signal.SIGKILL)")
        subprocess.run([sys.executable, "-c", code, str(lock)], timeout=60)
        time.sleep(3)  # longer than the watchdog's 2 s wait for the lock
        assert lock.exists()
    finally:
        os.close(fd)
