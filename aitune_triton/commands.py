"""The Python API of every command but ``generate`` (``aitune_triton.api``): typed options in,
typed results out, nothing printed. The CLI parses its options into these, calls one function and
prints the result, so ``aitune_triton.validate(...)`` and ``aitune-triton validate`` do the same.

Every command opens its REPO with ``triton.object_storage.open_repository`` (a local folder, or an
``s3://`` prefix written by ``push``), and the commands that need a server get it from
``triton.session`` (the embedded one launched on REPO, or a running one with ``url``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from aitune_triton import defaults
from aitune_triton.errors import ServerError, UserError
from aitune_triton.triton.launch import is_s3_url
from aitune_triton.triton.object_storage import RepositoryView, open_repository
from aitune_triton.triton.session import ServerTarget
from aitune_triton.waiting import poll

if TYPE_CHECKING:
    from aitune_triton.tensorrt_model import GeneratedModel
    from aitune_triton.deploy.capacity import CapacityPlan
    from aitune_triton.deploy.k8s import DeploySpec
    from aitune_triton.deploy.storage import PushResult
    from aitune_triton.triton.pack_env import PackedEnv
    from aitune_triton.triton.server import TritonServer
    from aitune_triton.tune.options import TuneOptions
    from aitune_triton.tune.result import TuneResult
    from aitune_triton.validate.options import ValidateOptions
    from aitune_triton.validate.report import ValidationReport

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress callback: say nothing."""


# ---------------------------------------------------------------- validate


def validate(repo: Path | str, options: ValidateOptions | None = None,
             progress: Progress = _quiet) -> ValidationReport:
    """Serve ``repo`` on a real Triton and check every generated model; the report (also written
    to ``options.report_dir``, default ``<repo>_validation_report`` beside the repository) has
    ``exit_code`` 0 only when no check failed."""
    from aitune_triton.validate.harness import validate_repository
    from aitune_triton.validate.options import ValidateOptions, default_report_dir

    options = options or ValidateOptions()
    if options.report_dir is None:
        options = dataclasses.replace(options, report_dir=default_report_dir(repo))
    return validate_repository(repo, options, progress=progress)


# ---------------------------------------------------------------- tune


@dataclass(frozen=True)
class TuneOutcome:
    """``result``: the search and what was written; ``pushed``: the new version of an ``s3://``
    repository the tuned copy was pushed as (None for a local one)."""

    result: TuneResult
    pushed: PushResult | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.result.chosen is not None else 1


def tune(repo: Path | str, model: str, options: TuneOptions | None = None, server: ServerTarget | None = None,
         progress: Progress = _quiet) -> TuneOutcome:
    """Search instance count, queue delay (and client concurrency / transport) for ``model`` on a
    live server and write the best config back.

    ``server``: the embedded tritonserver launched on ``repo`` (default), or a running one
    (``ServerTarget(url=...)``) that serves this same local ``repo`` in explicit model-control
    mode. An ``s3://`` repo (a prefix written by ``push``) is downloaded whole, tuned locally and
    pushed back as a new version behind the same pointer; unless ``options.report_dir`` names a
    folder, its reports, written into the download (and pushed with the tuned version), are copied
    to ``tune.options.lasting_report_dir`` and ``result.reports`` names the copies."""
    from aitune_triton.output_paths import check_output_dir
    from aitune_triton.tune.options import TuneOptions, lasting_report_dir

    options = options or TuneOptions()
    server = server or ServerTarget()
    if not is_s3_url(repo):
        return TuneOutcome(_tune_local(_local_repository(repo, "tune"), model, options, server, progress))
    if server.attached:
        raise UserError("tune --url needs the local repository that server serves; an s3:// REPO is tuned on the "
                        "embedded server")
    if options.export_model_analyzer is not None:
        raise UserError("--export-model-analyzer writes a config naming the local model repository, and an s3:// "
                        "REPO is tuned in a temporary download deleted afterwards; export it from a local copy")
    from aitune_triton.deploy.storage import push as push_version

    lasting = lasting_report_dir(str(repo), model) if options.report_dir is None else None  # a --report lasts
    if lasting is not None:
        check_output_dir(lasting, "the tuning report")  # before the download and the search
    with open_repository(repo, full=True, require_pointer=True, progress=progress) as view:
        result = _tune_local(view.local, model, options, server, progress)
        if lasting is not None:
            result = _keep_reports(result, lasting)
        if result.chosen is None:
            return TuneOutcome(result)
        progress("pushing the tuned repository")
        assert view.base is not None  # require_pointer
        return TuneOutcome(result, push_version(view.local, view.base, progress=progress))


