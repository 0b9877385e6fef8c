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
from aitune_triton.errors import StubIncompatible, UserError
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
    # models the caller loads itself once the server is up (validate: one at a time); checked
    # before launch like load_models (check_numpy_bytes), never loaded by the server at start-up
    loaded_later: tuple[str, ...] = ()
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


# The first Triton release whose Python backend reads numpy 2 arrays right: python_backend PR #384
# (24.11). Before it the stub's pybind11 2.10 misreads numpy 2 dtype descriptors, so a BYTES tensor
# is corrupted on the way in (the stub dies in deserialize_bytes_tensor) or empty on the way out.
NUMPY2_FIXED_TRITON = (2, 52)
NUMPY2_FIX = ('run `pip install "numpy<2"` in this environment (%s), or serve on a Triton >= 24.11 '
              '(2.52) server with --tritonserver')


def _major_minor(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)(?:\.(\d+))?", version or "")
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def stub_numpy_version() -> str | None:
    """The numpy a launched server's Python-backend stub imports, or None when there is none.

    Read from this process's package metadata, without starting anything or importing numpy: the
    stub takes its site-packages from the ``python3`` first on the server's PATH, and
    ``build_environment`` puts this interpreter's ``bin`` first there, so that is this very
    environment (its site-packages and ``.pth`` files, as ``sys.path`` lists them here). The stub
    ignores PYTHONPATH (checked: a numpy 1.26 on the CLI's PYTHONPATH before a numpy 2 venv still
    has the 2.51 stub die on numpy 2), so PYTHONPATH entries are left out of the search; a plain
    ``importlib.metadata.version`` would count them. Asking a ``python3`` subprocess would cost a
    process per launch and see PYTHONPATH all the same. A model with its own environment
    (``EXECUTION_ENV_PATH``, ``pack-env``) imports the numpy packed into it instead: see
    ``bytes_python_models``."""
    extra = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    path = [p for p in sys.path if os.path.abspath(p or ".") not in extra]
    for dist in importlib.metadata.distributions(name="numpy", path=path):
        return dist.version
    return None


def numpy2_breaks_bytes(numpy_version: str | None, triton_version: str | None) -> bool | None:
    """The rule, in one place: does a Python-backend stub corrupt BYTES tensors? True when numpy >= 2
    meets a Triton release older than 2.52; False when numpy is 1.x (or absent) or the release is
    fixed; None when numpy >= 2 and the release is unknown."""
    numpy = _major_minor(numpy_version)
    if numpy is None or numpy[0] < 2:
        return False
    triton = _major_minor(triton_version)
    if triton is None:
        return None
    return triton < NUMPY2_FIXED_TRITON


def _model_config(model_dir: Path):
    """A model's config.pbtxt, or None when it cannot be read (the server reports that itself)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None


def bytes_python_models(repo: Path | str, names: tuple[str, ...]) -> dict[str, str]:
    """The Python-backend models among ``names`` (and the models their ensembles load) with a BYTES
    tensor, each with its first one ("input 'raw'"). Models whose config names an
    ``EXECUTION_ENV_PATH`` are left out: their stub imports the numpy packed with them, not this
    environment's. An ``s3://`` repository is not read (empty)."""

    if is_s3_url(repo):
        return {}
    repo = Path(repo)
    found: dict[str, str] = {}
    todo, seen = list(names), set()
    while todo:
        name = todo.pop(0)
        if name in seen or not (repo / name).is_dir():
            continue
        seen.add(name)
        cfg = _model_config(repo / name)
        if cfg is None:
            continue
        if cfg.platform == "ensemble":
            todo += [step.model_name for step in cfg.ensemble_scheduling.step]
            continue
        if cfg.backend != "python" or "EXECUTION_ENV_PATH" in cfg.parameters:
            continue
        tensor = first_bytes_tensor(cfg)
        if tensor:
            found[name] = tensor
    return found


def first_bytes_tensor(cfg) -> str | None:
    """A model config's first BYTES (``TYPE_STRING``) tensor as "input 'raw'", or None."""
    from tritonclient.grpc import model_config_pb2

    tensors = [("input", t.name) for t in cfg.input if t.data_type == model_config_pb2.TYPE_STRING] + \
        [("output", t.name) for t in cfg.output if t.data_type == model_config_pb2.TYPE_STRING]
    return "%s %r" % tensors[0] if tensors else None


def numpy_bytes_problem(repo: Path | str, names: tuple[str, ...], binary: Path | None = None) \
        -> tuple[bool | None, str] | None:
    """Why the server ``binary`` (None: the bundled one) would corrupt BYTES tensors of models among
    ``names`` in ``repo``: None when it would not; else (``numpy2_breaks_bytes``'s True, or None when
    the release is unknown, and one line naming the model, the cause and the fixes). Cheap when
    numpy is 1.x (the metadata only); the configs are read, and the binary asked its version, only
    under numpy 2."""
    numpy = stub_numpy_version()
    if numpy2_breaks_bytes(numpy, None) is False or not names:
        return None
    models = bytes_python_models(repo, names)
    if not models:
        return None
    triton = server_version(binary)
    verdict = numpy2_breaks_bytes(numpy, triton)
    if verdict is False:
        return None
    model, tensor = next(iter(models.items()))
    others = " (and %d more)" % (len(models) - 1) if len(models) > 1 else ""
    cause = ("the Python backend of Triton %s (older than 2.52 / 24.11) corrupts BYTES tensors under numpy %s"
             % (triton, numpy) if verdict else
             "if this server is older than Triton 2.52 / 24.11 (its release cannot be read), its Python backend "
             "corrupts BYTES tensors under numpy %s" % numpy)
    return verdict, "Python-backend model %s%s has a BYTES %s, and %s; %s" % (
        model, others, tensor, cause, NUMPY2_FIX % sys.prefix)


def check_numpy_bytes(repo: Path | str, names: tuple[str, ...], binary: Path | None = None) -> None:
    """Refuse to launch ``binary`` on models whose BYTES tensors its Python stub would corrupt under
    this environment's numpy (``numpy_bytes_problem``): such a server starts, then its stub dies at
    the first request ("Stub process ... is not healthy"). A release that cannot be known is a warning."""
    problem = numpy_bytes_problem(repo, names, binary)
    if problem is None:
        return
    refused, why = problem
    if refused:
        raise StubIncompatible("refusing to start tritonserver: %s" % why)
    log.warning("%s", why)


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
