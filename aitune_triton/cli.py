"""Command line: parse options, call the API, print. Nothing else lives here.

Exit codes: 0 success, 1 a model or check failed, 2 a usage error (one line, no traceback
unless ``--debug``).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click
from aitune_triton.console import make_console

from aitune_triton import defaults
from aitune_triton.version import __version__
from aitune_triton.checkpoint import TASKS
from aitune_triton.errors import AituneError
from aitune_triton.output_paths import RESOURCE_ERRNOS, resource_error
from aitune_triton.progress import stage_progress
from aitune_triton.procs import Terminated, handle_termination

console = make_console(stderr=True, highlight=False)
BACKEND_DIRECTORY_HELP = ("The launched server's backends folder (default: the embedded server's, or PREFIX/backends "
                          "beside --tritonserver's PREFIX/bin/).")


def _print_error(exc: AituneError) -> None:
    """One line for the message, then the log path and the details, for every error in the tree."""
    message = str(exc).splitlines() or [type(exc).__name__]
    console.print("[bold red]error:[/] %s" % message[0], markup=True, soft_wrap=True)
    for line in message[1:]:
        console.print(line, markup=False, soft_wrap=True)
    if exc.log_path:
        console.print("log: %s" % exc.log_path, markup=False, soft_wrap=True)
    if exc.details:
        console.print(exc.details.rstrip(), markup=False, soft_wrap=True)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from aitune_triton.user_code import exit_now_if_threads_left

        try:
            result = handled(*args, **kwargs)
        except SystemExit as exc:  # a thread model.py left must not keep the finished command alive
            exit_now_if_threads_left(exc.code if isinstance(exc.code, int) else 1)
            raise
        exit_now_if_threads_left(0)
        return result

    def handled(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except AituneError as exc:
            if debug:
                console.print_exception()
            _print_error(exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (procs.Terminated)
            console.print("interrupted%s; nothing was written"
                          % (" by %s" % exc.args[0] if isinstance(exc, Terminated) else ""))
            sys.exit(128 + getattr(exc, "signum", 2))
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug: one line without --debug, the traceback with it
            if debug:
                raise
            if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:  # disk, quota, descriptors, read-only
                _print_error(resource_error(exc, "a file", exc.filename or "the disk"))
                sys.exit(1)
            first = (str(exc).strip().splitlines() or [""])[0]
            console.print("[bold red]internal error:[/] %s: %s (rerun with --debug for the traceback)"
                          % (type(exc).__name__, first), markup=True, soft_wrap=True)
            sys.exit(1)
    return wrapper


class _Repository(click.ParamType):
    """A model repository: a local directory, or an ``s3://[host:port/]bucket/prefix`` URL (kept
    as text: a Path would fold the double slash) for the commands that read object storage."""

    name = "repository"

    def __init__(self, exists: bool = False):
        self.path = click.Path(path_type=Path, exists=exists, file_okay=False)

    def convert(self, value, param, ctx):
        from aitune_triton.deploy.storage import S3Location, is_s3_url
        from aitune_triton.errors import UserError

        if is_s3_url(value):
            try:
                S3Location.parse(value)
            except UserError as exc:
                self.fail(str(exc), param, ctx)
            return value
        return self.path.convert(value, param, ctx)


def _tune_through_object_storage(fn):
    """``tune`` on an s3:// REPO (a prefix written by ``push``): the version its pointer names is
    downloaded whole, tuned locally (the embedded server loads that copy, so the write-back reload
    proves the tuned config), and written back through the same atomic push: a new version, then
    the pointer moves. A prefix without a pointer is refused rather than rewritten in place."""

    @functools.wraps(fn)
    def wrapper(*args, repo, **kwargs):
        from aitune_triton.deploy.storage import is_s3_url, open_repository, push as push_version

        if not is_s3_url(repo):
            return fn(*args, repo=repo, **kwargs)
        with open_repository(repo, full=True, require_pointer=True) as view:
            try:
                fn(*args, repo=view.local, **kwargs)
                code = 0
            except SystemExit as exc:
                code = exc.code
            if code == 0:
                with console.status("pushing the tuned repository"):
                    pushed = push_version(view.local, view.base)
                console.print("pushed the tuned repository as version %s (previous: %s); the tuning report is in it"
                              % (pushed.version, pushed.previous), markup=False, soft_wrap=True)
                click.echo(pushed.repository.url)
        sys.exit(code)
    return wrapper

def _follow_pointer(fn):
    """``serve`` on an s3:// REPO written by ``push``: Triton cannot follow the pointer object, so
    the command resolves it and the server gets the version it names (every server started from
    the same pointer loads the same files). A plain prefix is passed on as it is."""

    @functools.wraps(fn)
    def wrapper(*args, repo, **kwargs):
        from aitune_triton.deploy.storage import S3Location, client, is_s3_url, resolve

        if is_s3_url(repo):
            location = S3Location.parse(repo)
            repository, base, version = resolve(client(location), location)
            if version:
                console.print("%s: version %s" % (repo, version), markup=False, soft_wrap=True)
            repo = repository.url
        return fn(*args, repo=repo, **kwargs)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aitune-triton")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """Put a PyTorch model behind NVIDIA Triton Inference Server."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handle_termination()  # TERM and HUP unwind like Ctrl-C: servers stopped, staging removed


