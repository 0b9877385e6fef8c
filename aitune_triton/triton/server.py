"""Start, probe and stop a real ``tritonserver`` (or attach to one that is already running).

Validation and tuning only mean something against the real server, so this module launches the
binary bundled in ``nvidia-pytriton`` (or one the user names) as a child process in its own
session, waits for it to become ready, and tears it down including its Python-backend stubs.

Facts about the bundled 2.51 binary this module relies on (checked, not assumed):

* it has no ``--version`` (``unrecognized option``, exit 1) and no ``--allow-client-shm``; the
  flags a binary accepts are read from its ``--help`` so that unknown flags are never passed;
* the HTTP endpoint only starts after the start-up model loads, so "connection refused" is normal
  for the first seconds; with ``--exit-on-error=false`` a failed start-up load leaves the server live
  but not ready (strict readiness), and ``POST /v2/repository/index`` then carries the reason;
* in explicit mode with nothing loaded ``/v2/health/ready`` is true, so one readiness check fits all;
* the Python backend names its shared memory ``<prefix><uuid>``: each server gets its own prefix so
  that leftovers after a crash can be removed without touching any other server's regions;
* the Python backend starts its stub through a shell with the model path unquoted, so a repository
  path or model name with shell syntax would run code: such paths are refused before launch;
* ``--id`` sets the name ``GET /v2`` reports: each launch gets its own, so a readiness answer from
  another server on the same port is never mistaken for ours.

Lifetime: the server gets a parent-death signal and a ``procs.Watchdog`` that kills its process
group (stubs included) and removes its shared memory if the CLI dies without stopping it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from aitune_triton import procs
from aitune_triton.deploy.storage import is_s3_url, server_repository_arg
from aitune_triton.triton import tools
from aitune_triton.triton.repository import shell_unsafe_chars
from aitune_triton.errors import ServerError, UserError  # noqa: F401  (ServerError re-exported)

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
_SHM_PREFIX_FLAG = "python,shm-region-prefix-name="
# error lines a CPU-only server always logs
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned system memory", "CUDA driver")

# Triton release inside each nvidia-pytriton wheel, from pytriton's CHANGELOG (0.5.x) and from
# GET /v2 of the bundled binary (0.7.0). Unknown wheels give None rather than a guess.
PYTRITON_TRITON_VERSIONS = {
    "0.5.0": "2.41.0",
    "0.5.1": "2.42.0",
    "0.5.2": "2.42.0",
    "0.5.3": "2.43.0",
    "0.5.4": "2.44.0",
    "0.5.5": "2.44.0",
    "0.5.6": "2.44.0",
    "0.7.0": "2.51.0",
}


@dataclass(frozen=True)
class ServerOptions:
    """How to launch tritonserver. Ports left as None are picked free at start."""

    tritonserver: Path | None = None
    host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    model_control_mode: str = "explicit"
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    startup_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()
    allow_client_shm: bool = True
    exit_on_error: bool = False
    disable_auto_complete: bool = True


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def free_ports(n: int = 3, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``n`` distinct ports that are free now; all sockets are held together so none repeats."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def resolve_ports(options: ServerOptions) -> Ports:
    """Fill the ports the options leave open with free ones distinct from the fixed ones."""
    fixed = [p for p in (options.http_port, options.grpc_port, options.metrics_port) if p]
    picked = [p for p in free_ports(3 + len(fixed), options.host) if p not in fixed]
    it = iter(picked)
    return Ports(
        http=options.http_port or next(it),
        grpc=options.grpc_port or next(it),
        metrics=options.metrics_port or next(it),
    )


@functools.lru_cache(maxsize=8)
def _flags_cached(binary: str, mtime: float) -> frozenset[str]:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot read the flags of %s: %s", binary, exc)
        return frozenset()
    return frozenset(re.findall(r"^\s*(--[a-z0-9][a-z0-9-]*)", out.stdout + out.stderr, re.M))


def supported_flags(binary: Path) -> frozenset[str]:
    """Flags listed by ``tritonserver --help`` (exit code 1 there, but the usage is complete)."""
    return _flags_cached(str(binary), binary.stat().st_mtime)


def server_binary(options: ServerOptions) -> Path:
    return Path(options.tritonserver) if options.tritonserver else tools.bundled_tritonserver()


def build_command(
    repo: Path,
    options: ServerOptions,
    ports: Ports,
    *,
    binary: Path | None = None,
    backend_directory: Path | None = None,
    flags: frozenset[str] | None = None,
    shm_prefix: str | None = None,
    server_id: str | None = None,
) -> list[str]:
    """The tritonserver argv. Launches nothing.

    ``flags`` is what the binary accepts (None: unknown); flags newer than 2.51, such as
    ``--allow-client-shm``, are only passed when listed. The bundled server gets the venv's
    backends dir unless ``backend_directory`` says otherwise.
    """
    if options.load_models and options.model_control_mode != "explicit":
        raise ValueError("load_models needs model_control_mode='explicit'")
    if "*" in options.load_models and len(options.load_models) > 1:
        raise ValueError("load_models=('*',) must be the only entry")
    binary = binary or server_binary(options)
    if backend_directory is None and options.tritonserver is None:
        backend_directory = tools.backends_dir()

    def knows(flag: str, default: bool) -> bool:
        return default if flags is None else flag in flags

    cmd = [
        str(binary),
        "--model-repository=%s" % server_repository_arg(repo),
        "--http-address=%s" % options.host,
        "--http-port=%d" % ports.http,
        "--grpc-address=%s" % options.host,
        "--grpc-port=%d" % ports.grpc,
        "--metrics-port=%d" % ports.metrics,
    ]
    if knows("--metrics-address", True):
        cmd.append("--metrics-address=%s" % options.host)
    cmd += [
        "--model-control-mode=%s" % options.model_control_mode,
        "--exit-on-error=%s" % str(options.exit_on_error).lower(),
        "--log-verbose=%d" % options.log_verbose,
    ]
    cmd += ["--load-model=%s" % name for name in options.load_models]
    if options.disable_auto_complete:
        cmd.append("--disable-auto-complete-config")
    if options.allow_client_shm and knows("--allow-client-shm", False):
        cmd.append("--allow-client-shm=true")
    if backend_directory is not None:
        cmd.append("--backend-directory=%s" % backend_directory)
    if server_id and knows("--id", True):
        cmd.append("--id=%s" % server_id)
    if shm_prefix and not any(_SHM_PREFIX_FLAG in a for a in options.extra_args):
        cmd.append("--backend-config=%s%s" % (_SHM_PREFIX_FLAG, shm_prefix))
    cmd += list(options.extra_args)
    return cmd


def _prepend(value: str | None, current: str | None) -> str | None:
    parts = [p for p in (current or "").split(os.pathsep) if p]
    if value:
        parts = [value] + [p for p in parts if p != value]
    return os.pathsep.join(parts) if parts else None


def build_environment(base_env: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment, bound to this venv.

    The Python-backend stub ignores PYTHONPATH: it finds site-packages through the ``python3``
    first on PATH (whose ``pyvenv.cfg`` names the venv), and embeds whichever libpython the loader
    finds first, hence this interpreter's LIBDIR on LD_LIBRARY_PATH. ``PYTHONDONTWRITEBYTECODE`` keeps
    what honours it from writing bytecode into the repository (it may be a committed directory); the
    stub's embedded interpreter ignores it, so the served runtime sets ``sys.dont_write_bytecode``.
    """
    env = dict(os.environ if base_env is None else base_env)
    env["PATH"] = _prepend(str(Path(sys.prefix) / "bin"), env.get("PATH")) or ""
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    ld = _prepend(tools.libpython_dir(), env.get("LD_LIBRARY_PATH"))
    if ld:
        env["LD_LIBRARY_PATH"] = ld
    return env


