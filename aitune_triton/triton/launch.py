"""What a tritonserver launch is made of, before anything runs: options, ports, the argv, the
environment, and the refusals that must happen before launch (shell syntax in paths, busy ports).

Facts about the bundled 2.51 binary this module relies on (checked, not assumed):

* it has no ``--version`` (``unrecognized option``, exit 1) and no ``--allow-client-shm``; the
  flags a binary accepts are read from its ``--help`` so that unknown flags are never passed;
* the Python backend names its shared memory ``<prefix><uuid>``: each server gets its own prefix
  (``--backend-config=python,shm-region-prefix-name=``) so leftovers can be removed safely;
* the Python backend starts its stub through a shell with the model path unquoted, so a repository
  path or model name with shell syntax would run code: such paths are refused before launch;
* ``--id`` sets the name ``GET /v2`` reports: each launch gets its own, so a readiness answer from
  another server on the same port is never mistaken for ours.
"""

from __future__ import annotations

import errno
import functools
import importlib.metadata
import logging
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.triton import tools
from aitune_triton.triton.repository import shell_unsafe_chars

log = logging.getLogger(__name__)

_SHM_PREFIX_FLAG = "python,shm-region-prefix-name="

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


# A repository Triton reads from S3 (or an S3-compatible server) instead of the filesystem.
SCHEME = "s3://"


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def server_repository_arg(repo: "str | os.PathLike[str]") -> str:
    """What tritonserver gets as ``--model-repository``: an s3:// URL unchanged, a path made absolute."""
    return str(repo) if is_s3_url(repo) else str(Path(repo).resolve())

@dataclass(frozen=True)
class ServerOptions:
    """How to launch tritonserver. Ports left as None are picked free at start; ``backend_directory``
    None is derived from the binary (``resolve_backend_directory``)."""

    tritonserver: Path | None = None
    backend_directory: Path | None = None
    host: str = defaults.LOOPBACK
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    model_control_mode: str = "explicit"
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    startup_timeout_s: float = defaults.STARTUP_TIMEOUT_S
    extra_args: tuple[str, ...] = ()
    allow_client_shm: bool = True
    exit_on_error: bool = False
    disable_auto_complete: bool = True
    exit_timeout_s: int = defaults.SERVER_EXIT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.backend_directory is not None and not Path(self.backend_directory).is_dir():
            raise UserError("backend directory %s is not a directory; pass the folder that holds one folder per "
                            "backend (python/, onnxruntime/...), e.g. /opt/tritonserver/backends"
                            % self.backend_directory)


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def free_ports(n: int = 3, host: str = defaults.LOOPBACK) -> tuple[int, ...]:
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


def free_port(host: str = defaults.LOOPBACK) -> int:
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


class _FlagsUnknown(Exception):
    """``--help`` could not be read: raised through the cache so that a failure is not kept."""


@functools.lru_cache(maxsize=8)
def _flags_cached(binary: str, mtime: float) -> frozenset[str]:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _FlagsUnknown(str(exc)) from None
    flags = frozenset(re.findall(r"^\s*(--[a-z0-9][a-z0-9-]*)", out.stdout + out.stderr, re.M))
    if not flags:
        raise _FlagsUnknown("its --help lists no flags (exit code %d)" % out.returncode)
    return flags


def supported_flags(binary: Path) -> frozenset[str] | None:
    """Flags listed by ``tritonserver --help`` (exit code 1 there, but the usage is complete), or
    None when they cannot be read (a timeout on a loaded machine, a binary that does not run):
    ``build_command`` then passes what a 2.4x+ server knows (``--id``, ``--exit-timeout-secs``)
    instead of dropping everything, and the next launch asks again."""
    try:
        return _flags_cached(str(binary), binary.stat().st_mtime)
    except (_FlagsUnknown, OSError) as exc:
        log.warning("cannot read the flags of %s (%s): passing the defaults", binary, exc)
        return None


def server_binary(options: ServerOptions) -> Path:
    return Path(options.tritonserver) if options.tritonserver else tools.bundled_tritonserver()