@main.command()
@click.argument("model_py", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True,
              help="Model repository to write into (other models in it are left untouched).")
@click.option("--name", help="Triton model name (default: get_config().name or the model.py's folder name).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["python", "tensorrt", "onnxruntime"]),
              help="Backends to generate (repeatable; default python + tensorrt).")
@click.option("--max-batch-size", type=int,
              help="Largest batch to serve (default: measured on the target device while rows/s improves).")
@click.option("--axis", "axes", multiple=True, metavar="INPUT:AXIS=LO..HI",
              help="Sizes an input axis accepts, e.g. input_ids:1=1..512 (repeatable; default: the model's own "
                   "limit, else probed beyond the samples).")
@click.option("--instances", type=int, help="Model instances per device.")
@click.option("--gpus",
              help="GPU instances: comma-separated GPU indices to place them on (default: every visible GPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where the fallback runs.")
@click.option("--max-queue-delay-us", type=int, help="Dynamic batching queue delay in microseconds.")
@click.option("--fallback-format", type=click.Choice(["auto", "aoti", "export", "eager"]),
              help="Force the fallback artifact format.")
@click.option("--portable/--no-portable", default=None,
              help="An artifact that loads on any host: the ExportedProgram instead of an AOTInductor package "
                   "(machine code for this host's CPU instruction set and GPU). [default: %s]"
                   % ("portable" if defaults.PORTABLE else "no-portable"))
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]),
              help="TensorRT builder precision.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=None, help="CUDA graphs for the TensorRT model.")
@click.option("--strategy", type=click.Choice(["min-latency", "max-throughput", "latency-budget"]),
              help="Stage-1 tuning: measure every fallback format and keep the one this strategy picks.")
@click.option("--budget-ms", type=float, help="Latency budget for --strategy latency-budget.")
@click.option("--atol", type=float,
              help="Absolute tolerance per element when checking exported outputs against eager (float outputs).")
@click.option("--rtol", type=float, help="Relative tolerance per element (float outputs).")
@click.option("--rel-l2", type=float,
              help="Largest relative L2 error ||got - eager|| / ||eager|| a float output may have when it misses "
                   "atol/rtol (default: %g for float16, %g for bfloat16; float32 is checked per element only)."
                   % (defaults.REL_L2_FLOAT16, defaults.REL_L2_BFLOAT16))
@click.option("--force", is_flag=True, help="Replace models of the same name.")
@click.option("--model-py-timeout", type=float,
              help="Seconds allowed for importing MODEL_PY and for its get_samples() (default: $%s, else %.0f; "
                   "0: no limit)." % ("AITUNE_MODEL_PY_TIMEOUT_S", defaults.MODEL_PY_TIMEOUT_S))
@click.option("--task", type=click.Choice(TASKS),
              help="For a checkpoint directory: the task to serve (default: from config.json's architecture).")