def _keep_reports(result: TuneResult, lasting: Path) -> TuneResult:
    """``result`` with its reports copied out of the temporary download into ``lasting``."""
    import shutil

    from aitune_triton.output_paths import resource_error

    copies = {}
    try:
        lasting.mkdir(parents=True, exist_ok=True)
        for what, path in result.reports.items():
            copies[what] = lasting / Path(path).name
            shutil.copy2(path, copies[what])
    except OSError as exc:
        raise resource_error(exc, "the tuning report", lasting) from None
    return dataclasses.replace(result, reports=copies)


def _tune_local(repo: Path, model: str, options: TuneOptions, target: ServerTarget, progress: Progress) -> TuneResult:
    from aitune_triton.triton.launch import ServerOptions
    from aitune_triton.triton.session import running_server
    from aitune_triton.triton.repository import repository_lock
    from aitune_triton.tune.search import check_tunable, tune_model_locked

    # the lock first: a generate --force between the check, the server's load and the search would
    # have tune search the old config and record the old manifest over the new model
    with repository_lock(repo, options.lock_wait_s):
        check_tunable(repo, model, options.report_dir)  # before the server loads (deserialises) anything
        progress("starting tritonserver" if not target.attached else "attaching to %s" % target.url)
        with running_server(repo, target, ServerOptions(load_models=(model,))) as server:
            progress("tuning %s" % model)
            return tune_model_locked(repo, model, server, options)


def _local_repository(repo: Path | str, command: str) -> Path:
    """``repo`` as a local folder (checked by the opener); an ``s3://`` URL is refused for the
    commands that write into, or read reports beside, a local repository."""
    if is_s3_url(repo):
        raise UserError("%s works on a local repository, not %s; download it or run %s before pushing"
                        % (command, repo, command))
    with open_repository(repo) as view:
        return view.local


# ---------------------------------------------------------------- serve


@dataclass(frozen=True)
class ServeOptions:
    """Where the embedded tritonserver listens (loopback by default) and which binary runs."""

    host: str = defaults.LOOPBACK
    http_port: int | None = defaults.HTTP_PORT
    grpc_port: int | None = defaults.GRPC_PORT
    metrics_port: int | None = defaults.METRICS_PORT
    tritonserver: Path | None = None
    startup_timeout_s: float = defaults.STARTUP_TIMEOUT_S
    backend_directory: Path | None = None  # the server's backends folder (default: the embedded server's)


@dataclass(frozen=True)
class ServerURLs:
    """The endpoints of a server ``serve`` started, and what it serves."""

    http: str
    grpc: str
    metrics: str
    repository: str  # what tritonserver got: the local path, or the versioned s3:// URL
    version: str | None  # the version a pointer named, for an s3:// repository
    log_path: Path | None


class RunningServer:
    """What ``serve`` yields: the server's ``urls``, and ``wait()`` to block while it serves."""

    def __init__(self, server: TritonServer, view: RepositoryView, notify: Progress):
        self.server = server
        self.notify = notify
        self.urls = ServerURLs(server.http_url, server.grpc_url, server.metrics_url, str(view.server), view.version,
                               server.log_path)

    def wait(self, timeout_s: float = float("inf")) -> None:
        """Block until the server exits (a ``ServerError`` with the end of its log), Ctrl-C, or
        ``timeout_s`` passes."""
        from aitune_triton.triton.server import describe_exit

        def exited() -> bool:
            for line in self.server.restart_dead_stubs():  # a dead stub: its model reloaded, one line
                self.notify(line)
            return self.server.returncode is not None

        if poll(exited, timeout_s, 0.5):
            raise ServerError("tritonserver %s while serving %s" % (describe_exit(self.server.returncode),
                                                                     self.urls.repository),
                              log_path=str(self.server.log_path) if self.server.log_path else None,
                              details="last lines of the server log:\n%s" % self.server.log_tail(30))


