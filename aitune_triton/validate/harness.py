"""``validate_repository``: serve a generated repository on a real Triton and check every model.

By default the embedded tritonserver is launched on the repository in explicit model-control
mode and the models are loaded one at a time (load, check, measure, unload), so a model that
fails to load is reported with Triton's own message and the others still run, and only one
torch-importing stub is resident at a time. With ``url`` an already running server is used as
it is: nothing is loaded, unloaded or stopped there.

A server that dies mid-run ends the run: the report says during which check, quotes the end of
the server log, and the launched server's process group is reaped before returning.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from aitune_triton.errors import AituneError
from aitune_triton.triton.model_check import verify_model
from aitune_triton.output_paths import check_outside_repository
from aitune_triton.triton import tools
from aitune_triton.tensorrt.stamp import refusal_here
from aitune_triton.errors import PerfError
from aitune_triton.triton.perf import PerfOptions, PerfResult, PerfRow, run_perf
from aitune_triton.errors import ServerError
from aitune_triton.triton.launch import ServerOptions
from aitune_triton.triton.server import TritonServer
from aitune_triton.triton.server_api import Server
from aitune_triton.triton.session import server_for, stop_if_launched
from aitune_triton.validate.checks import raw_pipeline, registry
from aitune_triton.validate.checks.batching import batch_histogram, model_stats
from aitune_triton.validate.checks.registry import Check, CheckContext
from aitune_triton.validate.checks.target import Endpoint, ModelTarget, Session
from aitune_triton.validate.checks.wire import short
from aitune_triton.validate.options import ValidateOptions
from aitune_triton.validate.perf_inputs import perf_input_options
from aitune_triton.validate.plan import Planned, plan_models, server_backends
from aitune_triton.validate.report import ModelReport, ServerInfo, ValidationReport
from aitune_triton.validate.result import CheckResult, CheckStatus
from aitune_triton.waiting import poll


log = logging.getLogger(__name__)
Progress = Callable[[str], None]

SERVER_LOG = "tritonserver.log"
# the load error of a model whose backend the server lacks (2.51: "unable to find backend library
# for backend 'onnxruntime'"; other releases: "unable to find 'libtriton_x.so' or 'x/model.py' ...")
_NO_BACKEND = re.compile(r"unable to find (?:backend library|'?libtriton_)", re.I)
# what a Python-backend model raised in initialize() (the generated runtime: one line with the fix)
_MODEL_REASON = re.compile(r"TritonModelException: ([^\n]+)")


class _Run:
    """State of one validation run: the server, the reports so far, whether the server died."""

    def __init__(self, repo: Path, options: ValidateOptions, progress: Progress):
        self.repo = repo
        self.options = options
        self.progress = progress
        self._server: Server | None = None
        self.dead: str | None = None

    def say(self, msg: str) -> None:
        log.info("%s", msg)
        self.progress(msg)

    @property
    def server(self) -> Server:
        if self._server is None:
            raise ServerError("no server has been set up for this run")
        return self._server

    # ------------------------------------------------------------ server

    def start(self, planned: list[Planned]) -> ServerInfo:
        """Start (or attach to) the server; a launched one starts empty and is told which models
        will be loaded into it (``planned``), so that its preflight refuses what it cannot serve."""
        opts = self.options
        target = opts.server_target()
        log_path = None
        if opts.report_dir and not target.attached:
            Path(opts.report_dir).mkdir(parents=True, exist_ok=True)
            log_path = Path(opts.report_dir) / SERVER_LOG
            log_path.unlink(missing_ok=True)
        later = ServerOptions(loaded_later=tuple(p.name for p in planned if p.model_dir))
        server = self._server = server_for(opts.server_repository or self.repo, target, later, log_path=log_path)
        self.say("%s %s" % ("attaching to" if target.attached else "starting", server.describe()))
        server.start()
        if isinstance(server, TritonServer):
            return ServerInfo("embedded", server.http_url, server.grpc_url, server.version(),
                              str(server.command[0]) if server.command else None, server_backends(opts),
                              str(server.log_path))
        return ServerInfo("url", server.http_url, server.grpc_url, server.version())

    def stop(self) -> None:
        """Stop the server if the run started it; a server someone else runs is left as it is."""
        if self._server is not None and self._server.owns_process:
            self.say("stopping tritonserver")
        stop_if_launched(self._server)

    def unusable(self, planned: list[Planned], exc: Exception) -> tuple[ServerInfo, list[ModelReport]]:
        """The server never came up: every model that needed it fails; skips stay skips. A launched
        server's address is not reported (it may never have had ports), an attached one's is."""
        server = self._server
        error = "the server could not be used: %s" % _with_details(exc)
        info = ServerInfo("url" if self.options.url else "embedded",
                          server.http_url if server is not None and not server.owns_process else None,
                          log_path=str(server.log_path) if server is not None and server.log_path else None,
                          error=error)
        self.say(error.splitlines()[0])
        reports = [self.validate(p, None) if p.model_dir is None else
                   ModelReport(p.name, p.backend, (CheckResult("server", CheckStatus.FAIL, "not validated: the "
                                                               "server could not be used"),)) for p in planned]
        return info, reports

    def check_alive(self, during: str) -> bool:
        """False (and ``self.dead`` set, with the log tail) once the server is gone."""
        if self.dead:
            return False
        server = self.server
        code = server.returncode
        if code is None:
            if poll(server.is_live, 3.0, 0.5, backoff=2.0, attempts=3):
                return True
            code = server.returncode
        tail = server.log_tail(30)
        self.dead = "tritonserver %s during %s%s%s" % (
            "exited with code %s" % code if code is not None else "stopped answering", during,
            "; last lines of %s:\n%s" % (server.log_path, tail) if tail else "",
            "" if server.owns_process else " (%s)" % server.http_url)
        self.say(self.dead.splitlines()[0])
        return False

    # ------------------------------------------------------------ one model

    def validate(self, item: Planned, backends: tuple[str, ...] | None, last: bool = False) -> ModelReport:
        """Load, check, measure and unload one model. ``last``: the final model of the run, which
        also gets the final checks (they may crash some Triton releases, so nothing follows them)."""
        if item.failure:
            return ModelReport(item.name, item.backend, (item.failure,))
        if item.skipped or item.model_dir is None:
            return ModelReport(item.name, item.backend, skipped=item.skipped)
        try:  # before anything reads or loads them: a replaced artifact can run code when deserialised
            verify_model(item.model_dir, self.repo)
        except AituneError as exc:
            return ModelReport(item.name, item.backend, (CheckResult("integrity", CheckStatus.FAIL, str(exc)),))
        try:
            target = ModelTarget.load(item.model_dir)
        except (AituneError, OSError, ValueError, KeyError) as exc:
            return ModelReport(item.name, item.backend, (CheckResult("model_files", CheckStatus.FAIL,
                                                                     short(exc, 400)),))
        # an ensemble is scheduled by the server itself, not by a backend library
        if backends is not None and item.backend not in backends and item.backend != "ensemble":
            return ModelReport(item.name, item.backend, skipped=(
                "the %s server has no %r backend (it has: %s); validate it on a Triton that has one with --url"
                % ("embedded" if self.options.tritonserver is None else "launched", item.backend,
                   ", ".join(backends) or "none")))
        checks: list[CheckResult] = []
        server = self.server
        trt = target.manifest.tensorrt
        if server.owns_process and item.backend == "tensorrt" and trt is not None:
            # the launched server runs here: a plan stamped for another TensorRT or GPU is refused up front
            refusal = refusal_here(trt.stamp, item.model_dir / "1" / "model.plan",
                                   "aitune-triton build-plan %s --force" % self.repo)
            if refusal:
                return ModelReport(item.name, item.backend, (CheckResult("version_stamp", CheckStatus.FAIL,
                                                                         refusal),))
        if server.owns_process:  # a server someone else runs serves what it has loaded
            load = self._load(item)
            checks.append(load)
            if load.status == CheckStatus.FAIL:
                return ModelReport(item.name, item.backend, tuple(checks))
        rows: tuple[PerfRow, ...] = ()
        unstable: tuple[int, ...] = ()
        hist: dict[int, int] = {}
        endpoint = Endpoint(server.http_url, server.grpc_url, self.options.request_timeout_s)
        with Session(endpoint) as session:
            ctx = CheckContext(target, session, batching_in_flight=self.options.batching_in_flight)
            results, ready = self._checks(ctx, registry.registered(final=False, target=target.kind))
            checks += results
            if self.options.perf and ready and not self.dead:
                before = raw_pipeline.step_totals(session, target) if target.kind == "pipeline" else None
                perf_check, rows, unstable = self.perf(target)
                checks.append(perf_check)
                if before is not None and perf_check.status == CheckStatus.PASS:  # the time in pre / model / post
                    checks.append(raw_pipeline.step_times_result(before, raw_pipeline.step_totals(session, target)))
                if perf_check.status == CheckStatus.FAIL:
                    self.check_alive("perf_analyzer on %s" % item.name)
            if ready and not self.dead:
                try:
                    hist = batch_histogram(model_stats(session, item.name))
                except Exception as exc:  # noqa: BLE001 - statistics are informative only
                    log.warning("no statistics for %s: %s", item.name, short(exc))
            if last and ready and not self.dead:
                checks += [CheckResult(c.name, CheckStatus.SKIP, _not_for(target))
                           for c in registry.registered(final=True) if target.kind not in c.targets]
                checks += self._checks(ctx, registry.registered(final=True, target=target.kind))[0]
        if self.dead:
            checks.append(CheckResult("server", CheckStatus.FAIL, self.dead))
        elif checks and checks[-1].status == CheckStatus.WARN:
            self.say(checks[-1].detail.split(":")[0])  # the server crashed: nothing to unload
        elif server.owns_process:
            try:
                server.unload_model(item.name, timeout_s=self.options.startup_timeout_s)
            except ServerError as exc:
                log.warning("unloading %s failed: %s", item.name, exc)
        return ModelReport(item.name, item.backend, tuple(checks), rows, unstable, hist)

    def _load(self, item: Planned) -> CheckResult:
        """The load as a check. A backend the server lacks fails it (the model cannot be served
        there), with that said first."""
        t0 = time.monotonic()
        self.say("%s: loading" % item.name)
        try:
            self.server.load_model(item.name, timeout_s=self.options.startup_timeout_s)
        except ServerError as exc:
            message = _with_details(exc)
            if _NO_BACKEND.search(message):
                return CheckResult("load", CheckStatus.FAIL, "the server has no backend for this model's config: %s"
                                   % message, time.monotonic() - t0)
            self.check_alive("the load of %s" % item.name)
            own = _MODEL_REASON.search(message)
            if own:  # the model's own one line first (the summary shows a detail's first line), Triton's below
                message = "%s\n%s" % (own.group(1), message)
            return CheckResult("load", CheckStatus.FAIL, message, time.monotonic() - t0)
        return CheckResult("load", CheckStatus.PASS, "loaded in %.1f s" % (time.monotonic() - t0),
                           time.monotonic() - t0)

    def _checks(self, ctx: CheckContext, checks: tuple[Check, ...]) -> tuple[list[CheckResult], bool]:
        """``checks`` in order, and whether every gate among them passed. After a failed gate the
        rest are skipped; after a death none run; a check needing a server the run started is
        skipped (with its reason) on one it did not."""
        results: list[CheckResult] = []
        ready = True
        for check in checks:
            if self.dead:
                break
            if not ready:
                results.append(CheckResult(check.name, CheckStatus.SKIP, "model not ready"))
                continue
            if check.needs_own_server and not self.server.owns_process:
                results.append(CheckResult(check.name, CheckStatus.SKIP, check.why))
                continue
            self.say("%s: %s" % (ctx.target.name, check.name.replace("_", " ")))
            result = registry.run_check(check, ctx)
            if check.gate and result.status == CheckStatus.FAIL:
                ready = False
                result = dataclasses.replace(result, detail=result.detail + self._index_reason(ctx.target.name))
            results.append(result)
            if result.status == CheckStatus.FAIL and not self.check_alive("check %r of %s"
                                                                          % (check.name, ctx.target.name)):
                break
        return results, ready and not self.dead and bool(results)

    def _index_reason(self, name: str) -> str:
        try:
            entry = next((m for m in self.server.repository_index() if m.get("name") == name), None)
        except (ServerError, ValueError):
            return ""
        if entry is None:
            return " (the server's repository has no model %r)" % name
        if not entry.get("state"):
            return " (state: never loaded; load it on that server first)"
        return " (state %s%s)" % (entry["state"], ": %s" % entry["reason"] if entry.get("reason") else "")

    def perf(self, target: ModelTarget) -> tuple[CheckResult, tuple[PerfRow, ...], tuple[int, ...]]:
        t0 = time.monotonic()
        opts = self.options
        if not self.server.grpc_url:
            return CheckResult("perf", CheckStatus.SKIP, "no gRPC endpoint"), (), ()
        if tools.find_perf_analyzer() is None:
            why = "perf_analyzer not found (python -m aitune_triton.triton.tools install)"
            return CheckResult("perf", CheckStatus.SKIP, why), (), ()
        with tempfile.TemporaryDirectory(prefix="aitune-perf-") as tmp:
            workdir = Path(opts.report_dir) / "perf" if opts.report_dir else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            result = PerfResult(target.name, ())
            try:
                perf_opts = perf_options(target, opts, workdir)
                for level in opts.concurrency:  # one progress line (with its duration) per point
                    self.say("%s: perf_analyzer at concurrency %d" % (target.name, level))
                    point = run_perf(target.name, self.server.grpc_url,
                                     dataclasses.replace(perf_opts, concurrency=(level,)), workdir=workdir)
                    result = _merged(result, point)
            except PerfError as exc:
                rows = result.rows + (exc.partial.rows if isinstance(exc.partial, PerfResult) else ())
                return CheckResult("perf", CheckStatus.FAIL, str(exc), time.monotonic() - t0), rows, ()
            except (OSError, ValueError) as exc:
                return (CheckResult("perf", CheckStatus.FAIL, "%s: %s" % (type(exc).__name__, exc),
                                    time.monotonic() - t0), (), ())
        unstable = " (no stable measurement at concurrency %s)" % ", ".join(map(str, result.unstable)) \
            if result.unstable else ""
        best = result.best()
        if best is None:
            return CheckResult("perf", CheckStatus.SKIP, "perf_analyzer measured nothing%s; a busy machine? retry with "
                               "a larger request count or stability percentage\n%s"
                               % (unstable, result.stdout_tail[-1500:]), time.monotonic() - t0), (), result.unstable
        detail = "%d point(s), best %.1f infer/s at concurrency %d (p99 %.2f ms)%s" % (
            len(result.rows), best.throughput, best.concurrency, best.p99_ms, unstable)
        return CheckResult("perf", CheckStatus.PASS, detail, time.monotonic() - t0), result.rows, result.unstable


def final_model(planned: list[Planned]) -> Planned | None:
    """The model the final checks run on, which the run therefore validates last: the last planned
    one that is served as a model (the final checks send a model's own tensors; a raw-data pipeline,
    backend ``ensemble``, has none of them), else the last one validated at all, where they are
    reported as skipped rather than silently never run."""
    served = [p for p in planned if p.model_dir]
    return next((p for p in reversed(served) if p.backend != "ensemble"), served[-1] if served else None)


def _not_for(target: ModelTarget) -> str:
    """Why a final check does not run on ``target``: the run validates only raw-data pipelines
    (``--model x_pipeline``), whose requests are raw bytes, not a served model's tensors."""
    model = target.manifest.pipeline.get("model")
    return "applies to a served model, not a raw-data pipeline; %s to have it checked" % (
        "add --model %s" % model if model else "validate a served model in the same run")