def server_version(path: Path | None = None) -> str | None:
    """The Triton release of a binary without starting it, or None when that cannot be known.

    2.51 rejects ``--version``; it is still tried for other builds. For the bundled binary the
    nvidia-pytriton wheel version is mapped through ``PYTRITON_TRITON_VERSIONS``. A running
    server reports its exact version through ``TritonServer.version()``.
    """
    try:
        binary = Path(path) if path else tools.bundled_tritonserver()
    except tools.ToolMissing:
        return None
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        match = re.search(r"(\d+\.\d+\.\d+)", out.stdout)
        if out.returncode == 0 and match:
            return match.group(1)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        bundled = tools.bundled_tritonserver().resolve() == binary.resolve()
    except (tools.ToolMissing, OSError):
        bundled = False
    if not bundled:
        return None
    try:
        return PYTRITON_TRITON_VERSIONS.get(importlib.metadata.version("nvidia-pytriton"))
    except importlib.metadata.PackageNotFoundError:
        return None


# local servers must never be reached through an http_proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, path: str, timeout: float = 2.0, data: bytes | None = None) -> tuple[int | None, bytes]:
    """(status, body); status None when nothing answers. POSTs when ``data`` is given."""
    req = urllib.request.Request("http://%s%s" % (url, path), data=data, method="POST" if data is not None else "GET")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None, b""