@contextlib.contextmanager
def serve(repo: Path | str, options: ServeOptions | None = None, progress: Progress = _quiet,
          notify: Progress = _quiet) -> Iterator[RunningServer]:
    """Run the embedded Triton on ``repo`` for the ``with`` block; the server is stopped (its
    process group reaped) on the way out; ``notify(line)`` hears what the server does meanwhile (a
    dead Python stub's model reloaded, what a stopping server drains). An ``s3://`` repo written
    by ``push`` is served at the version its pointer names (Triton cannot follow the pointer)::

        with aitune_triton.serve("model_repository") as running:
            print(running.urls.http)
    """
    from aitune_triton.triton.model_check import verify_models
    from aitune_triton.triton.launch import ServerOptions, check_host, served_model_names
    from aitune_triton.triton.session import running_server

    options = options or ServeOptions()
    check_host(options.host)  # before an s3:// repository is downloaded and the models are checked
    target = ServerTarget(tritonserver=options.tritonserver, startup_timeout_s=options.startup_timeout_s,
                          backend_directory=options.backend_directory)  # checks the timeout, as early
    with open_repository(repo, progress=progress) as view:
        if not view.remote:  # before the server loads (deserialises) anything
            verify_models(view.local, served_model_names(view.local))
        # by name, not "*": Triton would also try to load hidden dirs (a generate's staging dir)
        launch = ServerOptions(host=options.host, http_port=options.http_port, grpc_port=options.grpc_port,
                               metrics_port=options.metrics_port, model_control_mode="explicit",
                               load_models=served_model_names(view.local))
        progress("starting tritonserver on %s" % view.describe())
        with running_server(view.server, target, launch, notify=notify) as server:
            yield RunningServer(server, view, notify)  # type: ignore[arg-type]  # launched, so a TritonServer


# ---------------------------------------------------------------- push, plan, deploy k8s


def push(repo: Path | str, destination: str, progress: Progress = _quiet) -> PushResult:
    """Upload ``repo`` to ``s3://[host:port/]bucket/prefix`` atomically: a new version prefix,
    then the pointer switches. Credentials come only from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_DEFAULT_REGION``)."""
    from aitune_triton.deploy.storage import push as push_version
    from aitune_triton.triton.object_storage import S3Location

    base = S3Location.parse(destination)
    return push_version(_local_repository(repo, "push"), base, progress=progress)


@dataclass(frozen=True)
class PlanOptions:
    """What the plan must meet (checked by ``PlanRequest``); ``report``: the validate or tune
    report to read (default: the newest of the model's); ``out``: also write the plan as JSON."""

    target_rps: float
    p99_ms: float
    headroom: float = defaults.PLAN_HEADROOM
    gpus_per_replica: int | None = None
    min_replicas: int = defaults.PLAN_MIN_REPLICAS
    report: Path | None = None
    out: Path | None = None


def plan(repo: Path | str, model: str, options: PlanOptions) -> CapacityPlan:
    """Replicas and GPUs to serve ``options.target_rps`` within ``options.p99_ms``, from the
    measured curve of ``model``."""
    from aitune_triton.deploy import capacity
    from aitune_triton.output_paths import check_output_file

    request = capacity.PlanRequest(options.target_rps, options.p99_ms, options.headroom, options.gpus_per_replica,
                                   options.min_replicas)
    if options.out:  # before anything is read: a bad --out is the only error
        check_output_file(options.out, "the plan", create_parents=False)  # save_plan makes no directory
    local = _local_repository(repo, "plan")
    source = capacity.find_report(local, model, options.report)
    result = capacity.plan(capacity.read_curve(source, model, local / model), request)
    if options.out:
        capacity.save_plan(options.out, result)
    return result


@dataclass(frozen=True)
class DeployK8sOptions:
    """The Kubernetes manifests to write into ``out``. ``replicas``: a count, or ``"auto"`` to
    take it from ``plan_file`` (written by ``plan``); a local repository needs ``pvc``."""

    out: Path
    replicas: int | str = 1
    plan_file: Path | None = None
    gpus_per_replica: int | None = None
    max_replicas: int | None = None
    kserve: bool = False
    pvc: str | None = None
    secret: str = defaults.K8S_SECRET
    name: str | None = None
    image: str | None = None
    cpu: str = defaults.K8S_CPU
    memory: str = defaults.K8S_MEMORY
    shm_size: str = defaults.K8S_SHM_SIZE
    queue_target_us: int | None = None