def _with_details(exc: Exception) -> str:
    """An error's message with its details (a launched server's log excerpt) below, as the report shows it."""
    details = exc.details if isinstance(exc, AituneError) else None
    return "%s\n%s" % (exc, details) if details else str(exc)


def _merged(a: PerfResult, b: PerfResult) -> PerfResult:
    return PerfResult(a.model, a.rows + b.rows, a.unstable + b.unstable, "\n".join(filter(None, (a.stdout_tail,
                      b.stdout_tail))), a.csv_paths + b.csv_paths)


def perf_options(target: ModelTarget, options: ValidateOptions, workdir: Path) -> PerfOptions:
    """perf_analyzer over gRPC with the requests ``perf_input_options`` builds (shared with tune)."""
    data, shapes = perf_input_options(target, workdir)
    return PerfOptions(concurrency=options.concurrency, protocol="grpc", shared_memory=options.shared_memory,
                       measurement_request_count=options.perf_request_count,
                       stability_percentage=options.perf_stability_pct, max_trials=options.perf_max_trials,
                       shapes=shapes, input_data=data)


def validate_repository(repo: Path | str, options: ValidateOptions | None = None,
                        progress: Progress | None = None) -> ValidationReport:
    """Validate every generated model of ``repo`` (or ``options.models``) on a live Triton.

    Raises UserError for usage errors (no repository, no models, unknown model); everything the
    server or a model does wrong ends up in the report, whose ``exit_code`` is 0 only when no
    check failed.

    An ``s3://`` repository is served from object storage as Triton reads it, while the files the
    checks read (manifests, references, and the artifacts whose hashes are checked) are downloaded.
    """
    from aitune_triton.triton.object_storage import open_repository

    options = options if options is not None else ValidateOptions()
    with open_repository(repo, full=True, progress=progress) as view:
        if view.remote:
            options = dataclasses.replace(options, server_repository=str(view.server))
        return _validate(view.local, options, progress)


