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

import math
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
# the longest limit: setitimer and the backstop's Event.wait overflow time_t near 9.2e9 s
_MAX_TIMEOUT_S = 1e8

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
    given (``--model-py-timeout``), else ``$AITUNE_MODEL_PY_TIMEOUT_S``, else the default; 0 turns it off.
    Checked here because ``guarded`` arms a timer and a backstop thread with it: inf, NaN or a huge
    value would raise OverflowError there (and kill the backstop) instead of limiting anything."""
    where = "the model.py time limit (--model-py-timeout, model_py_timeout_s or %s)" % TIMEOUT_ENV
    if timeout_s is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return defaults.MODEL_PY_TIMEOUT_S
        try:
            timeout_s = float(text)
        except ValueError:
            raise UserError("%s=%r is not a number of seconds" % (TIMEOUT_ENV, text)) from None
        where = "%s=%r" % (TIMEOUT_ENV, text)
    if timeout_s != 0 and not (math.isfinite(timeout_s) and 0 < timeout_s <= _MAX_TIMEOUT_S):
        raise UserError("%s must be a number of seconds > 0 and <= %g, or 0 for no limit; got %r"
                        % (where, _MAX_TIMEOUT_S, timeout_s))
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
    finishing = threading.Event()  # the step has ended: a timer firing now is too late to matter
    # Off the main thread no timer runs, so the backstop is the limit and the step may be slow
    # Python as well as native code; on the main thread it fires only when the timer could not.
    why = " (stuck in native code)" if main else " (run off the main thread, where no timer can interrupt it)"

    def backstop() -> None:
        if not done.wait(timeout_s + (_BACKSTOP_GRACE_S if main else 0.0)):
            _hard_exit(_timeout_message(path, step.replace("while ", ""), timeout_s, why))

    def on_alarm(signum: int, frame: object) -> None:
        if not finishing.is_set():
            raise _UserTimeout()

    threads = set(threading.enumerate())
    armed, previous = False, None
    os._exit = exit_guard  # type: ignore[assignment]
    try:
        # Armed inside the try: a limit shorter than the next few bytecodes fires before the body
        # starts, and must still become the one-line UserError (and set ``done`` below).
        if timeout_s > 0:
            threading.Thread(target=backstop, name="aitune-model-py-backstop", daemon=True).start()
            if main:
                previous = signal.signal(signal.SIGALRM, on_alarm)
                armed = True  # a flag, not ``previous``: signal.signal returns None for a C-installed handler
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
        yield
    except _UserTimeout as exc:
        raise UserError(_timeout_message(path, step.replace("while ", ""), timeout_s,
                                         _user_line(exc.__traceback__, path))) from None
    except _UserExit as exc:
        raise UserError(_exit_message(path, "os._exit(%r)" % (exc.code,), step)) from None
    except SystemExit as exc:
        raise UserError(_exit_message(path, "sys.exit(%r)" % (exc.code,), step)) from None
    finally:
        finishing.set()
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
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