@dataclass(frozen=True)
class DeployK8sResult:
    spec: DeploySpec
    files: tuple[Path, ...]
    checked: tuple[str, ...]  # one line per file: the Kubernetes schema it was checked against


def deploy_k8s(repo: Path | str, options: DeployK8sOptions) -> DeployK8sResult:
    """Kubernetes manifests serving ``repo`` (an ``s3://`` URL pushed by ``push``, or a local
    repository on ``options.pvc``), each checked against the Kubernetes OpenAPI schema before it
    is written."""
    from aitune_triton.deploy import k8s
    from aitune_triton.triton.launch import server_version

    planned = k8s.plan_values(options.plan_file) if options.plan_file else {}
    count = _replica_count(options.replicas, planned)
    if not is_s3_url(repo) and not options.pvc:
        raise UserError("the replicas need the repository in object storage or on a volume: push it (aitune-triton "
                        "push %s s3://bucket/prefix) and pass the s3:// URL, or pass --pvc CLAIM" % repo)
    if is_s3_url(repo) and options.pvc:
        raise UserError("give either an s3:// repository or --pvc, not both")
    with open_repository(repo) as view:
        manifests = k8s.manifests_of(view.local)
        if options.plan_file:
            k8s.check_plan_model(planned, manifests, options.plan_file, repo)
        image, reason = (options.image, "given with --image") if options.image else \
            k8s.choose_image(manifests, server_version())
        spec = k8s.DeploySpec(
            name=options.name or manifests[0]["name"].replace("_", "-").lower(), repository=str(repo),
            server_repository=str(view.server) if view.remote else "/models", image=image,
            image_reason=reason, replicas=count,
            gpus=options.gpus_per_replica if options.gpus_per_replica is not None else planned.get("gpus", 1),
            max_replicas=options.max_replicas, pvc=options.pvc, secret=options.secret, cpu=options.cpu,
            memory=options.memory, shm_size=options.shm_size,
            queue_target_us=options.queue_target_us if options.queue_target_us is not None else
            planned.get("queue_target_us", defaults.K8S_QUEUE_TARGET_US),
            kserve=options.kserve)
    files = k8s.render(spec)
    checked = k8s.check(files)
    return DeployK8sResult(spec, tuple(k8s.write(files, options.out)), tuple(checked))


def _replica_count(replicas: int | str, planned: dict) -> int:
    if replicas == "auto":
        if not planned:
            raise UserError("--replicas auto takes the count from --plan; pass --plan PLAN.json (aitune-triton plan "
                            "--out) or a number")
        return int(planned["replicas"])
    if isinstance(replicas, int) or str(replicas).isdigit():
        return int(replicas)
    raise UserError("--replicas must be a number or 'auto', got %r" % replicas)


# ---------------------------------------------------------------- pack-env, build-plan


def pack_env(repo: Path | str, model: str, python: str | None = None) -> PackedEnv:
    """Pack torch and what ``model`` imports into ``repo/model/python_env.tar.gz`` and point its
    config at it (Triton's ``EXECUTION_ENV_PATH``). ``python``: the serving stub's ``X.Y``; it
    must be this interpreter's (the default)."""
    from aitune_triton.triton import pack_env as packing

    return packing.pack_env(_local_repository(repo, "pack-env"), model, python)


@dataclass(frozen=True)
class BuildPlanResult:
    models: tuple[GeneratedModel, ...] = field(default=())


def build_plan(repo: Path | str, model: str | None = None, force: bool = False,
               progress: Progress = _quiet) -> BuildPlanResult:
    """Build the staged TensorRT plans of ``repo`` (``model``: only that one) here, inside a
    TensorRT or Triton container, and activate each TensorRT model atomically."""
    from aitune_triton.tensorrt_model import build_plans

    built = build_plans(_local_repository(repo, "build-plan"), model, force=force, progress=progress)
    return BuildPlanResult(tuple(built))
