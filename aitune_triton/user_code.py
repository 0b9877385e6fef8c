"""Bounds on the user's ``model.py``, which runs in this process (its model object is used by
every later stage): an exit, a hang, a thread or a process it leaves behind must not end or stall
``generate`` silently.

* ``guarded(path, step, timeout_s)`` wraps each call into the user's code: ``sys.exit`` and
  ``os._exit`` become one-line ``UserError``\\ s naming the step ("called sys.exit(3) while
  importing"); with ``timeout_s``, a SIGALRM timer interrupts a step that runs too long (the
  message names the user's line it was on), and a backstop thread ends the process with the same
  one line if the step is stuck in native code where the timer cannot interrupt it.
* ``contained()`` wraps a whole ``generate``: child processes that the user's code started and
  left running are killed when it ends; non-daemon threads started during a ``guarded`` call are
  remembered so the CLI can exit at once (``exit_now_if_threads_left``) instead of waiting for them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from aitune_triton import defaults, procs
from aitune_triton.errors import UserError

TIMEOUT_ENV = "AITUNE_MODEL_PY_TIMEOUT_S"
# after the timer fires, how long the step may take to unwind before the backstop ends the process
_BACKSTOP_GRACE_S = 10.0

_real_exit = os._exit
_left_threads: list[threading.Thread] = []


class _UserExit(BaseException):
    """The user's code called ``os._exit`` on the main thread (raised instead of exiting)."""

    def __init__(self, code: object):
        super().__init__(code)
        self.code = code


class _UserTimeout(BaseException):
    """The SIGALRM timer of ``guarded`` fired (a BaseException: a user's ``except Exception`` does not eat it)."""


def resolve_timeout(timeout_s: float | None = None) -> float:
    """The time limit for importing model.py and for ``get_samples()``/``get_config()``: the value
    given (``--model-py-timeout``), else ``$AITUNE_MODEL_PY_TIMEOUT_S``, else the default; 0 turns it off."""
    if timeout_s is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return defaults.MODEL_PY_TIMEOUT_S
        try:
            timeout_s = float(text)
        except ValueError:
            raise UserError("%s=%r is not a number of seconds" % (TIMEOUT_ENV, text)) from None
    if not timeout_s >= 0:
        raise UserError("the model.py time limit must be >= 0 seconds (0 turns it off), got %r" % timeout_s)
    return float(timeout_s)


def _user_line(tb: object, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(tb) if Path(f.filename) == path]  # type: ignore[arg-type]
    return " (at line %d)" % frames[-1].lineno if frames and frames[-1].lineno else ""


def _timeout_message(path: Path, step: str, timeout_s: float, where: str = "") -> str:
    return ("%s: %s did not finish within %.0f s%s; if it is slow on purpose, raise the limit with "
            "--model-py-timeout SECONDS or %s (0: no limit)" % (path, step, timeout_s, where, TIMEOUT_ENV))


def _exit_message(path: Path, how: str, step: str) -> str:
    return "%s: model.py called %s %s; it must return (or raise an exception), never exit" % (path, how, step)


def _hard_exit(message: str) -> None:
    """Nothing can unwind the main thread: say why in one line, end the children, exit now."""
    try:
        sys.stdout.flush()
        sys.stderr.write("error: %s\n" % message)
        sys.stderr.flush()
    finally:
        procs.kill_descendants(procs.descendants())
        _real_exit(UserError.exit_code)


@contextmanager
def guarded(path: Path, step: str, timeout_s: float = 0.0) -> Iterator[None]:
    """Run one call into model.py (``step``: "while importing", "in get_samples()"...) with its
    exits turned into ``UserError`` and, when ``timeout_s`` > 0, a time limit."""
    owner, main = os.getpid(), threading.current_thread() is threading.main_thread()

    def exit_guard(code: int) -> None:
        if os.getpid() != owner:  # a forked child (multiprocessing) exits as it means to
            _real_exit(code)
        if threading.current_thread() is threading.main_thread():
            raise _UserExit(code)
        _hard_exit(_exit_message(path, "os._exit(%r) in a thread" % code, step))

    done = threading.Event()
    fired = threading.Event()

    def backstop() -> None:
        if not done.wait(timeout_s + (_BACKSTOP_GRACE_S if main else 0.0)):
            _hard_exit(_timeout_message(path, step.replace("while ", ""), timeout_s, " (stuck in native code)"))

    def on_alarm(signum: int, frame: object) -> None:
        fired.set()
        raise _UserTimeout()

    threads = set(threading.enumerate())
    previous = None
    if timeout_s > 0:
        threading.Thread(target=backstop, name="aitune-model-py-backstop", daemon=True).start()
        if main:
            previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
    os._exit = exit_guard  # type: ignore[assignment]
    try:
        yield
    except _UserTimeout as exc:
        raise UserError(_timeout_message(path, step.replace("while ", ""), timeout_s,
                                         _user_line(exc.__traceback__, path))) from None
    except _UserExit as exc:
        raise UserError(_exit_message(path, "os._exit(%r)" % (exc.code,), step)) from None
    except SystemExit as exc:
        raise UserError(_exit_message(path, "sys.exit(%r)" % (exc.code,), step)) from None
    finally:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        os._exit = _real_exit
        done.set()
        _left_threads.extend(t for t in threading.enumerate() if t not in threads and not t.daemon)


@contextmanager
def contained() -> Iterator[None]:
    """Around a whole run that calls model.py: the processes it started and left running are
    killed at the end (this run's own children have all ended by then)."""
    processes = procs.descendants()
    try:
        yield
    finally:
        procs.kill_descendants(procs.descendants() - processes)


def exit_now_if_threads_left(code: int) -> None:
    """A non-daemon thread model.py started (during a ``guarded`` call) would keep the process alive
    after the command has finished (Python joins such threads at exit): flush and exit at once with
    ``code`` instead. Threads started by anything else are not considered."""
    if any(t.is_alive() for t in _left_threads):
        sys.stdout.flush()
        sys.stderr.flush()
        _real_exit(code)