@_handle_errors
def generate(model_py, out, name, backends, max_batch_size, axes, instances, gpus, device, max_queue_delay_us,
             fallback_format, portable, precision, cuda_graphs, strategy, budget_ms, atol, rtol, rel_l2, force,
             model_py_timeout, task):
    """Generate Triton model directories for MODEL_PY (defines get_model() and get_samples()), or for a
    Hugging Face checkpoint directory (config.json + weights): its model.py is generated."""
    from aitune_triton.api import generate as run
    from aitune_triton.config import NOT_GIVEN
    from aitune_triton.envelope import parse_axis_options

    trt = {k: v for k, v in {"precision": precision, "use_cuda_graphs": cuda_graphs}.items() if v is not None}
    given = {"name": name, "backends": tuple(backends) or None, "max_batch_size": max_batch_size,
             "instances": instances, "gpus": _ints(gpus) if gpus else None, "device": device,
             "max_queue_delay_us": max_queue_delay_us,
             "fallback_format": fallback_format, "portable": portable, "strategy": strategy, "budget_ms": budget_ms,
             "atol": atol, "rtol": rtol, "rel_l2": rel_l2,
             "axis_ranges": parse_axis_options(axes) if axes else None}
    # click gives None for an option left out: that is "not given", never "set it to None"
    overrides = {k: NOT_GIVEN if v is None else v for k, v in given.items()}
    overrides["tensorrt"] = trt
    with stage_progress(console, "generating") as progress:
        result = run(model_py, out, overrides, force=force, progress=progress, model_py_timeout_s=model_py_timeout,
                     task=task)
    if result.selection is not None:
        make_console(stderr=True, width=max(console.width, 140)).print(result.selection.to_table())
    for model in result.models:
        console.print("[green]✓[/] %s (%s, %s): %s" % (model.name, model.backend, model.status, model.detail),
                      soft_wrap=True)  # one line even when not a terminal: a skipped format's cause and log
    for line in result.envelope:
        console.print(line, markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(note, markup=False, soft_wrap=True)
    console.print("wrote %s" % result.repository)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(TASKS), help="The task to serve (default: from the architecture).")
@_handle_errors
def inspect(path, task):
    """Print what generate would build from the checkpoint directory PATH, without generating."""
    from aitune_triton.checkpoint import describe, plan_checkpoint

    for line in describe(plan_checkpoint(path, task)):
        click.echo(line)


@main.command("build-plan")
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--model", help="Only this model (default: every staged TensorRT model).")
@click.option("--force", is_flag=True, help="Replace an existing TensorRT model directory.")
@_handle_errors
def build_plan(repo, model, force):
    """Build staged TensorRT plans in REPO (run inside a TensorRT or Triton container)."""
    from aitune_triton.api import build_plans

    with stage_progress(console, "building TensorRT plans") as progress:
        built = build_plans(repo, model, force=force, progress=progress)
    for m in built:
        console.print("[green]✓[/] %s: %s" % (m.name, m.detail))


@main.command()
@click.argument("repo", type=_Repository())
@click.option("--url",
              help="HTTP endpoint (host:port) of a running Triton to use instead of launching the embedded one.")
@click.option("--grpc-url", help="gRPC endpoint of that server (default: the HTTP port + 1).")
@click.option("--tritonserver", type=click.Path(path_type=Path), help="Launch this tritonserver binary instead.")
@click.option("--backend-directory", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=BACKEND_DIRECTORY_HELP)
@click.option("--model", "models", multiple=True, help="Validate only this model (repeatable).")
@click.option("--perf/--no-perf", default=True, show_default=True, help="Measure with perf_analyzer.")
@click.option("--concurrency", default=defaults.csv(defaults.VALIDATE_CONCURRENCY), show_default=True,
              help="perf_analyzer concurrency: 1,2,4 or 1:8:1.")
@click.option("--shared-memory", type=click.Choice(["none", "system"]), default="none", show_default=True)
@click.option("--perf-request-count", type=int, default=defaults.PERF_REQUEST_COUNT, show_default=True,
              help="Requests per perf_analyzer measurement window.")
@click.option("--perf-stability", type=float, default=defaults.PERF_STABILITY_PCT, show_default=True,
              help="perf_analyzer stability percentage (raise it on noisy machines).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Where report.json, report.md and latency_throughput.png go (default: REPO_validation_report "
                   "next to REPO, so validating one repository never overwrites another's report).")
@click.option("--timeout", "request_timeout_s", type=float, default=defaults.REQUEST_TIMEOUT_S, show_default=True,
              help="Seconds per request.")
