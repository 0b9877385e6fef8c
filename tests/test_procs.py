"""procs: children die with the CLI however it ends (real processes, real signals)."""

from __future__ import annotations

import fcntl
import functools
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.procs import (
    ChildFailed,
    ChildOutcome,
    Terminated,
    Watchdog,
    child_env,
    cmdline,
    die_with_parent,
    die_with_this_process,
    group_members,
    handle_termination,
    proc_stat,
    run_child,
)

# an "owner" (the CLI's stand-in) starts a group leader with a grandchild (a server and its stub),
# arms a watchdog for the group, creates a shared-memory file for it, prints the pids, and sleeps
OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from aitune_triton.procs import Watchdog, die_with_this_process
    leader = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                               "print(c.pid, flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=die_with_this_process())
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


PDEATHSIG_OF_SELF = ("import ctypes; v = ctypes.c_int(); ctypes.CDLL('libc.so.6').prctl(2, ctypes.byref(v)); "
                     "print(v.value)")  # PR_GET_PDEATHSIG


def test_the_parent_death_signal_is_armed_without_loading_libc_in_the_child(monkeypatch):
    """die_with_parent called ctypes.CDLL in the forked child: a dlopen there can deadlock when
    another thread held the loader's lock at the fork. libc is loaded at import now."""
    import ctypes

    def no_dlopen(*args, **kwargs):
        raise RuntimeError("dlopen in the child")

    monkeypatch.setattr(ctypes, "CDLL", no_dlopen)  # in the child too: it is a fork of this process
    out = subprocess.run([sys.executable, "-c", PDEATHSIG_OF_SELF],
                         capture_output=True, text=True, timeout=60, preexec_fn=die_with_this_process())
    assert out.returncode == 0 and out.stdout.strip() == str(int(signal.SIGKILL)), out.stderr


def test_a_child_whose_parent_is_already_gone_ends_itself():
    """The parent-death signal only covers a parent that dies after the child armed it: a child
    that finds another parent than the one that forked it (here: a pid that is not ours) ends."""
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True, timeout=60,
                          preexec_fn=functools.partial(die_with_parent, os.getpid() + 1))
    assert proc.returncode == -signal.SIGKILL and proc.stdout == ""


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


