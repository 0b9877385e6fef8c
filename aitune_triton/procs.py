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

``run_child`` is the one way to run a Python function in such a child: the request goes over as
JSON (``child_codec``: plain data and the package's own dataclasses and Enums, never a pickle, so
whoever can write the job or result file cannot make either side run code), the function's return
value (or the exception it raised: re-created in the parent when it is one of the package's errors
or a builtin) comes back the same way, and every other ending (a timeout, a crash by signal, an
exit without a result) is a ``ChildFailed`` that names the outcome and carries the child's output.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from aitune_triton import child_codec
from aitune_triton.waiting import poll

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once at import: loading (or looking up) a symbol in a forked child
    of a threaded process can deadlock on a lock another thread held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent(parent_pid: int | None = None) -> None:
    """``preexec_fn`` for subprocess.Popen: SIGKILL this child when its parent dies (Linux); use it
    as ``die_with_this_process()`` gives it.

    The signal fires when the *thread* that started the child ends, so start long-lived children
    from the main thread. It is only armed once the child runs this: a parent that died between the
    fork and here would never send it, so with ``parent_pid`` (the parent's pid, taken before the
    fork) a child whose parent is already another process ends itself at once.
    """
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)  # what the parent-death signal would have done


def die_with_this_process() -> Callable[[], None]:
    """The ``preexec_fn`` that ties a child to this process: ``die_with_parent`` bound to this pid."""
    return functools.partial(die_with_parent, os.getpid())


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so the same cleanup runs; ``signum`` gives the exit code."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
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


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back for the block, then deliver them. Around starting a
    child and arming its watchdog: one arriving in between unwinds before anybody holds the
    child's pid (Popen has not returned, or the cleanup's ``try`` is not entered yet), and its
    process group is left running. Only the main thread runs signal handlers, so elsewhere this
    holds nothing. Handlers that record the signal, not ``pthread_sigmask``: a blocked mask is
    inherited by the child across exec, and tritonserver would then ignore the SIGTERM that stops it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


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
    poll(lambda: not _group_alive(pgid), wait_s, 0.05)
    if shm_glob:
        for region in Path("/dev/shm").glob(shm_glob):
            try:
                region.unlink()
            except OSError:
                pass


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, process group) of a live process; None if gone or a zombie (Linux /proc)."""
    try:
        raw = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else (comm, int(fields[1]), int(fields[2]))


def _live_processes() -> Iterator[tuple[int, tuple[str, int, int]]]:
    """Every live process: (pid, ``proc_stat``) (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                yield int(entry.name), stat


def cmdline(pid: int) -> list[bytes] | None:
    """A process's command line, one item per argument (Linux /proc); None if it is gone."""
    try:
        return Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
    except OSError:
        return None


def group_members(pgid: int) -> dict[int, str]:
    """Live processes of a process group, pid -> command name (Linux /proc)."""
    return {pid: stat[0] for pid, stat in _live_processes() if stat[2] == pgid}


def descendants(pid: int | None = None) -> set[int]:
    """The live processes below ``pid`` (default: this one), children of children included."""
    pid = os.getpid() if pid is None else pid
    parents: dict[int, list[int]] = {}
    for child, stat in _live_processes():
        parents.setdefault(stat[1], []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_descendants(pids: Iterable[int], wait_s: float = 5.0) -> None:
    """SIGKILL these processes (each with what runs below it), reap the ones that are this
    process's own children, and wait a bounded time until they are gone.

    Armed watchdogs are left out: this runs just before a hard exit (``os._exit``), which is
    exactly when they must live on to remove what the exit leaves (staging dirs, locks, /dev/shm).
    """
    pids = set(pids)
    for pid in list(pids):
        pids |= descendants(pid)
    pids -= _armed_watchdogs
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    def gone(pid: int) -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG) != (0, 0)
        except ChildProcessError:  # not our child (or reaped): gone once /proc says so
            return proc_stat(pid) is None

    deadline = time.monotonic() + wait_s
    for pid in pids:
        poll(functools.partial(gone, pid), max(0.0, deadline - time.monotonic()), 0.02)


# pids of the watchdogs armed (and not yet disarmed) in this process: kill_descendants spares them
_armed_watchdogs: set[int] = set()


class Watchdog:
    """Kills a process group and removes its shared memory once this process is gone, however it ends.

    ``arm(pgid)`` starts the watchdog; ``disarm()`` (after a clean stop) lets it exit without
    touching anything. The pipe's write end is not inheritable, so no program this process
    executes holds it, and the pipe closes when this process exits, SIGKILL included. A child
    forked without exec (multiprocessing's "fork") does inherit it: then the pipe closes, and the
    watchdog acts, only once that child has exited too.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
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
        _armed_watchdogs.add(self._proc.pid)

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
            _armed_watchdogs.discard(self._proc.pid)
            self._proc = None


def _release_stale_lock(lock_file: Path) -> None:
    """Unlink a lock file nobody holds, under the lock itself (as a clean release does)."""
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        def locked() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not poll(locked, 2.0, 0.05):  # the dead owner's descriptors close while we wake: allow them 2 s
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


# ---------------------------------------------------------------------------------------------
# Running a Python function in a child process
# ---------------------------------------------------------------------------------------------

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class ChildOutcome(str, Enum):
    """How a child of ``run_child`` ended without returning a value."""

    RAISED = "raised"  # the function raised: ``ChildFailed.exception`` / ``error_type`` say what
    TIMEOUT = "timeout"  # it ran past its timeout and its process group was killed
    SIGNAL = "signal"  # a signal ended it (a crash in native code: SIGSEGV, SIGABRT)
    EXITED = "exited"  # it exited without writing a result (os._exit, sys.exit inside a library)


class ChildFailed(Exception):
    """A ``run_child`` child ended without a value. Callers turn it into their own error of the
    package's tree (with their own words); it never reaches the user as it is.

    ``rerun`` is a shell command that runs the same request again in the foreground, printing
    everything (the request file it names is kept for it, next to ``log_path``).
    ``output`` is everything the child printed (also in ``log_path``); for ``RAISED``,
    ``exception`` is the exception re-created in the parent (None unless it is an ``AituneError``
    of this package or a builtin exception that takes its message), ``error_type`` its qualified
    class name and ``error_message`` its text.
    """

    def __init__(self, outcome: ChildOutcome, target: str, *, log_path: Path, output: str,
                 returncode: int | None = None, timeout_s: float | None = None,
                 exception: BaseException | None = None, error_type: str = "", error_message: str = "",
                 rerun: str = ""):
        self.outcome = outcome
        self.rerun = rerun  # one shell command that runs the same request again in the foreground
        self.target = target
        self.log_path = Path(log_path)
        self.output = output
        self.returncode = returncode
        self.timeout_s = timeout_s
        self.exception = exception
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(self._describe())

    @property
    def signal_name(self) -> str | None:
        """``SIGSEGV`` etc. when a signal ended the child."""
        if self.outcome is not ChildOutcome.SIGNAL or self.returncode is None:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return "signal %d" % -self.returncode

    def tail(self, lines: int = 20) -> list[str]:
        """The child's last non-empty output lines."""
        return [line for line in self.output.splitlines() if line.strip()][-lines:]

    def _describe(self) -> str:
        if self.outcome is ChildOutcome.RAISED:
            first = self.error_message.strip().splitlines()
            return "%s raised %s: %s" % (self.target, self.error_type, first[0] if first else "")
        if self.outcome is ChildOutcome.TIMEOUT:
            return "%s timed out after %.0f s" % (self.target, self.timeout_s or 0)
        if self.outcome is ChildOutcome.SIGNAL:
            return "%s crashed with %s" % (self.target, self.signal_name)
        return "%s exited with code %s without a result" % (self.target, self.returncode)


def child_env(set_vars: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment for a child: the package importable as here (its root first on
    PYTHONPATH), output unbuffered (the log keeps the order of events up to a crash), plus
    ``set_vars`` and minus ``unset``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                           if p and p != _PACKAGE_ROOT])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(set_vars or {})
    for name in unset:
        env.pop(name, None)
    return env


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run_child(target: str, request: Any, *, log_path: Path, timeout_s: float,
              env: Mapping[str, str] | None = None, tick: Callable[[float], None] | None = None,
              keep_dir: Path | None = None) -> Any:
    """Run ``module:function`` on ``request`` in a fresh interpreter and return what it returns.

    The child runs in its own session (a timeout kills its whole process group: compilers and
    other grandchildren included) with a parent-death signal and a ``Watchdog`` (a SIGKILL of
    this process still ends the group); its stdout and stderr go to ``log_path``, and Python's
    faulthandler prints the stack of a crash there. ``env`` is its whole environment (default
    ``child_env()``). ``tick(elapsed_s)`` is called about twice a second while it runs. A Ctrl-C
    or SIGTERM here kills the group and propagates. Raises ``ChildFailed`` for every ending
    without a value. Request and result travel as ``child_codec`` JSON: a request the codec does
    not carry is a ``TypeError`` here, before any child starts; a result it does not carry comes
    back as the child's ``TypeError``. A failed child's request is kept (in ``keep_dir``, default
    the log's folder) for ``ChildFailed.rerun``.
    """
    job = child_codec.dumps({"target": target, "request": request})
    work = Path(tempfile.mkdtemp(prefix="aitune-child-"))  # 0700: only this user can touch the files
    try:
        job_path, result_path = work / "job.json", work / "result.json"
        _write_private(job_path, job.encode())
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kept_job = Path(keep_dir or log_path.parent) / (log_path.stem + ".job.json")
        cmd = [sys.executable, "-X", "faulthandler", "-c", _CHILD_MAIN, _PACKAGE_ROOT, str(job_path)]
        watchdog = Watchdog()
        proc: subprocess.Popen[bytes] | None = None
        try:
            with signals_held():  # a Ctrl-C before the watchdog is armed would leak the child
                with open(log_path, "wb") as out:
                    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=dict(env) if env is not None else child_env(),
                                            start_new_session=True, preexec_fn=die_with_this_process())
                watchdog.arm(proc.pid)
            returncode = _wait_child(proc, timeout_s, tick)
        except BaseException:  # Ctrl-C, SIGTERM: the child is in its own session and would not see them
            if proc is not None:
                reap_group(proc.pid)
                proc.wait()
            raise
        finally:
            watchdog.disarm()
        if returncode is None:
            raise ChildFailed(ChildOutcome.TIMEOUT, target, log_path=log_path, output=_read_text(log_path),
                              timeout_s=timeout_s, rerun=_keep_job(job_path, kept_job, env))
        reap_group(proc.pid, wait_s=2.0)  # what the child left running (a compiler's worker) goes with it
        result = _read_result(result_path)
        if result is not None and result["ok"]:
            return result["value"]
        output = _read_text(log_path)
        rerun = _keep_job(job_path, kept_job, env)
        if result is not None:
            error = result["error"]
            raise ChildFailed(ChildOutcome.RAISED, target, log_path=log_path, output=output, returncode=returncode,
                              exception=child_codec.decode_exception(error),
                              error_type=child_codec.exception_type(error), error_message=str(error["message"]),
                              rerun=rerun)
        outcome = ChildOutcome.SIGNAL if returncode < 0 else ChildOutcome.EXITED
        raise ChildFailed(outcome, target, log_path=log_path, output=output, returncode=returncode, rerun=rerun)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _keep_job(job_path: Path, kept: Path, env: Mapping[str, str] | None) -> str:
    """Keep a failed child's request next to its log and return the command that reruns it in the
    foreground: this interpreter, the package root, the environment variables the child got that
    differ from this process's, and the kept request file."""
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job_path, kept)
        kept.chmod(0o600)
    except OSError as exc:
        log.warning("could not keep the failed child's request %s: %s", job_path, exc)
        return ""
    child = dict(env) if env is not None else child_env()
    changed = ["%s=%s" % (k, v) for k, v in sorted(child.items()) if os.environ.get(k) != v]
    removed = [arg for k in sorted(set(os.environ) - set(child)) for arg in ("-u", k)]
    prefix = ["env", *removed, *changed] if changed or removed else []
    return shlex.join([*prefix, sys.executable, "-X", "faulthandler", "-c", _CHILD_MAIN, _PACKAGE_ROOT, str(kept)])