def _validate(repo: Path, options: ValidateOptions, progress: Progress | None) -> ValidationReport:
    if options.report_dir:
        check_outside_repository(options.report_dir, repo, "the validation report")
    planned = plan_models(repo, options.models)
    run = _Run(repo, options, progress or (lambda msg: None))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    reports: list[ModelReport] = []
    try:
        try:
            info = run.start(planned)
        except (ServerError, tools.ToolMissing, OSError) as exc:
            info, reports = run.unusable(planned, exc)
        else:
            last = final_model(planned)
            done: dict[int, ModelReport] = {}
            # the final checks may bring the server down, so their model goes last; the report keeps the plan's order
            for i in sorted(range(len(planned)), key=lambda i: planned[i] is last):
                item = planned[i]
                if run.dead and item.model_dir:
                    done[i] = ModelReport(item.name, item.backend, (CheckResult(
                        "server", CheckStatus.FAIL, "not validated: the server died earlier in the run"),))
                    continue
                done[i] = run.validate(item, info.backends, last=item is last)
            reports = [done[i] for i in range(len(planned))]
            if run.dead:
                info = dataclasses.replace(info, error=run.dead)
    finally:
        run.stop()
    report = ValidationReport(options.server_repository or str(repo.resolve()), info, tuple(reports), started,
                              time.monotonic() - t0, options.to_dict())
    if options.report_dir:
        report.write(Path(options.report_dir))
    return report
