"""Stage-2 tuning session: search Triton settings for one model on a live server, write the best back.

Each variant is loaded into the running server with the load API's config override (Triton
2.51 accepts ``{"parameters":{"config":"<json>"}}``): nothing on disk changes while searching,
and an interrupted search leaves the repository as it was. perf_analyzer then measures one
point per call, keeping its windows (``tune.measure``): every point has a median and a spread,
and one point beats another only when their spreads do not overlap (``tune.objective``).

The grid (``tune.space``) is searched by the quick coordinate descent, capped at 10 % of the
grid, or by brute force (``tune.algorithms``). Either way the top few configs (``finalists``) and the
current config are then re-measured back to back, interleaved, ``rounds`` times; only those
figures choose, and the current config is kept unless a finalist beats it beyond both spreads.
Only the winner is written (``tune.writeback``), with the reports (``tune.report``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import time
from pathlib import Path

import numpy as np

from aitune_triton.errors import UserError
from aitune_triton.triton.model_check import require_model_dir, verify_model
from aitune_triton.output_paths import resource_error
from aitune_triton.reference_data import REFERENCE, load_reference
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.perf import PerfOptions
from aitune_triton.triton.render import CONFIG, parse_config
from aitune_triton.triton.model_name import validate_model_name
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.triton.repository import repository_lock
from aitune_triton.triton.server_api import Server
from aitune_triton.tune.algorithms import brute_force, hill_climb, quick_budget
from aitune_triton.tune.measure import LiveRunner, perf_flags, remeasure
from aitune_triton.tune.model_analyzer import write_model_analyzer_config
from aitune_triton.tune.objective import decide, pick_finalists
from aitune_triton.tune.points import Point, Variant
from aitune_triton.tune.report import write_reports
from aitune_triton.tune.result import TuneResult
from aitune_triton.tune.options import REPORT_SUBDIR, TuneOptions
from aitune_triton.tune.space import batching_refused, build_space, current_variant, placement
from aitune_triton.tune.writeback import record, reload_from_disk, write_back
from aitune_triton.validate.checks.target import ModelTarget, parse_config_file
from aitune_triton.validate.perf_inputs import perf_input_options

log = logging.getLogger(__name__)


def output_bytes(manifest: Manifest, batch_size: int = 1) -> int | None:
    """The largest output of one request at the largest recorded sizes, in bytes (for
    perf_analyzer's shared-memory output regions); None when a dtype is unknown."""
    sizes = []
    for t in manifest.spec.outputs:
        try:
            itemsize = 2 if t.dtype == "bfloat16" else np.dtype(t.dtype).itemsize
        except TypeError:
            return None
        count = 1
        for d in t.shape("max", batch=batch_size):
            count *= max(int(d), 1)
        sizes.append(count * itemsize)
    return max(sizes, default=None)


def perf_inputs(model_dir: Path, manifest: Manifest, perf: PerfOptions, workdir: Path) -> PerfOptions:
    """``perf`` with the requests validate's perf check sends (``perf_input_options``, one home):
    the recorded sample inputs, as the model's wire types take them; a ``--input-data`` or
    ``--shape`` the caller gave wins."""
    if perf.input_data is not None:
        return perf
    ref = model_dir / REFERENCE
    target = ModelTarget(model_dir.name, model_dir, manifest, parse_config_file(model_dir / CONFIG),
                         tuple(load_reference(ref)) if ref.exists() else ())
    data, shapes = perf_input_options(target, workdir)
    return dataclasses.replace(perf, input_data=data, shapes={**shapes, **perf.shapes})


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def check_tunable(repo: Path, model: str, report_dir: Path | None = None) -> Manifest:
    """Before a server starts: the model passes the integrity check (nothing is loaded otherwise)
    and its directory can take what tune writes (config.pbtxt, its backup, the manifest, the
    reports); one line naming what is wrong."""
    validate_model_name(model)
    model_dir = require_model_dir(Path(repo), model)
    manifest = verify_model(model_dir, Path(repo))
    for where, what in ((model_dir, "the tuned config.pbtxt and the manifest"),
                        (Path(report_dir) if report_dir else model_dir, "the tuning report")):
        probe = where if where.exists() else where.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError("cannot write %s into %s: it is not writable (a read-only repository?); tune writes the "
                            "chosen config back" % (what, probe))
    return manifest


def tune_model(repo: Path, model: str, server: Server, options: TuneOptions | None = None) -> TuneResult:
    """Search ``options``' grid for ``model`` on ``server`` (started, explicit model control),
    write the best config back and the reports; returns what was measured and chosen.

    The repository lock is taken before the model is read and held throughout, so no ``generate``
    replaces the model mid-search. A caller that starts the server itself takes the lock first
    (before the server loads the model) and calls ``tune_model_locked``. The model is left loaded
    with the config now on disk.
    """
    options = options or TuneOptions()
    with repository_lock(Path(repo), options.lock_wait_s):
        return tune_model_locked(repo, model, server, options)


def tune_model_locked(repo: Path, model: str, server: Server, options: TuneOptions) -> TuneResult:
    """``tune_model`` for a caller that holds the repository lock: every read of the model (the
    integrity check, the manifest, the config the search starts from and writes back over) happens
    under it, so what is searched and recorded is the model on disk (the lock is not re-entrant)."""
    repo = Path(repo)
    model_dir = repo / model
    config_path = model_dir / CONFIG
    if not config_path.exists():
        raise UserError("%s not found; is %s a model in the repository %s?" % (config_path, model, repo))
    manifest = check_tunable(repo, model, options.report_dir)
    original = config_path.read_text()
    base = parse_config(original)
    num_profiles = len(manifest.profiles.profiles) if manifest.backend == "tensorrt" else 0
    limit = manifest.max_batch_size
    objective = options.objective_spec()
    space = build_space(base, manifest, options)
    previous = current_variant(base)
    report_dir = Path(options.report_dir) if options.report_dir else model_dir / REPORT_SUBDIR
    report_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    runner = LiveRunner(server, model, base, limit, num_profiles,
                        perf_inputs(model_dir, manifest, options.perf, report_dir), report_dir / "perf",
                        output_bytes=output_bytes(manifest, options.perf.batch_size))
    start = Point(Variant(space.snap("instances", previous.instances), space.snap("delay_us", previous.delay_us),
                          space.snap("preferred", previous.preferred)),
                  space.concurrency[len(space.concurrency) // 2], space.transports[0])
    budget = options.max_measurements or quick_budget(space.size)
    log.info("tuning %s: %s over %d grid points (%s)", model, objective.describe(), space.size,
             "brute force" if options.brute else "quick search, at most %d points" % budget)
    load_start = _load_avg()
    try:
        if options.brute:
            measurements = brute_force(space, runner)
        else:
            measurements = hill_climb(space, runner, objective, start, options.min_gain, budget)
        points = pick_finalists(measurements, objective, previous, options.finalists)
        log.info("re-measuring %d finalists, %d interleaved rounds", len(points), options.rounds)
        finalists = remeasure(runner, points, options.rounds) if points else []
    except BaseException:
        reload_from_disk(server, model)
        raise
    decision = decide(finalists, objective, previous, options.min_gain, previous in space.variants())
    chosen = decision.chosen
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = TuneResult(model, objective, space, "brute" if options.brute else "quick", tuple(measurements),
                        chosen, decision.incumbent, previous, runner.loads, False, "", 0.0, config_path,
                        placement=placement(base, (chosen.point.variant if chosen else previous).instances,
                                            runner.perf, chosen.point.transport if chosen else None,
                                            space.gpus),
                        finalists=tuple(finalists), improvement=decision.improvement, ties=decision.ties,
                        perf_flags=perf_flags(runner.stable_perf()))
    try:
        if chosen is None:
            reload_from_disk(server, model)
            why = decision.reason if finalists else \
                "no measured variant met the constraint (%s)" % objective.describe()
            result = dataclasses.replace(result, reason=why + "; config.pbtxt left unchanged")
        elif decision.kept:  # the config on disk is the chosen one: nothing to write, its text stays
            reload_from_disk(server, model)
            result = dataclasses.replace(result, reason=decision.reason + "; config.pbtxt left unchanged")
        else:
            result = dataclasses.replace(result, reason=decision.reason)
            backup = write_back(server, result, chosen, base, original, limit, num_profiles, stamp)
            result = dataclasses.replace(result, written=True, backup_path=backup)
        refused = batching_refused(manifest)
        if refused:
            result = dataclasses.replace(result, reason="%s; %s" % (result.reason, refused))
        result = dataclasses.replace(result, load_avg=(load_start, _load_avg()))
        result = dataclasses.replace(result, elapsed_s=time.monotonic() - t0)
        reports = write_reports(result, report_dir)
        if options.export_model_analyzer is not None:
            # Model Analyzer cannot sweep the client transport: it gets the chosen point's
            ma_perf = dataclasses.replace(runner.perf, shared_memory=chosen.point.transport) if chosen \
                else runner.perf
            reports["model_analyzer"] = write_model_analyzer_config(
                options.export_model_analyzer, repo, model, base, space, objective, result.perf_flags, ma_perf)
        result = dataclasses.replace(result, reports=reports)
        record(model_dir, manifest, result, original, report_dir, stamp)
    except OSError as exc:  # a full disk or a filesystem gone read-only: the old config back, one line
        if config_path.read_text() != original:
            with contextlib.suppress(OSError):
                replace_file_atomically(config_path, original)
            reload_from_disk(server, model)
        raise resource_error(exc, "the tuning results", model_dir) from None
    log.info("tuning %s: %s (%d of %d points, %d loads, %.0f s)", model, result.reason, result.measured,
             result.grid_size, result.loads, result.elapsed_s)
    return result