def resolve_backend_directory(options: ServerOptions) -> Path | None:
    """Where the server finds its backends: ``options.backend_directory`` when given; for the bundled
    binary the venv's backends dir (its Python stub matches this interpreter); for another binary
    ``PREFIX/backends`` beside its ``PREFIX/bin/`` (Triton's install tree: the NGC container's
    /opt/tritonserver, the pip wheel's ``pytriton/tritonserver``), through a symlinked binary too;
    else None, Triton's own default (/opt/tritonserver/backends)."""
    if options.backend_directory is not None:
        return Path(options.backend_directory)
    if options.tritonserver is None:
        return tools.backends_dir()
    given = Path(options.tritonserver)
    for binary in dict.fromkeys((given.absolute(), given.resolve())):
        candidate = binary.parent.parent / "backends"
        if binary.parent.name == "bin" and candidate.is_dir():
            return candidate
    return None


def build_command(
    repo: Path | str,
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
    ``--allow-client-shm``, are only passed when listed. ``backend_directory`` None:
    ``resolve_backend_directory(options)``.
    """
    if options.load_models and options.model_control_mode != "explicit":
        raise ValueError("load_models needs model_control_mode='explicit'")
    if "*" in options.load_models and len(options.load_models) > 1:
        raise ValueError("load_models=('*',) must be the only entry")
    binary = binary or server_binary(options)
    if backend_directory is None:
        backend_directory = resolve_backend_directory(options)

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
    if knows("--exit-timeout-secs", True):
        cmd.append("--exit-timeout-secs=%d" % options.exit_timeout_s)
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


def served_model_names(repo: Path) -> tuple[str, ...]:
    """Model directories to load by name (hidden ones, such as a generate's staging dir, left out);
    ``("*",)`` when the repository is not a local directory."""
    repo = Path(repo)
    if not repo.is_dir():
        return ("*",)
    return tuple(sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")))


def check_shell_safe(repo: Path | str, model_names: tuple[str, ...] = ()) -> None:
    """Refuse a repository path or model name the Python backend would pass through a shell unquoted.

    Triton's Python backend (2.51 at least) launches its stub with ``bash -c`` and the model path
    unquoted, so ``$(...)``, backticks, quotes or spaces in it run code or break the launch. An
    ``s3://`` repository is downloaded by the server to a folder of its own choosing: only the model
    names are checked then (resolving the URL as a path would judge the current directory instead).
    """
    paths = [] if is_s3_url(repo) else [("repository path", str(Path(repo).resolve()))]
    for what, text in paths + [("model name", n) for n in model_names]:
        bad = shell_unsafe_chars(text)
        if bad:
            raise UserError("refusing to serve %r: its %s contains shell metacharacters (%s), which Triton's Python "
                            "backend passes unquoted to a shell; move or rename it to plain letters, digits and ._-/"
                            % (text, what, " ".join(repr(c) for c in bad)))


def check_open_files(needed: int | None = None) -> None:
    """Refuse to launch under an open-file limit (``ulimit -n``) too low for tritonserver, its
    Python stubs and the clients: such a run otherwise fails minutes later, deep in a load, with
    the cause only in the server log."""
    import resource

    needed = defaults.MIN_OPEN_FILES if needed is None else needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise UserError("the open-file limit is %d (ulimit -n), below the %d tritonserver and its stubs need; raise "
                        "it (ulimit -n %d%s) and rerun" % (soft, needed, needed,
                                                          "" if hard == resource.RLIM_INFINITY or hard >= needed
                                                          else ", which needs a hard limit of at least that"))


def _bad_host(host: str, exc: OSError) -> UserError:
    return UserError("--host %s cannot be listened on here (%s); pass an IPv4 address of this machine, e.g. 127.0.0.1 "
                     "(this machine only) or 0.0.0.0 (every interface)" % (host, exc.strerror or exc))


def check_host(host: str) -> None:
    """Refuse a listening address this machine cannot bind before anything depends on it: port
    picking and the busy-port check would otherwise fail on it with an unrelated message (or a
    traceback). IPv4 only, as everywhere here: the URLs handed out are written ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise _bad_host(host, exc) from None


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fixed ports must be free before launch: otherwise another server would answer our probes.
    Only "in use" (or "not permitted": a privileged port) is about the port; any other failure to
    bind is about the host, and says so."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "in use"
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise _bad_host(host, exc) from None
                raise UserError("%s port %d on %s is not free (%s); stop what uses it or pass another --%s-port"
                                % (what, port, host, exc.strerror, what)) from None
