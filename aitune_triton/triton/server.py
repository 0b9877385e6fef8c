"""Start, probe and stop a real ``tritonserver`` child process (``TritonServer``).

Validation and tuning only mean something against the real server, so this module launches the
binary bundled in ``nvidia-pytriton`` (or one the user names) as a child process in its own
session, waits for it to become ready, and tears it down including its Python-backend stubs.
What the launch is made of (options, ports, argv, environment) is in ``launch``; the interface
it shares with a server someone else runs (``Server``, ``RemoteServer``) is in ``server_api``.

Facts about the bundled 2.51 binary this module relies on (checked, not assumed):

* the HTTP endpoint only starts after the start-up model loads, so "connection refused" is normal
  for the first seconds; with ``--exit-on-error=false`` a failed start-up load leaves the server live
  but not ready (strict readiness), and ``POST /v2/repository/index`` then carries the reason;
* in explicit mode with nothing loaded ``/v2/health/ready`` is true, so one readiness check fits all;
* the Python backend names its shared memory ``<prefix><uuid>``: each server gets its own prefix so
  that leftovers after a crash can be removed without touching any other server's regions;
* ``--id`` sets the name ``GET /v2`` reports: each launch gets its own, so a readiness answer from
  another server on the same port is never mistaken for ours.

Lifetime: the server gets a parent-death signal and a ``procs.Watchdog`` that kills its process
group (stubs included) and removes its shared memory if the CLI dies without stopping it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from aitune_triton import defaults, procs
from aitune_triton.triton import tools
from aitune_triton.errors import ServerError
from aitune_triton.triton.launch import (
    Ports,
    ServerOptions,
    build_command,
    build_environment,
    check_host,
    check_numpy_bytes,
    check_open_files,
    check_ports_free,
    check_shell_safe,
    is_s3_url,
    resolve_ports,
    served_model_names,
    server_binary,
    supported_flags,
)
from aitune_triton.triton.server_api import ServerAPI, http_get
from aitune_triton.waiting import poll


log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
# error lines a CPU-only server always logs
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned system memory", "CUDA driver")
# what tritonserver logs once a second while it drains before exiting (2.51: http_server.cc, server.cc)
_DRAINING = re.compile(r'"Timeout (\d+): Found (\d+) (HTTP service connections|model versions that have in-flight '
                       r'inferences)')
_DRAINED_WHAT = {"HTTP service connections": "open HTTP connection(s) to close",
                 "model versions that have in-flight inferences": "model version(s) to finish their requests in flight"}
STUB_BINARY = b"triton_python_backend_stub"


def describe_exit(code: int | None) -> str:
    """"exited with code 1" or "crashed (SIGSEGV)" for a Popen return code."""
    if code is not None and code < 0:
        try:
            return "crashed (%s)" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %s" % code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class TritonServer(ServerAPI):
    """A tritonserver child process with its own session, log file and shared-memory prefix."""

    def __init__(
        self,
        repo: Path | str,
        options: ServerOptions | None = None,
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        notify: Callable[[str], None] | None = None,
    ):
        """``notify(line)`` gets what the person running the server should hear while it stops or
        serves (a drain in progress, a Python stub that died); default: the module's log."""
        self.repo = repo if is_s3_url(repo) else Path(repo)  # Path() would fold the s3:// double slash
        self.options = options if options is not None else ServerOptions()
        # how long stop() waits after SIGTERM before SIGKILL: the server's own drain limit, plus a
        # margin to unload the models
        self.stop_grace_s = self.options.exit_timeout_s + defaults.SERVER_STOP_MARGIN_S
        self._notify = notify or (lambda line: log.info("%s", line))
        self._stubs: dict[tuple[str, str], int] | None = None
        self._stubs_missing: set[tuple[str, str]] = set()
        self._env = env
        self.log_path: Path | None = Path(log_path) if log_path else None
        self.shm_prefix = "%s%s_" % (SHM_PREFIX, uuid.uuid4().hex[:12])
        self.server_id = "aitune-%s" % uuid.uuid4().hex[:16]
        self._watchdog: procs.Watchdog | None = None
        self.ports: Ports | None = None
        self.command: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._log_file: BinaryIO | None = None
        self._log_start = 0  # where this launch's part of the (appended) log begins
        self._unclean = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def owns_process(self) -> bool:
        """Launched here: its models are loaded and unloaded by the caller, and it has a log and an exit code."""
        return True

    def describe(self) -> str:
        return "tritonserver on %s" % self.repo

    def _running(self) -> subprocess.Popen:
        if self._proc is None:
            raise ServerError("the server has not been started")
        return self._proc

    def _url(self, port: int | None) -> str:
        if port is None:
            raise ServerError("the server has not been started")
        return "%s:%d" % (self.options.host, port)

    @property
    def http_url(self) -> str:
        return self._url(self.ports.http if self.ports else None)

    @property
    def grpc_url(self) -> str:
        return self._url(self.ports.grpc if self.ports else None)

    @property
    def metrics_url(self) -> str:
        return self._url(self.ports.metrics if self.ports else None)

    def _log_text(self, limit: int | None = None) -> str:
        """What this launch wrote to the log (at most its last ``limit`` bytes). The log is appended
        to (a retry after a port clash, a log path given twice), so what came before this launch's
        start offset belongs to an earlier one: its "already in use" line must not fail this one."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                start = self._log_start if self._log_start <= end else 0  # truncated meanwhile: all of it
                f.seek(start if limit is None else max(start, end - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self._log_text(256 * 1024).splitlines()[-n:])

    def error_lines(self, n: int = 10) -> list[str]:
        """Triton's ``E...`` log lines, without the CPU-only noise (NVML, DCGM, CUDA driver)."""
        lines = [line for line in self._log_text().splitlines()
                 if re.match(r"^E\d{4} ", line) and not any(x in line for x in _NOISE)]
        return lines[-n:]

    def _error(self, message: str) -> ServerError:
        """``message`` with the log path and what the log says (Triton's own error lines, then its
        last lines) as the error's details, which the CLI and the validation report show."""
        parts = []
        errors = self.error_lines()
        if errors:
            parts.append("--- errors in %s ---\n%s" % (self.log_path, "\n".join(errors)))
        tail = self.log_tail(20)
        if tail:
            parts.append("--- last lines of %s ---\n%s" % (self.log_path, tail))
        return ServerError(message, log_path=str(self.log_path) if self.log_path else None,
                           details="\n".join(parts) or None)

    def children(self) -> dict[int, str]:
        """Other processes in the server's group (Python-backend stubs), pid -> name."""
        if self._proc is None:
            return {}
        return {p: c for p, c in procs.group_members(self._proc.pid).items() if p != self._proc.pid}

    def start(self) -> "TritonServer":
        """Launch and wait until ready; raises ServerError (with Triton's log) otherwise.

        Auto-picked ports can be taken between picking and binding: one retry with new ports
        (none when the busy port is one the options fixed).
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        fixed = [p for p in (self.options.http_port, self.options.grpc_port, self.options.metrics_port) if p]
        for attempt in range(2):
            try:
                return self._start_once()
            except ServerError as exc:
                msg = "%s\n%s" % (exc, exc.details or "")  # Triton names the busy address in its log
                busy = "already in use" in msg and not any(":%d'" % p in msg for p in fixed)
                if not busy or attempt == 1:
                    raise
                log.warning("port clash starting tritonserver, retrying with other ports")
        raise AssertionError("unreachable")

    def _start_once(self) -> "TritonServer":
        binary = server_binary(self.options)
        if not binary.exists():
            raise ServerError("tritonserver not found at %s; get one with %s" % (binary, tools.GET_TRITONSERVER))
        names = tuple(n for n in self.options.load_models if n != "*")
        if "*" in self.options.load_models and isinstance(self.repo, Path) and self.repo.is_dir():
            names = tuple(p.name for p in self.repo.iterdir() if p.is_dir())
        check_shell_safe(self.repo, names)
        check_open_files()
        opts = self.options
        # what the stubs will serve: the start-up models, or every model where the server loads them all
        serving = names if opts.model_control_mode == "explicit" or not isinstance(self.repo, Path) \
            else served_model_names(self.repo)
        check_numpy_bytes(self.repo, tuple(dict.fromkeys(serving + opts.loaded_later)), binary)
        check_host(opts.host)
        check_ports_free(opts.host, {k: v for k, v in (("http", opts.http_port), ("grpc", opts.grpc_port),
                                                       ("metrics", opts.metrics_port)) if v})
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)  # kept after stop: it is the only record of a failure
        self.ports = resolve_ports(self.options)
        self.command = build_command(
            self.repo, self.options, self.ports, binary=binary, flags=supported_flags(binary),
            shm_prefix=self.shm_prefix, server_id=self.server_id,
        )
        log.info("starting tritonserver: %s", " ".join(self.command))
        log.info("tritonserver log: %s", self.log_path)
        self._unclean = False
        self._log_file = open(self.log_path, "ab")
        self._log_start = self._log_file.seek(0, os.SEEK_END)
        self._proc = None  # an earlier attempt's, already stopped
        try:
            with procs.signals_held():  # a Ctrl-C before the watchdog is armed would leak the group
                try:
                    self._proc = proc = subprocess.Popen(
                        self.command,
                        stdin=subprocess.DEVNULL,
                        stdout=self._log_file,
                        stderr=subprocess.STDOUT,
                        env=build_environment(self._env),
                        start_new_session=True,  # its own group: stop() and the watchdog signal it with its stubs
                        preexec_fn=procs.die_with_this_process(),
                    )
                except OSError as exc:
                    raise ServerError("cannot run %s (%s); it must be an executable tritonserver: fix its "
                                      "permissions or name another with --tritonserver"
                                      % (binary, exc.strerror or exc)) from None
                self._watchdog = procs.Watchdog()
                self._watchdog.arm(proc.pid, self.shm_prefix + "*")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready: pid %d, http %s, grpc %s", proc.pid, self.http_url, self.grpc_url)
        self._stubs = self.stubs()  # what restart_dead_stubs compares with
        self._stubs_missing = set()
        return self

    def _backend_hint(self, failed: list[str]) -> str:
        """For a backend the server could not find: where it looked and the option that names the folder."""
        if not any("unable to find backend library" in f for f in failed):
            return ""
        flag = next((a.split("=", 1)[1] for a in self.command if a.startswith("--backend-directory=")), None)
        return ("; the server looked in %s: pass its backends folder with --backend-directory"
                % (flag or "its default (/opt/tritonserver/backends)"))

    def _wait_ready(self) -> None:
        if not poll(self._ready_now, self.options.startup_timeout_s, 0.25):
            raise self._error("tritonserver not ready within %.0f s" % self.options.startup_timeout_s)

    def _ready_now(self) -> bool:
        """True once the server answers ready with every requested model loaded; raises once it
        has exited or a model failed to load."""
        code = self._running().poll()
        if code is not None:
            raise self._error("tritonserver %s during start-up" % describe_exit(code))
        status, _ = http_get(self.http_url, "/v2/health/ready")
        if status is not None and not self._answer_is_ours():
            status = None  # another server on this port: ours will fail to bind and exit
        if status is not None:
            # ready can be true although a start-up load failed (a config that does not parse
            # never becomes a model state), so the requested models are checked by name
            failed = self._startup_failures(final=status == 200)
            if failed:
                raise self._error("model(s) failed to load: %s%s" % ("; ".join(failed), self._backend_hint(failed)))
            if status == 200:
                self._confirm_endpoints()
                return True
        return False

    def _answer_is_ours(self) -> bool:
        """The server answering on our HTTP port reports our ``--id`` (unknown ids count as ours)."""
        if not any(a.startswith("--id=") for a in self.command):
            return True
        status, body = http_get(self.http_url, "/v2")
        try:
            return status == 200 and json.loads(body).get("name") == self.server_id
        except ValueError:
            return False

    def _confirm_endpoints(self, wait_s: float = 2.0) -> None:
        """Metrics start after HTTP, and a metrics port clash makes tritonserver exit just after
        it has answered ready: wait for the metrics endpoint (or an exit, or an error line)."""
        def metrics_up() -> bool:
            code = self._running().poll()
            failed = [line for line in self.error_lines() if "failed to start" in line]
            if code is not None or failed:
                raise self._error("tritonserver failed after start-up (exit code %s)" % code)
            return http_get(self.metrics_url, "/metrics", timeout=0.5)[0] == 200

        poll(metrics_up, wait_s, 0.1)

    def _startup_failures(self, final: bool) -> list[str]:
        """Models that should have loaded at start-up but did not, with Triton's reason.

        Before the server is ready only models already UNAVAILABLE count; once ready, every
        model the options asked for must be READY.
        """
        try:
            index = self.repository_index()
        except (ServerError, ValueError):
            return []
        ready = {m.get("name") for m in index if m.get("state") == "READY"}
        opts = self.options
        if opts.model_control_mode != "explicit" or "*" in opts.load_models:
            wanted = [m.get("name") for m in index]
        else:
            wanted = list(opts.load_models)
        failed = []
        for name in dict.fromkeys(wanted):
            if name in ready:
                continue
            entry = next((m for m in index if m.get("name") == name), {})
            reason = entry.get("reason") or entry.get("state")
            if final or (entry.get("state") == "UNAVAILABLE" and reason != "unloaded"):
                failed.append("%s: %s" % (name, reason or "not loaded (see the log)"))
        return failed

    def load_model(self, name: str, config_json: str | None = None, timeout_s: float = 300.0) -> None:
        """As ``ServerAPI.load_model``, but a server that dies during the load fails it at once
        (quoting its log) instead of after ``timeout_s``: its stubs can keep the connection open."""
        self._running()
        outcome: list[BaseException | None] = []

        def load() -> None:
            try:
                ServerAPI.load_model(self, name, config_json, timeout_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome.append(exc)

        worker = threading.Thread(target=load, name="aitune-load-%s" % name, daemon=True)
        worker.start()

        def loaded() -> bool:
            worker.join(0.25)
            code = self.returncode
            if code is not None and worker.is_alive():
                raise self._error("tritonserver %s while loading model %r" % (describe_exit(code), name))
            return not worker.is_alive()

        poll(loaded, float("inf"), 0.0)  # the load call's own timeout ends the worker
        if outcome and outcome[0] is not None:
            code = self.returncode
            if code is not None:
                raise self._error("tritonserver %s while loading model %r" % (describe_exit(code), name))
            raise outcome[0]

    def stubs(self) -> dict[tuple[str, str], int]:
        """The server's Python-backend stubs: (model, instance) -> pid (from each stub's command line:
        the model.py path of a version directory, then the instance name)."""
        found = {}
        for pid in self.children():
            argv = procs.cmdline(pid)
            if argv is not None and len(argv) > 8 and argv[0].endswith(STUB_BINARY):
                found[(Path(os.fsdecode(argv[1])).parent.parent.name, os.fsdecode(argv[8]))] = pid
        return found

    def restart_dead_stubs(self) -> list[str]:
        """Call periodically while serving. A Python stub that died (a crash, an OOM kill) leaves its
        model failing every request while Triton still reports it ready: such a model is reloaded
        (Triton starts new stubs), or unloaded if that fails, so readiness tells the truth. Returns one
        line per model it acted on."""
        if self.returncode is not None or http_get(self.http_url, "/v2/health/ready")[0] != 200:
            return []  # stopping (stop() signalled it: it has its own session) or not up: its stubs go on purpose
        current = self.stubs()
        known = self._stubs
        if known is None:
            self._stubs = current
            return []
        gone = {key for key in known if key not in current}
        # a stub seen gone twice in a row (0.5 s apart) is dead: one /proc read can miss a process
        confirmed, self._stubs_missing = gone & self._stubs_missing, gone
        if not confirmed:
            return []
        self._stubs = current
        lines = []
        for model in sorted({m for (m, instance) in confirmed}):
            if not self.model_ready(model):
                continue  # unloaded (or being reloaded) on purpose
            pids = ", ".join(str(pid) for (m, _), pid in sorted(known.items()) if m == model)
            try:
                self.load_model(model, timeout_s=self.options.startup_timeout_s)
                lines.append("the Python stub of model %s (pid %s) died; reloaded the model (log: %s)"
                             % (model, pids, self.log_path))
            except ServerError as exc:
                try:
                    self.unload_model(model, timeout_s=self.options.startup_timeout_s)
                except ServerError:
                    pass
                lines.append("the Python stub of model %s (pid %s) died and reloading it failed (%s): the model is "
                             "unavailable (log: %s)" % (model, pids, str(exc).splitlines()[0], self.log_path))
            self._stubs = self.stubs()
        return lines

    def draining(self) -> str | None:
        """What a stopping tritonserver is still waiting for, from its log ("7 open HTTP connection(s)
        to close (up to 25 s more)"), or None when it is not waiting on clients."""
        for line in reversed(self.log_tail(10).splitlines()):
            match = _DRAINING.search(line)
            if match:
                count = int(match.group(2))
                return "%d %s (up to %s s more)" % (count, _DRAINED_WHAT[match.group(3)], match.group(1)) \
                    if count else None
        return None

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after the grace period; returns the exit code.

        While tritonserver drains open connections or requests in flight, ``notify`` hears so once;
        a Ctrl-C (or SIGTERM) during the wait kills the group at once and is re-raised. Shared-memory
        regions under this server's own prefix are removed only after an unclean end (a clean
        shutdown removes them itself).
        """
        proc = self._proc
        if proc is None:  # never started, or it failed to: only the log may be open
            if self._log_file:
                self._log_file.close()
                self._log_file = None
            return None
        interrupted: BaseException | None = None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)  # a stopped server only sees SIGTERM once continued
            try:
                self._wait_exit(proc)
            except KeyboardInterrupt as exc:  # asked again: stop waiting
                interrupted = exc
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            self._unclean = True
        leftovers = procs.group_members(proc.pid)
        if leftovers:  # after a crash of the server its stubs remain: routine cleanup, not news
            log.info("killing processes left in tritonserver's group: %s", leftovers)
            _signal_group(proc.pid, signal.SIGKILL)
            self._unclean = True
            poll(lambda: not procs.group_members(proc.pid), 5.0, 0.05)
        if self._unclean:
            self._remove_own_shm()
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        if interrupted is not None:
            raise interrupted
        return proc.returncode

    def _wait_exit(self, proc: subprocess.Popen) -> None:
        """Wait for the exit after SIGTERM; SIGKILL after ``stop_grace_s`` with a message that says
        what the server was still doing."""
        drained: list[str | None] = []

        def exited() -> bool:
            try:
                proc.wait(0.25)
                return True
            except subprocess.TimeoutExpired:
                pass
            waiting = self.draining()
            if waiting and not any(drained):
                self._notify("tritonserver is waiting for %s before it exits" % waiting)
            drained.append(waiting)
            return False

        if poll(exited, self.stop_grace_s, 0.0):
            return
        waiting = drained[-1] if drained else None
        log.warning("tritonserver %d did not exit within %.0f s of SIGTERM%s; killed it", proc.pid, self.stop_grace_s,
                    " (still waiting for %s)" % waiting if waiting else " (still unloading its models)")
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._unclean = True

    def _remove_own_shm(self) -> None:
        for region in SHM_DIR.glob(self.shm_prefix + "*"):
            try:
                region.unlink()
                log.info("removed leftover shared memory %s", region)
            except OSError as exc:
                log.warning("cannot remove %s: %s", region, exc)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