@click.option("--startup-timeout", "startup_timeout_s", type=float, default=defaults.STARTUP_TIMEOUT_S,
              show_default=True,
              help="Seconds for the server to start and for each model to load.")
@_handle_errors
def validate(repo, url, grpc_url, tritonserver, backend_directory, models, perf, concurrency, shared_memory,
             perf_request_count, perf_stability, report_dir, request_timeout_s, startup_timeout_s):
    """Serve REPO on a real Triton and check every generated model (exit 0 only if all checks pass)."""
    from aitune_triton.validate.harness import ValidateOptions, default_report_dir, parse_concurrency, \
        validate_repository
    from aitune_triton.validate.report import print_summary

    report_dir = report_dir or default_report_dir(repo)
    options = ValidateOptions(url=url, grpc_url=grpc_url, tritonserver=tritonserver,
                              backend_directory=backend_directory, models=tuple(models), perf=perf,
                              concurrency=parse_concurrency(concurrency), shared_memory=shared_memory,
                              report_dir=report_dir, request_timeout_s=request_timeout_s,
                              startup_timeout_s=startup_timeout_s, perf_request_count=perf_request_count,
                              perf_stability_pct=perf_stability)
    with stage_progress(console, "validating") as progress:
        report = validate_repository(repo, options, progress=progress)
    print_summary(report, make_console(), report_dir=report_dir)
    sys.exit(report.exit_code)


@main.command()
@click.argument("repo", type=_Repository(exists=True))
@click.option("--http-port", type=int, default=defaults.HTTP_PORT, show_default=True)
@click.option("--grpc-port", type=int, default=defaults.GRPC_PORT, show_default=True)
@click.option("--metrics-port", type=int, default=defaults.METRICS_PORT, show_default=True)
@click.option("--host", default=defaults.LOOPBACK, show_default=True,
              help="Address to bind (127.0.0.1 keeps it local).")
