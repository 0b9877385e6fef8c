"""``validate``, ``serve`` and ``tune``: the commands that use a server; parse, call the API, print."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.text import Text

from aitune_triton import defaults
from aitune_triton.cli.output import (BACKEND_DIRECTORY_HELP, console, handle_errors, ints, labelled, server_options,
                                      startup_timeout_option)
from aitune_triton.console import make_console
from aitune_triton.progress import plain_updates, stage_progress


@click.command()
@click.argument("repo")
@server_options
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
@handle_errors
def validate(repo, url, grpc_url, tritonserver, backend_directory, startup_timeout_s, models, perf, concurrency,
             shared_memory, perf_request_count, perf_stability, report_dir, request_timeout_s):
    """Serve REPO (a folder or an s3:// URL) on a real Triton and check every generated model (exit 0 only
    if all checks pass).

    \f
    The checks: the files' integrity (hashes, no symlinks, configs that name only their own files), load,
    config/metadata, reference outputs over HTTP and gRPC, the envelope's corner shapes and one shape just outside
    each bound (refused with the runtime's message), bad requests, dynamic batching, and perf_analyzer latency and
    throughput per concurrency. The report (JSON, Markdown, a plot, the server log) goes to REPO_validation_report
    unless --report names another folder."""
    from aitune_triton.commands import validate as run
    from aitune_triton.validate.options import ValidateOptions, parse_concurrency
    from aitune_triton.validate.report import print_summary

    options = ValidateOptions(url=url, grpc_url=grpc_url, tritonserver=tritonserver,
                              backend_directory=backend_directory, models=tuple(models), perf=perf,
                              concurrency=parse_concurrency(concurrency), shared_memory=shared_memory,
                              report_dir=report_dir, request_timeout_s=request_timeout_s,
                              startup_timeout_s=startup_timeout_s, perf_request_count=perf_request_count,
                              perf_stability_pct=perf_stability)
    with stage_progress(console, "validating") as progress:
        report = run(repo, options, progress=progress)
    print_summary(report, make_console(), report_dir=Path(report.options["report_dir"]))
    sys.exit(report.exit_code)


@click.command()
@click.argument("repo")
@click.option("--http-port", type=int, default=defaults.HTTP_PORT, show_default=True)
@click.option("--grpc-port", type=int, default=defaults.GRPC_PORT, show_default=True)
@click.option("--metrics-port", type=int, default=defaults.METRICS_PORT, show_default=True)
@click.option("--host", default=defaults.LOOPBACK, show_default=True,
              help="Address to bind (127.0.0.1 keeps it local).")
@click.option("--tritonserver", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Use this tritonserver binary instead of the bundled one.")
@click.option("--backend-directory", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=BACKEND_DIRECTORY_HELP)
@startup_timeout_option
@handle_errors
def serve(repo, http_port, grpc_port, metrics_port, host, tritonserver, backend_directory, startup_timeout_s):
    """Run the embedded Triton server on REPO (a folder, or an s3:// URL written by push) in the foreground
    (Ctrl-C stops it).

    \f
    The models' files are checked first, as validate does. --tritonserver runs another binary (e.g. the NGC
    container's /opt/tritonserver/bin/tritonserver); its backends folder is PREFIX/backends beside PREFIX/bin unless
    --backend-directory names it. A Python stub that dies is reported in one line and its model reloaded."""
    from aitune_triton.commands import ServeOptions, serve as run

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           tritonserver=tritonserver, backend_directory=backend_directory,
                           startup_timeout_s=startup_timeout_s)
    try:
        with console.status(Text("starting tritonserver on %s" % repo)) as status, \
                run(repo, options, progress=plain_updates(status),
                    notify=lambda line: console.print(line, markup=False, soft_wrap=True)) as running:
            status.stop()
            urls = running.urls
            if urls.version:
                console.print("%s: version %s" % (repo, urls.version), markup=False, soft_wrap=True)
            console.print("Triton is ready: HTTP %s, gRPC %s, metrics %s (log: %s)"
                          % (urls.http, urls.grpc, urls.metrics, urls.log_path), markup=False, soft_wrap=True)
            console.print("try: curl -s %s/v2/models/<name>/config   or   tritonclient.http.InferenceServerClient(%r)"
                          % ("http://" + urls.http, urls.http), markup=False)
            console.print("Ctrl-C to stop")
            running.wait()
    except KeyboardInterrupt as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # a second signal while the server drained
            raise
        console.print("stopped tritonserver")


@click.command()
@click.argument("repo")
@click.option("--model", required=True, help="Model to tune.")
@server_options
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
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Where the tune report goes (default: MODEL/tuning in REPO; for an s3:// REPO, pushed with the "
                   "tuned version and copied to ./NAME_tune_report/MODEL).")
@click.option("--export-model-analyzer", "ma_config", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a Model Analyzer `profile` config (YAML) for the same grid, objective and "
                   "perf_analyzer settings.")
@handle_errors
def tune(repo, model, url, grpc_url, tritonserver, backend_directory, startup_timeout_s, objective, budget_ms,
         min_throughput, instances, delays_us, concurrency, brute, transports, visible_gpus, perf_stability, report_dir,
         ma_config):
    """Search instances / queue delay for MODEL on a live server and write the best config back (an s3://
    REPO written by push: tuned locally and pushed back as a new version).

    \f
    Where the instance group is on GPU and the server sees GPUs, instance counts are per GPU and the client
    transport (perf_analyzer shared memory none/system/cuda) is searched too, as a measurement dimension. Every point
    is the median of perf_analyzer's windows with their min-max as its spread, and a point beats another only when
    the spreads do not overlap. The quick search measures 10 % of the grid (at least 6 points); --brute measures it
    all (recommended on small grids). The best configs and the current one are re-measured interleaved, and the
    current config stays unless beaten beyond both spreads. Dynamic batching is never switched on for a model whose
    rows are not independent. The choice is written back atomically (config.pbtxt.bak and the manifest history keep
    the old one) with a report and a plot."""
    from aitune_triton.commands import tune as run
    from aitune_triton.triton.session import ServerTarget
    from aitune_triton.tune.options import TuneOptions, parse_transports, parse_visible_gpus, tune_perf_options

    options = TuneOptions(objective=objective, budget_ms=budget_ms, min_throughput=min_throughput,
                          instances=ints(instances), delays_us=ints(delays_us), concurrency=ints(concurrency),
                          brute=brute, report_dir=report_dir, export_model_analyzer=ma_config,
                          transports=parse_transports(transports), visible_gpus=parse_visible_gpus(visible_gpus),
                          perf=tune_perf_options(perf_stability))
    with console.status(Text("tuning %s" % model)) as status:
        target = ServerTarget(url, grpc_url, tritonserver, startup_timeout_s, backend_directory)
        outcome = run(repo, model, options, target, progress=plain_updates(status))
    result, chosen = outcome.result, outcome.result.chosen
    console.print("measured %d of %d grid points (%s search) and re-measured %d finalists interleaved (%d runs) "
                  "in %.0f s; %s" % (result.measured, result.grid_size, result.mode, len(result.finalists),
                                     result.remeasured, result.elapsed_s, result.reason), markup=False, soft_wrap=True)
    if chosen is not None:
        console.print(labelled("chosen:", "green", "%s @ concurrency %d: median %.1f infer/s (%.1f-%.1f over the "
                               "rounds), p99 %.2f ms, client transport %s" % (
                                   chosen.point.variant.label(), chosen.point.concurrency, chosen.throughput,
                                   chosen.lo, chosen.hi, chosen.p99_ms, chosen.point.transport)), soft_wrap=True)
        if result.improvement is not None:
            console.print("%.2fx over the current config in the same rounds" % result.improvement, markup=False)
    for path in result.reports.values():
        console.print("wrote %s" % path, markup=False)
    if outcome.pushed is not None:
        console.print("pushed the tuned repository as version %s (previous: %s); the tuning report is in it"
                      % (outcome.pushed.version, outcome.pushed.previous), markup=False, soft_wrap=True)
        click.echo(outcome.pushed.repository.url)
    sys.exit(outcome.exit_code)
