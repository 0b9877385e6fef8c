"""Stage-1 tuning of the Python fallback: build every fallback format, measure each against eager
in-process, and keep the one the strategy picks."""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from aitune_triton.errors import ModelError
from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.numerics import ToleranceOverride, tolerance_for
from aitune_triton.profile_set import ProfileSet
from aitune_triton.spec import IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed

log = logging.getLogger(__name__)


def select_fallback(build: Callable[[Path, str], FallbackArtifact], spec: IOSpec, samples: Sequence[Sample],
                    outputs: Sequence[Any], profiles: ProfileSet, device: str, portable: bool,
                    budget_ms: float | None, version_dir: Path, strategy: str,
                    progress: Callable[[str], None],
                    tolerance: ToleranceOverride | None = None) -> tuple[FallbackArtifact, Any]:
    """Stage-1 tuning: build every fallback format (``build(trial_dir, format)``), measure each
    against eager in-process and keep the one the strategy picks (eager when nothing beats it by
    the margin); its files are moved into ``version_dir``. ``outputs``: the samples' eager outputs.
    Each output is judged by ``tolerance_for(its dtype, tolerance)``, the rule the fallback's own
    build check applies: a float16 output's rounding noise that passed that check must not make
    AOTInductor or export lose to eager here."""
    from aitune_triton.export.torch_export import load_runner
    from aitune_triton.tune.candidates import Candidate
    from aitune_triton.tune.strategies import select_candidate

    built: dict[str, tuple[Path, FallbackArtifact]] = {}
    candidates = []
    tolerances = {t.name: tolerance_for(t.dtype, tolerance) for t in spec.outputs}
    trials = []
    try:  # every .trial-<fmt>/ goes, whatever fails: it sits inside the model directory that ships
        for fmt in ("export", "eager") if portable else ("aoti", "export", "eager"):
            progress("stage-1 tuning: building the %s fallback" % fmt)
            trial = version_dir.parent / (".trial-" + fmt)
            trial.mkdir()
            trials.append(trial)
            try:
                built[fmt] = (trial, build(trial, fmt))
            except ModelError as exc:
                log.info("fallback format %s is not a candidate: %s", fmt, exc)
                continue
            runner = load_runner(trial, fmt, device, spec)
            candidates.append(Candidate(fmt, "eager" if fmt == "eager" else fmt, "fp32",
                                        functools.partial(call_with_feed, runner, spec), tolerances))
        if not candidates:
            raise ModelError("no fallback format reproduces eager PyTorch; see --debug for each format's reason")
        progress("stage-1 tuning: measuring %s" % ", ".join(c.name for c in candidates))
        feeds = [sample_feed(spec, s) for s in samples]
        refs = [dict(flatten_outputs(o)) for o in outputs]
        batches = sorted({1, *profiles.opt_batches(), max(profiles.max_batch_size, 1)}) \
            if spec.batching else None
        selection = select_candidate(candidates, feeds, refs, strategy, budget_ms,
                                     batch_sizes=batches)
        chosen = selection.chosen or "eager"
        if chosen not in built:  # nothing passed, and eager (the usual last resort) did not build
            raise ModelError("no fallback format is usable: eager did not build (see --debug) and %s"
                             % "; ".join("%s %s" % (r.name, r.accuracy.summary()) for r in selection.rows))
        trial, artifact = built[chosen]
        for f in artifact.files:
            shutil.move(str(trial / f), str(version_dir / f))
    finally:
        for trial in trials:
            shutil.rmtree(trial, ignore_errors=True)
    return artifact, selection
