"""model.py runs in this process: its exits, hangs, threads and processes are bounded."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aitune_triton import procs
from aitune_triton.errors import UserError
from aitune_triton.user_code import TIMEOUT_ENV, guarded, resolve_timeout

CORPUS = Path(__file__).parent / "corpus"
PATH = Path("/x/model.py")


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aitune_triton.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("code", [0, 3, None, "bye"])
def test_sys_exit_is_a_user_error_naming_the_step(code):
    with pytest.raises(UserError, match=r"^/x/model.py: model.py called sys.exit\(%s\) in get_samples\(\)"
                                        % repr(code).replace("(", r"\(")):
        with guarded(PATH, "in get_samples()"):
            sys.exit(code)


def test_os_exit_on_the_main_thread_is_a_user_error():
    with pytest.raises(UserError, match=r"called os._exit\(0\) while importing"):
        with guarded(PATH, "while importing"):
            os._exit(0)
    assert os._exit.__name__ == "_exit"  # restored


def test_os_exit_in_a_forked_child_still_exits_it():
    """multiprocessing's fork children end with os._exit: the guard must let them."""
    with guarded(PATH, "while importing"):
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def test_timeout_names_the_users_line():
    with pytest.raises(UserError, match=r"in get_samples\(\) did not finish within 0 s \(at line \d+\)"):
        with guarded(Path(__file__), "in get_samples()", 0.3):
            while True:
                pass


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    assert resolve_timeout() == 12.5 and resolve_timeout(3) == 3.0
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="AITUNE_MODEL_PY_TIMEOUT_S='soon' is not a number"):
        resolve_timeout()


def test_kill_descendants_ends_a_tree():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                              "time.sleep(600)"])
    deadline = time.monotonic() + 20
    while len(procs.descendants(child.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = {child.pid} | procs.descendants(child.pid)
    assert len(tree) == 2
    procs.kill_descendants({child.pid})
    assert child.poll() is not None
    assert all(procs.proc_stat(p) is None for p in tree)


def test_thread_and_process_left_by_model_py_do_not_outlive_generate(tmp_path):
    """Before: generate printed "wrote" and then waited forever for model.py's non-daemon thread,
    and the process it started kept running after generate ended."""
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    result = _cli("generate", str(CORPUS / "leaves_thread_and_process.py"), "--out", str(tmp_path / "repo"),
                  "--fallback-format", "eager", "--backend", "python", env={"AITUNE_TEST_PID_FILE": str(pid_file)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("wrote ")
    assert time.monotonic() - start < 150
    assert procs.proc_stat(int(pid_file.read_text())) is None


def test_hang_the_timer_cannot_interrupt_ends_in_one_line(tmp_path):
    """A hang in native code (here: SIGALRM blocked) is ended by the backstop, with the same one line."""
    start = time.monotonic()
    result = _cli("generate", str(CORPUS / "blocks_alarm_at_import.py"), "--out", str(tmp_path / "repo"),
                  "--model-py-timeout", "1", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "importing did not finish within 1 s (stuck in native code)" in result.stderr
    assert time.monotonic() - start < 40
    assert not (tmp_path / "repo").exists()


def test_a_limit_shorter_than_arming_the_timer_is_still_a_one_line_user_error():
    """Before: the timer was armed before the ``try``, so a 1e-9 s limit fired there and a raw
    _UserTimeout escaped; ``done`` was never set and the backstop hard-exited 10 s later."""
    before = signal.getsignal(signal.SIGALRM)
    for _ in range(20):
        with pytest.raises(UserError, match=r"in get_samples\(\) did not finish within"):
            with guarded(PATH, "in get_samples()", 1e-9):
                time.sleep(0.01)
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    deadline = time.monotonic() + 5
    while any(t.name == "aitune-model-py-backstop" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "aitune-model-py-backstop" for t in threading.enumerate())


def test_the_timer_is_disarmed_when_the_previous_handler_was_not_installed_from_python(monkeypatch):
    """signal.signal returns None for a handler C code installed; before, that None meant "never
    armed" and the timer stayed armed after the step, to interrupt whatever ran next."""
    real, before = signal.signal, signal.getsignal(signal.SIGALRM)
    monkeypatch.setattr(signal, "signal", lambda sig, handler: (real(sig, handler), None)[1])
    try:
        with guarded(PATH, "in get_samples()", 30):
            pass
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        real(signal.SIGALRM, before)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e300", "-1"])
def test_a_limit_the_timer_cannot_hold_is_a_user_error_naming_the_variable(monkeypatch, text):
    """Before: inf passed, and setitimer raised OverflowError inside the import (reported as
    "import failed"), killing the backstop thread too."""
    monkeypatch.setenv(TIMEOUT_ENV, text)
    with pytest.raises(UserError, match=r"^AITUNE_MODEL_PY_TIMEOUT_S='%s' must be a number of seconds > 0" % text):
        resolve_timeout()
    with pytest.raises(UserError, match=r"^the model.py time limit \(--model-py-timeout.*AITUNE_MODEL_PY_TIMEOUT_S"):
        resolve_timeout(float(text))
    assert resolve_timeout(0) == 0.0 and resolve_timeout(1e-9) == 1e-9


def test_the_backstop_off_the_main_thread_does_not_blame_native_code():
    """Off the main thread no timer runs, so the backstop ends slow Python too: the message said
    "stuck in native code" for a plain Python loop."""
    code = ("import threading; from pathlib import Path; from aitune_triton.user_code import guarded\n"
            "def step():\n"
            "    with guarded(Path('/x/model.py'), 'in get_samples()', 0.5):\n"
            "        while True:\n"
            "            pass\n"
            "threading.Thread(target=step).start()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == UserError.exit_code
    assert "in get_samples() did not finish within 0 s (run off the main thread" in result.stderr
    assert "native code" not in result.stderr