def test_a_hard_exit_kills_the_children_but_not_the_watchdogs_that_clean_up_after_it(tmp_path):
    """``user_code._hard_exit`` (model.py called os._exit in a thread, or hung in native code) killed
    every descendant, the armed watchdogs included: the staging dir and the server's group they
    exist to clean up after such an exit were left behind."""
    staging = tmp_path / ".aitune-staging-x"
    code = ("import subprocess, sys; from pathlib import Path; from aitune_triton import procs, user_code; "
            "staging = Path(sys.argv[1]); staging.mkdir(); "
            "server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
            "                          start_new_session=True); "
            "procs.Watchdog().arm(server.pid, remove=(staging,)); print(server.pid, flush=True); "
            "user_code._hard_exit('model.py called os._exit(0) in a thread')")
    proc = subprocess.run([sys.executable, "-c", code, str(staging)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error: model.py called os._exit(0) in a thread" in proc.stderr
    server = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while (staging.exists() or _alive(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server)
    assert not staging.exists()  # only the watchdog removes it: the exit itself ran no cleanup


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


# ---------------------------------------------------------------------------------------------
# run_child: a module function in a child process
# ---------------------------------------------------------------------------------------------

CHILD_FUNCTIONS = textwrap.dedent("""
    import os, signal, stat, subprocess, sys, time
    from pathlib import Path
    from aitune_triton.errors import UserError

    class TwoArgs(Exception):
        def __init__(self, a, b):  # not the package's: only its type and message come back
            super().__init__("%s/%s" % (a, b))

    def echo(request):
        print("echoing", flush=True)
        return {"got": request, "pid": os.getpid()}

    def job_file_mode(request):
        return stat.S_IMODE(os.stat(sys.argv[-1]).st_mode)  # the child runs as -c CODE ROOT JOB_PATH

    def user_error(request):
        print("about to refuse", flush=True)
        raise UserError("bad input: %s" % request, log_path="/tmp/x.log", details="the details")

    def value_error(request):
        raise ValueError("no such thing")

    def two_args(request):
        raise TwoArgs(1, 2)

    def returns_a_set(request):
        return {1, 2}

    def abort(request):
        print("[E] last words", flush=True)
        os.kill(os.getpid(), signal.SIGABRT)

    def exit_3(request):
        os._exit(3)

    def hang_with_grandchild(request):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(request).write_text(str(child.pid))
        time.sleep(600)
""")


@pytest.fixture(scope="module")
def child_module(tmp_path_factory):
    where = tmp_path_factory.mktemp("child_functions")
    name = "aitune_test_child_functions"
    (where / (name + ".py")).write_text(CHILD_FUNCTIONS)
    return where, name


@pytest.fixture
def run(child_module, tmp_path, monkeypatch):
    where, name = child_module
    monkeypatch.setenv("PYTHONPATH", str(where))

    def run(function, request=None, timeout_s=60.0):
        return run_child("%s:%s" % (name, function), request, log_path=tmp_path / "child.log", timeout_s=timeout_s)

    return run


def test_run_child_returns_the_functions_value_from_another_process(run, tmp_path):
    request = {"x": [1, 2], "path": tmp_path, "shape": (3, float("inf")), "kind": ChildOutcome.SIGNAL}
    value = run("echo", request)
    assert value["got"] == request and value["pid"] != os.getpid()
    assert isinstance(value["got"]["kind"], ChildOutcome) and isinstance(value["got"]["shape"], tuple)
    assert "echoing" in (tmp_path / "child.log").read_text()


def test_run_child_writes_the_job_for_its_owner_only(run):
    assert run("job_file_mode") == 0o600


def test_run_child_refuses_a_request_it_cannot_send_before_starting_a_child(run, tmp_path):
    with pytest.raises(TypeError, match="cannot send a builtins.set"):
        run("echo", {"ids": {1, 2}})
    assert not (tmp_path / "child.log").exists()


def test_run_child_re_raises_the_childs_exception_type(run):
    with pytest.raises(ChildFailed, match=r"user_error raised aitune_triton.errors.UserError: bad input: 7") as info:
        run("user_error", 7)
    failure = info.value
    assert failure.outcome is ChildOutcome.RAISED and failure.returncode == 1
    assert isinstance(failure.exception, UserError) and failure.exception.details == "the details"
    assert failure.exception.log_path == "/tmp/x.log" and str(failure.exception) == "bad input: 7"
    assert "about to refuse" in failure.tail() and "Traceback" in failure.output  # the child's traceback is logged


def test_a_failed_child_keeps_its_request_and_the_rerun_command_reproduces_it(run, tmp_path):
    with pytest.raises(ChildFailed) as info:
        run("user_error", 7)
    kept = tmp_path / "child.job.json"
    assert kept.is_file() and kept.stat().st_mode & 0o777 == 0o600 and str(kept) in info.value.rerun
    # the one command, run in the foreground: the same failure, printed in full
    proc = subprocess.run(shlex.split(info.value.rerun), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "about to refuse" in proc.stdout + proc.stderr
    assert "UserError: bad input: 7" in proc.stderr


def test_a_child_that_returns_leaves_no_request_behind(run, tmp_path):
    run("echo", {"x": 1})
    assert not (tmp_path / "child.job.json").exists()


def test_run_child_re_creates_a_builtin_exception(run):
    with pytest.raises(ChildFailed, match=r"raised builtins.ValueError: no such thing") as info:
        run("value_error")
    assert type(info.value.exception) is ValueError and str(info.value.exception) == "no such thing"


def test_run_child_keeps_type_and_message_of_an_exception_outside_the_package(run):
    with pytest.raises(ChildFailed, match=r"raised aitune_test_child_functions.TwoArgs: 1/2") as info:
        run("two_args")
    assert info.value.exception is None and info.value.error_message == "1/2"


def test_run_child_reports_a_result_it_cannot_send_back_as_the_childs_type_error(run):
    with pytest.raises(ChildFailed, match=r"raised builtins.TypeError: cannot send a builtins.set") as info:
        run("returns_a_set")
    assert isinstance(info.value.exception, TypeError)


def test_run_child_reports_a_crash_by_signal_with_the_output(run):
    with pytest.raises(ChildFailed, match="abort crashed with SIGABRT") as info:
        run("abort")
    failure = info.value
    assert failure.outcome is ChildOutcome.SIGNAL and failure.signal_name == "SIGABRT"
    assert "[E] last words" in failure.tail() and "Fatal Python error: Aborted" in failure.output  # faulthandler


def test_run_child_reports_an_exit_without_a_result(run):
    with pytest.raises(ChildFailed, match="exit_3 exited with code 3 without a result") as info:
        run("exit_3")
    assert info.value.outcome is ChildOutcome.EXITED


def test_run_child_timeout_kills_the_whole_group(run, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    start = time.monotonic()
    with pytest.raises(ChildFailed, match=r"hang_with_grandchild timed out after 3 s") as info:
        run("hang_with_grandchild", str(pid_file), timeout_s=3.0)
    assert info.value.outcome is ChildOutcome.TIMEOUT and time.monotonic() - start < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_child_env_puts_the_package_first_and_drops_what_is_unset(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("AITUNE_TEST_DROP", "1")
    env = child_env({"AITUNE_TEST_SET": "x"}, unset=("AITUNE_TEST_DROP",))
    root = str(Path(__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"] and env["PYTHONUNBUFFERED"] == "1"
    assert env["AITUNE_TEST_SET"] == "x" and "AITUNE_TEST_DROP" not in env



def test_group_members_sees_this_process():
    members = group_members(os.getpgid(0))
    stat = proc_stat(os.getpid())
    assert stat is not None and members[os.getpid()] == stat[0]


def test_cmdline_reads_a_live_process_and_none_once_it_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-arg"])
    try:
        deadline = time.monotonic() + 10  # between fork and exec the command line is still empty
        while cmdline(child.pid) in ([b""], None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cmdline(child.pid) == [os.fsencode(sys.executable), b"-c", b"import time; time.sleep(30)",
                                      b"marker-arg", b""]
    finally:
        child.kill()
        child.wait()
    assert cmdline(child.pid) is None


def test_signals_held_are_delivered_after_the_block():
    from aitune_triton.procs import signals_held

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