def _wait_child(proc: subprocess.Popen[bytes], timeout_s: float, tick: Callable[[float], None] | None) -> int | None:
    """The child's return code, or None when ``timeout_s`` passed (its group is then killed)."""
    start = time.monotonic()

    def exited() -> bool:
        try:
            proc.wait(timeout=0.5)
            return True
        except subprocess.TimeoutExpired:
            if tick is not None:
                tick(time.monotonic() - start)
            return False

    if poll(exited, timeout_s, 0.0):
        return proc.returncode
    reap_group(proc.pid)
    proc.wait()
    return None


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file only its owner can read (``O_EXCL``: never through something already there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read_result(path: Path) -> dict[str, Any] | None:
    """The child's result record, None when it wrote none; ``ValueError`` for one it cannot have written."""
    if not path.is_file():
        return None
    result = child_codec.loads(path.read_bytes())
    ok = result.get("ok") if isinstance(result, dict) else None
    if not (ok is True and "value" in result or ok is False and isinstance(result.get("error"), dict)):
        raise ValueError("malformed child result in %s" % path)
    return result


def _child_main(job_path: str) -> int:
    """The child's side of ``run_child``: call the function, write its value or its exception
    next to the job file."""
    result: dict[str, Any]
    try:
        job = child_codec.loads(Path(job_path).read_bytes())
        module_name, _, function_name = str(job["target"]).partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        result = {"ok": True, "value": function(job["request"])}
        payload = child_codec.dumps(result)
    except Exception as exc:  # the parent decides what it means; the traceback goes to the log
        traceback.print_exc()
        result = {"ok": False, "error": child_codec.encode_exception(exc)}
        payload = child_codec.dumps(result)
    sys.stdout.flush()
    sys.stderr.flush()
    result_path = Path(job_path).with_name("result.json")  # a rerun's result: beside its kept request
    tmp = result_path.with_name("result.json.tmp")
    _write_private(tmp, payload.encode())
    os.replace(tmp, result_path)
    code = 0 if result["ok"] else 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        os._exit(code)  # a thread the user's code started (model.py imported here) would keep us alive
    return code


# no -I (the child needs this environment's site-packages and variables); the package root first
_CHILD_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); from aitune_triton.procs import _child_main; "
               "sys.exit(_child_main(sys.argv[2]))")