def _strip_scheme(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", url).rstrip("/")


class _ServerAPI:
    """Operations shared by launched and attached servers; needs ``http_url``."""

    http_url: str

    def _context(self) -> str:
        return ""

    def is_live(self) -> bool:
        return _http_get(self.http_url, "/v2/health/live")[0] == 200

    def is_ready(self) -> bool:
        return _http_get(self.http_url, "/v2/health/ready")[0] == 200

    def model_ready(self, name: str) -> bool:
        return _http_get(self.http_url, "/v2/models/%s/ready" % name)[0] == 200

    def version(self) -> str | None:
        status, body = _http_get(self.http_url, "/v2")
        return json.loads(body).get("version") if status == 200 else None

    def repository_index(self) -> list[dict]:
        status, body = _http_get(self.http_url, "/v2/repository/index", data=b"{}")
        if status != 200:
            raise ServerError("repository index failed (HTTP %s): %s" % (status, body.decode(errors="replace")))
        return json.loads(body)

    def _client(self, timeout_s: float):
        import tritonclient.http as httpclient  # gevent-based; only imported when needed

        return httpclient.InferenceServerClient(self.http_url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def load_model(self, name: str, config_json: str | None = None, timeout_s: float = 300.0) -> None:
        """Load (or reload) a model; ``config_json`` overrides its config.pbtxt for this load."""
        from tritonclient.utils import InferenceServerException

        client = self._client(timeout_s)
        try:
            client.load_model(name, config=config_json)
        except InferenceServerException as exc:
            raise ServerError("loading model %r failed: %s%s" % (name, exc.message(), self._context())) from exc
        except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection (gevent raises several kinds)
            raise ServerError("loading model %r did not finish within %.0f s (%s: %s)%s"
                              % (name, timeout_s, type(exc).__name__, exc, self._context())) from exc
        finally:
            _close_quietly(client)

    def unload_model(self, name: str, timeout_s: float = 120.0) -> None:
        from tritonclient.utils import InferenceServerException

        client = self._client(timeout_s)
        try:
            client.unload_model(name)
        except InferenceServerException as exc:
            raise ServerError("unloading model %r failed: %s%s" % (name, exc.message(), self._context())) from exc
        except Exception as exc:  # noqa: BLE001 - see load_model
            raise ServerError("unloading model %r did not finish within %.0f s (%s: %s)"
                              % (name, timeout_s, type(exc).__name__, exc)) from exc
        finally:
            _close_quietly(client)


def _close_quietly(client) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a client of a wedged server may raise anything
        pass


def describe_exit(code: int | None) -> str:
    """"exited with code 1" or "crashed (SIGSEGV)" for a Popen return code."""
    if code is not None and code < 0:
        try:
            return "crashed (%s)" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %s" % code


def served_model_names(repo: Path) -> tuple[str, ...]:
    """Model directories to load by name (hidden ones, such as a generate's staging dir, left out);
    ``("*",)`` when the repository is not a local directory."""
    repo = Path(repo)
    if not repo.is_dir():
        return ("*",)
    return tuple(sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")))


def check_shell_safe(repo: Path, model_names: tuple[str, ...] = ()) -> None:
    """Refuse a repository path or model name the Python backend would pass through a shell unquoted.

    Triton's Python backend (2.51 at least) launches its stub with ``bash -c`` and the model path
    unquoted, so ``$(...)``, backticks, quotes or spaces in it run code or break the launch.
    """
    for what, text in [("repository path", str(Path(repo).resolve()))] + [("model name", n) for n in model_names]:
        bad = shell_unsafe_chars(text)
        if bad:
            raise UserError("refusing to serve %r: its %s contains shell metacharacters (%s), which Triton's Python "
                            "backend passes unquoted to a shell; move or rename it to plain letters, digits and ._-/"
                            % (text, what, " ".join(repr(c) for c in bad)))


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fixed ports must be free before launch: otherwise another server would answer our probes."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "in use"
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise UserError("%s port %d on %s is not free (%s); stop what uses it or pass another --%s-port"
                                % (what, port, host, exc.strerror, what)) from None


class RemoteServer(_ServerAPI):
    """A server someone else runs: same interface, but it is never started or stopped here."""

    def __init__(self, http_url: str, grpc_url: str | None = None, metrics_url: str | None = None):
        self.http_url = _strip_scheme(http_url)
        self.grpc_url = _strip_scheme(grpc_url) if grpc_url else None
        self.metrics_url = _strip_scheme(metrics_url) if metrics_url else None
        self.pid = None

    def start(self) -> "RemoteServer":
        if not self.is_live():
            raise ServerError("no Triton server answers at %s" % self.http_url)
        return self

    def stop(self) -> None:
        """Not ours to stop."""

    def is_alive(self) -> bool:
        return self.is_live()

    def log_tail(self, n: int = 20) -> str:
        return ""

    def __enter__(self) -> "RemoteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(comm, pgid) of a live process, None if gone or a zombie."""
    try:
        raw = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else (comm, int(fields[2]))


def group_members(pgid: int) -> dict[int, str]:
    """Live processes of a process group, pid -> command name (Linux /proc)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1] == pgid:
                members[int(entry.name)] = stat[0]
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class TritonServer(_ServerAPI):
    """A tritonserver child process with its own session, log file and shared-memory prefix."""

    def __init__(
        self,
        repo: Path,
        options: ServerOptions = ServerOptions(),
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        stop_grace_s: float = 30.0,
    ):
        self.repo = repo if is_s3_url(repo) else Path(repo)  # Path() would fold the s3:// double slash
        self.options = options
        self.stop_grace_s = stop_grace_s
        self._env = env
        self.log_path: Path | None = Path(log_path) if log_path else None
        self.shm_prefix = "%s%s_" % (SHM_PREFIX, uuid.uuid4().hex[:12])
        self.server_id = "aitune-%s" % uuid.uuid4().hex[:16]
        self._watchdog: procs.Watchdog | None = None
        self.ports: Ports | None = None
        self.command: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._unclean = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

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

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def error_lines(self, n: int = 10) -> list[str]:
        """Triton's ``E...`` log lines, without the CPU-only noise (NVML, DCGM, CUDA driver)."""
        if self.log_path is None:
            return []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        lines = [l for l in text.splitlines() if re.match(r"^E\d{4} ", l) and not any(x in l for x in _NOISE)]
        return lines[-n:]

    def _context(self) -> str:
        parts = []
        errors = self.error_lines()
        if errors:
            parts.append("--- errors in %s ---\n%s" % (self.log_path, "\n".join(errors)))
        tail = self.log_tail(20)
        if tail:
            parts.append("--- last lines of %s ---\n%s" % (self.log_path, tail))
        return "".join("\n" + p for p in parts)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self.is_live()

    def children(self) -> dict[int, str]:
        """Other processes in the server's group (Python-backend stubs), pid -> name."""
        if self._proc is None:
            return {}
        return {p: c for p, c in group_members(self._proc.pid).items() if p != self._proc.pid}

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
                msg = str(exc)
                busy = "already in use" in msg and not any(":%d'" % p in msg for p in fixed)
                if not busy or attempt == 1:
                    raise
                log.warning("port clash starting tritonserver, retrying with other ports")
        raise AssertionError("unreachable")

    def _start_once(self) -> "TritonServer":
        binary = server_binary(self.options)
        if not binary.exists():
            raise ServerError("tritonserver not found at %s" % binary)
        names = tuple(n for n in self.options.load_models if n != "*")
        if "*" in self.options.load_models and isinstance(self.repo, Path) and self.repo.is_dir():
            names = tuple(p.name for p in self.repo.iterdir() if p.is_dir())
        check_shell_safe(self.repo, names)
        opts = self.options
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
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=build_environment(self._env),
            start_new_session=True,  # its own group: stop() and the watchdog signal it with its stubs
            preexec_fn=procs.die_with_parent,
        )
        try:
            self._watchdog = procs.Watchdog()
            self._watchdog.arm(self._proc.pid, self.shm_prefix + "*")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver ready: pid %d, http %s, grpc %s", self._proc.pid, self.http_url, self.grpc_url)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError("tritonserver exited with code %d during start-up%s" % (code, self._context()))
            status, _ = _http_get(self.http_url, "/v2/health/ready")
            if status is not None and not self._answer_is_ours():
                status = None  # another server on this port: ours will fail to bind and exit
            if status is not None:
                # ready can be true although a start-up load failed (a config that does not parse
                # never becomes a model state), so the requested models are checked by name
                failed = self._startup_failures(final=status == 200)
                if failed:
                    raise ServerError("model(s) failed to load: %s%s" % ("; ".join(failed), self._context()))
                if status == 200:
                    self._confirm_endpoints()
                    return
            if time.monotonic() > deadline:
                raise ServerError(
                    "tritonserver not ready within %.0f s%s" % (self.options.startup_timeout_s, self._context())
                )
            time.sleep(0.25)

    def _answer_is_ours(self) -> bool:
        """The server answering on our HTTP port reports our ``--id`` (unknown ids count as ours)."""
        if not any(a.startswith("--id=") for a in self.command):
            return True
        status, body = _http_get(self.http_url, "/v2")
        try:
            return status == 200 and json.loads(body).get("name") == self.server_id
        except ValueError:
            return False

    def _confirm_endpoints(self, wait_s: float = 2.0) -> None:
        """Metrics start after HTTP, and a metrics port clash makes tritonserver exit just after
        it has answered ready: wait for the metrics endpoint (or an exit, or an error line)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            failed = [l for l in self.error_lines() if "failed to start" in l]
            if code is not None or failed:
                raise ServerError("tritonserver failed after start-up (exit code %s)%s" % (code, self._context()))
            if _http_get(self.metrics_url, "/metrics", timeout=0.5)[0] == 200:
                return
            time.sleep(0.1)

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

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after the grace period; returns the exit code.

        Shared-memory regions under this server's own prefix are removed only after an unclean end
        (a clean shutdown removes them itself).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)  # a stopped server only sees SIGTERM once continued
            try:
                proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver %d ignored SIGTERM for %.0f s, killing it", proc.pid, self.stop_grace_s)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                self._unclean = True
        if proc.returncode != 0:
            self._unclean = True
        leftovers = group_members(proc.pid)
        if leftovers:
            log.warning("killing processes left in tritonserver's group: %s", leftovers)
            _signal_group(proc.pid, signal.SIGKILL)
            self._unclean = True
            deadline = time.monotonic() + 5
            while group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._unclean:
            self._remove_own_shm()
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return proc.returncode

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