@click.option("--tritonserver", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Use this tritonserver binary instead of the bundled one.")
@click.option("--backend-directory", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=BACKEND_DIRECTORY_HELP)
@_handle_errors
@_follow_pointer
def serve(repo, http_port, grpc_port, metrics_port, host, tritonserver, backend_directory):
    """Run the embedded Triton server on REPO in the foreground (Ctrl-C stops it)."""
    import time

    from aitune_triton.errors import ServerError
    from aitune_triton.integrity import verify_models
    from aitune_triton.triton.server import ServerOptions, TritonServer, describe_exit, served_model_names

    verify_models(repo, served_model_names(repo))  # before the server loads (deserialises) anything
    # by name, not "*": Triton would also try to load hidden dirs (a generate's staging dir)
    options = ServerOptions(tritonserver=tritonserver, backend_directory=backend_directory, host=host,
                            http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, model_control_mode="explicit",
                            load_models=served_model_names(repo))
    server = TritonServer(repo, options, notify=lambda line: console.print(line, markup=False, soft_wrap=True))
    try:
        with console.status("starting tritonserver on %s" % repo):
            server.start()
        console.print("Triton is ready: HTTP %s, gRPC %s, metrics %s (log: %s)"
                      % (server.http_url, server.grpc_url, server.metrics_url, server.log_path))
        console.print("try: curl -s %s/v2/models/<name>/config   or   tritonclient.http.InferenceServerClient(%r)"
                      % ("http://" + server.http_url, server.http_url), markup=False)
        console.print("Ctrl-C to stop")
        while server.returncode is None:
            time.sleep(0.5)
            for line in server.restart_dead_stubs():  # a dead stub: its model reloaded, one line
                console.print(line, markup=False, soft_wrap=True)
        code = server.stop()
        raise ServerError("tritonserver %s while serving %s" % (describe_exit(code), repo), log_path=server.log_path,
                          details="last lines of the server log:\n%s" % server.log_tail(30))
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
    finally:
        server.stop()


def _check_model_files(repo: Path, model: str, report_dir: Path | None = None) -> None:
    """The integrity check and a writable model dir before a server starts, else one line."""
    from aitune_triton.tune.search import check_tunable

    check_tunable(Path(repo), model, report_dir)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, got %r" % text) from None


@main.command()
@click.argument("repo", type=_Repository(exists=True))
@click.option("--model", required=True, help="Model to tune.")
@click.option("--objective", type=click.Choice(["max-throughput", "min-latency"]), default="max-throughput",
              show_default=True)
@click.option("--budget-ms", type=float, help="p99 budget for max-throughput.")
@click.option("--min-throughput", type=float, help="Throughput floor (infer/s) for min-latency.")
@click.option("--instances", default=defaults.csv(defaults.TUNE_INSTANCES), show_default=True,
              help="Instance counts to try.")
@click.option("--delays-us", default=defaults.csv(defaults.TUNE_DELAYS_US), show_default=True,
              help="Queue delays to try.")
@click.option("--concurrency", default=defaults.csv(defaults.TUNE_CONCURRENCY), show_default=True,
              help="Client concurrency to try.")
@click.option("--brute", is_flag=True, help="Measure the whole grid instead of the quick search.")
@click.option("--transports", default="auto", show_default=True,
              help="Client transports to search (perf_analyzer --shared-memory): comma-separated none,system,cuda; "
                   "auto: all three when the model's instances are on visible GPUs, else none.")
@click.option("--visible-gpus", default="auto", show_default=True, metavar="auto|N",
              help="GPUs the server sees (instance counts are then per GPU); auto: nvidia-smi -L narrowed by "
                   "CUDA_VISIBLE_DEVICES; 0 searches as on CPU.")
@click.option("--perf-stability", type=float, default=defaults.TUNE_PERF_STABILITY_PCT, show_default=True,
              help="perf_analyzer --stability-percentage for each point; a looser band settles on a busy machine "
                   "(each point's window spread is reported either way).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Where the tune report goes.")
@click.option("--export-model-analyzer", "ma_config", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a Model Analyzer `profile` config (YAML) for the same grid, objective and "
                   "perf_analyzer settings.")
@click.option("--tritonserver", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Use this tritonserver binary instead of the bundled one.")
@click.option("--backend-directory", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=BACKEND_DIRECTORY_HELP)
@_handle_errors
@_tune_through_object_storage
def tune(repo, model, objective, budget_ms, min_throughput, instances, delays_us, concurrency, brute, transports,
         visible_gpus, perf_stability, report_dir, ma_config, tritonserver, backend_directory):
    """Search instances / queue delay for MODEL on a live server and write the best config back."""
    from aitune_triton.triton.server import ServerOptions, TritonServer
    from aitune_triton.tune.search import TuneOptions, tune_model, tune_perf_options
    from aitune_triton.tune.space import parse_transports, parse_visible_gpus

    options = TuneOptions(objective=objective, budget_ms=budget_ms, min_throughput=min_throughput,
                          instances=_ints(instances), delays_us=_ints(delays_us), concurrency=_ints(concurrency),
                          brute=brute, report_dir=report_dir, export_model_analyzer=ma_config,
                          transports=parse_transports(transports), visible_gpus=parse_visible_gpus(visible_gpus),
                          perf=tune_perf_options(perf_stability))
    _check_model_files(repo, model, report_dir)  # before the server loads (deserialises) anything
    server = TritonServer(repo, ServerOptions(tritonserver=tritonserver, backend_directory=backend_directory,
                                              load_models=(model,)))
    try:
        with console.status("starting tritonserver"):
            server.start()
        with console.status("tuning %s" % model):
            result = tune_model(repo, model, server, options)
    finally:
        server.stop()
    chosen = result.chosen
    console.print("measured %d of %d grid points (%s search) and re-measured %d finalists interleaved (%d runs) "
                  "in %.0f s; %s" % (result.measured, result.grid_size, result.mode, len(result.finalists),
                                     result.remeasured, result.elapsed_s, result.reason), markup=False, soft_wrap=True)
    if chosen is not None:
        console.print("[green]chosen:[/] %s @ concurrency %d: median %.1f infer/s (%.1f-%.1f over the rounds), "
                      "p99 %.2f ms, client transport %s" % (
                          chosen.point.variant.label(), chosen.point.concurrency, chosen.throughput, chosen.lo,
                          chosen.hi, chosen.p99_ms, chosen.point.transport), soft_wrap=True)
        if result.improvement is not None:
            console.print("%.2fx over the current config in the same rounds" % result.improvement, markup=False)
    for path in result.reports.values():
        console.print("wrote %s" % path, markup=False)
    sys.exit(0 if chosen is not None else 1)


@main.command("pack-env")
@click.argument("repo", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--model", required=True, help="The Python-backend model to pack an environment for.")
@click.option("--python", "python_version", metavar="X.Y",
              help="The serving stub's Python; must be this interpreter's (the default).")
@_handle_errors
def pack_env(repo, model, python_version):
    """Pack torch and what MODEL imports into REPO/MODEL/python_env.tar.gz (Triton's EXECUTION_ENV_PATH)."""
    from aitune_triton.triton.pack_env import pack_env as pack

    console.print("packing the Python environment of %s (a few hundred MB; a minute or two)" % model, markup=False)
    packed = pack(repo, model, python_version)
    console.print("[green]✓[/] %s: %.0f MB in %.0f s (%s); config.pbtxt points EXECUTION_ENV_PATH at it"
                  % (packed.path, packed.size_bytes / 1e6, packed.seconds, ", ".join(packed.distributions)),
                  soft_wrap=True)


@main.command()
@_handle_errors
def doctor():
    """Show which components are available (torch, GPU, TensorRT, tritonserver, perf_analyzer)."""
    from aitune_triton import doctor as doc

    rows = doc.collect()
    doc.render(rows, make_console())
    sys.exit(doc.exit_code(rows))


# ---------------------------------------------------------------- scale-out: push, plan, deploy


@main.command()
@click.argument("repo", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("destination", metavar="s3://[host:port/]bucket/prefix")
@_handle_errors
def push(repo, destination):
    """Upload REPO to object storage atomically: a new version prefix, then the pointer switches.

    Credentials come only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_DEFAULT_REGION).
    """
    from aitune_triton.deploy.storage import S3Location, push as run

    base = S3Location.parse(destination)
    with console.status("pushing %s" % repo) as status:
        result = run(repo, base, progress=lambda m: status.update(m))
    console.print("[green]✓[/] pushed %d files (%d bytes) as version %s%s"
                  % (result.files, result.bytes, result.version,
                     " (previous: %s)" % result.previous if result.previous else ""))
    console.print("pointer: %s" % result.pointer.url, markup=False, soft_wrap=True)
    console.print("serve it: tritonserver --model-repository=%s" % result.repository.url, markup=False,
                  soft_wrap=True)
    click.echo(result.repository.url)


@main.command()
@click.argument("repo", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--model", required=True, help="Model to plan for.")
@click.option("--target-rps", type=float, required=True, help="Requests per second to serve (batch-1 requests).")
@click.option("--p99-ms", type=float, required=True, help="p99 latency budget in milliseconds.")
@click.option("--headroom", type=float, default=defaults.PLAN_HEADROOM, show_default=True,
              help="Fraction of each replica's measured capacity kept free.")
@click.option("--gpus-per-replica", type=int, help="GPUs per replica (default: 1 if measured on GPU, else 0).")
@click.option("--min-replicas", type=int, default=defaults.PLAN_MIN_REPLICAS, show_default=True)
@click.option("--report", type=click.Path(path_type=Path, exists=True),
              help="validate report.json / tune_report.json (default: the newest of the model's tune report and "
                   "REPO's validation report).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the plan as JSON (for deploy k8s --plan).")
@_handle_errors
def plan(repo, model, target_rps, p99_ms, headroom, gpus_per_replica, min_replicas, report, out):
    """Replicas and GPUs to serve --target-rps within --p99-ms, from the measured curve of MODEL."""
    from aitune_triton.deploy import capacity
    from aitune_triton.output_paths import check_output_file

    request = capacity.PlanRequest(target_rps, p99_ms, headroom, gpus_per_replica, min_replicas)
    if out:  # before the plan is printed, so a bad --out is the only line
        check_output_file(out, "the plan", create_parents=False)  # save_plan makes no directory
    source = capacity.find_report(repo, model, report)
    result = capacity.plan(capacity.read_curve(source, model, Path(repo) / model), request)
    click.echo(result.to_text())
    if out:
        capacity.save_plan(out, result)
        console.print("wrote %s" % out, markup=False)


@main.group()
def deploy():
    """Deployment manifests for a repository."""


@deploy.command("k8s")
@click.argument("repo")
@click.option("--replicas", default="1", show_default=True, help="Replica count, or 'auto' to take it from --plan.")
@click.option("--plan", "plan_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A plan written by `aitune-triton plan --out` (replicas, GPUs, queue-time target).")
@click.option("--gpus-per-replica", type=int, help="GPUs per replica (default: the plan's, else 1).")
@click.option("--max-replicas", type=int, help="Autoscaling ceiling (default: 2 x replicas).")
@click.option("--kserve", is_flag=True, help="A KServe InferenceService instead of Deployment + Service + HPA.")
@click.option("--pvc", help="PersistentVolumeClaim holding REPO (a local REPO is then only read for its manifests).")
@click.option("--secret", default=defaults.K8S_SECRET, show_default=True,
              help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for an s3:// repository (you create it).")
@click.option("--name", help="Kubernetes name (default: the first model's name).")
@click.option("--image", help="Triton image (default: matched to the plans' TensorRT / the validated Triton release).")
@click.option("--cpu", default=defaults.K8S_CPU, show_default=True)
@click.option("--memory", default=defaults.K8S_MEMORY, show_default=True)
@click.option("--shm-size", default=defaults.K8S_SHM_SIZE, show_default=True, help="In-memory /dev/shm size.")
@click.option("--queue-target-us", type=int, help="HPA target: average queue time per request (default: plan p99/10, "
                                                   "else %d)." % defaults.K8S_QUEUE_TARGET_US)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the YAML files.")
@_handle_errors
def deploy_k8s(repo, replicas, plan_file, gpus_per_replica, max_replicas, kserve, pvc, secret, name, image, cpu,
               memory, shm_size, queue_target_us, out):
    """Kubernetes manifests serving REPO (an s3:// URL pushed by `push`, or a local REPO with --pvc),
    each checked against the Kubernetes OpenAPI schema before it is written."""
    from aitune_triton.deploy import k8s
    from aitune_triton.deploy.storage import is_s3_url, open_repository
    from aitune_triton.errors import UserError
    from aitune_triton.triton.server import server_version

    planned = k8s.plan_values(plan_file) if plan_file else {}
    if replicas == "auto":
        if not planned:
            raise UserError("--replicas auto takes the count from --plan; pass --plan PLAN.json (aitune-triton plan "
                            "--out) or a number")
        count = planned["replicas"]
    elif replicas.isdigit():
        count = int(replicas)
    else:
        raise UserError("--replicas must be a number or 'auto', got %r" % replicas)
    if not is_s3_url(repo) and not pvc:
        raise UserError("the replicas need the repository in object storage or on a volume: push it (aitune-triton "
                        "push %s s3://bucket/prefix) and pass the s3:// URL, or pass --pvc CLAIM" % repo)
    if is_s3_url(repo) and pvc:
        raise UserError("give either an s3:// repository or --pvc, not both")
    if not is_s3_url(repo) and not Path(repo).is_dir():
        raise UserError("model repository %s does not exist (or is not a directory)" % repo)
    with open_repository(repo) as view:
        manifests = k8s.manifests_of(view.local)
        chosen_image, reason = (image, "given with --image") if image else k8s.choose_image(manifests, server_version())
        spec = k8s.DeploySpec(
            name=name or manifests[0]["name"].replace("_", "-").lower(), repository=str(repo),
            server_repository=str(view.server) if view.remote else "/models", image=chosen_image,
            image_reason=reason, replicas=count,
            gpus=gpus_per_replica if gpus_per_replica is not None else planned.get("gpus", 1),
            max_replicas=max_replicas, pvc=pvc, secret=secret, cpu=cpu, memory=memory, shm_size=shm_size,
            queue_target_us=queue_target_us or planned.get("queue_target_us", defaults.K8S_QUEUE_TARGET_US),
            kserve=kserve)
    files = k8s.render(spec)
    checked = k8s.check(files)
    for path in k8s.write(files, out):
        console.print("wrote %s" % path, markup=False)
    console.print("[green]✓[/] schema-checked against Kubernetes %s: %s" % (k8s.K8S_VERSION, "; ".join(checked)))


if __name__ == "__main__":
    main()
