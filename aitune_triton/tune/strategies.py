"""Stage-1 selection: pick the artifact (backend and precision) to serve, by measurement.

Every candidate is first checked for accuracy against the eager outputs (a fast but wrong
artifact is never chosen), then warmed up at every batch size, then timed in-process at batch 1,
the profiles' opt batches and the max batch. A strategy turns the timings into one score per candidate:

* ``min-latency``: the median latency at the smallest batch (lower is better);
* ``max-throughput``: the best items/s over the measured batches;
* ``latency-budget``: the best items/s over the batches whose median latency fits ``budget_ms``
  (a candidate that fits at no batch is out).

Eager stays unless another candidate beats it by ``margin`` (default 5 %): compiled artifacts
cost load time, memory and a second code path, and on a noisy machine a 2 % "win" is usually
noise. The result keeps the whole table so the manifest records why each candidate lost.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from aitune_triton.errors import ModelError, UserError
from aitune_triton.tune.candidates import (
    AccuracyReport,
    Candidate,
    Feed,
    MakeBatch,
    RunFn,
    Timing,
    check_accuracy,
    measure_candidates,
    tile_batch,
)

log = logging.getLogger(__name__)

STRATEGIES = ("min-latency", "max-throughput", "latency-budget")
DEFAULT_MARGIN = 0.05


def validate_strategy(strategy: str, budget_ms: float | None, margin: float) -> None:
    if strategy not in STRATEGIES:
        raise UserError("unknown tuning strategy %r; choose from %s" % (strategy, ", ".join(STRATEGIES)))
    if strategy == "latency-budget" and (budget_ms is None or not budget_ms > 0):
        raise UserError("strategy latency-budget needs a positive budget_ms (e.g. --budget-ms 10)")
    if not 0 <= margin < 1:
        raise UserError("margin must be in [0, 1), got %r" % margin)


def score(strategy: str, timings: Sequence[Timing], budget_ms: float | None = None) -> tuple[float | None, int | None]:
    """(score, batch it was reached at); higher is better for throughput, lower for latency.
    None when the candidate has no usable timing (or, for latency-budget, none within budget)."""
    ok = [t for t in timings if t.ok]
    if not ok:
        return None, None
    if strategy == "min-latency":
        t = min(ok, key=lambda t: t.batch)
        return t.median_ms, t.batch
    if strategy == "latency-budget":
        ok = [t for t in ok if t.median_ms <= (math.inf if budget_ms is None else budget_ms)]
        if not ok:
            return None, None
    t = max(ok, key=lambda t: t.throughput)
    return t.throughput, t.batch


def speedup(strategy: str, value: float, reference: float) -> float:
    """How many times better ``value`` is than ``reference`` (> 1: better)."""
    if strategy == "min-latency":
        return reference / value if value > 0 else math.inf
    return value / reference if reference > 0 else math.inf


@dataclass(frozen=True)
class CandidateRow:
    """One line of the selection table."""

    name: str
    backend: str
    precision: str
    accuracy: AccuracyReport
    timings: tuple[Timing, ...]
    score: float | None = None
    score_batch: int | None = None
    speedup: float | None = None
    chosen: bool = False
    why_not: str = ""

    def timing(self, batch: int) -> Timing | None:
        return next((t for t in self.timings if t.batch == batch and t.ok), None)

    def to_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision": self.precision,
                "accuracy": self.accuracy.to_dict(), "timings": [t.to_dict() for t in self.timings],
                "score": self.score, "score_batch": self.score_batch, "speedup_vs_eager": self.speedup,
                "chosen": self.chosen, "why_not": self.why_not}


@dataclass(frozen=True)
class SelectionResult:
    """The chosen candidate (None only when nothing passed accuracy) and the full table."""

    strategy: str
    budget_ms: float | None
    margin: float
    rows: tuple[CandidateRow, ...]
    chosen: str | None
    reason: str

    def row(self, name: str) -> CandidateRow:
        return next(r for r in self.rows if r.name == name)

    @property
    def chosen_row(self) -> CandidateRow | None:
        return self.row(self.chosen) if self.chosen else None

    def require(self) -> CandidateRow:
        """The chosen row, or ModelError with the table when no candidate is usable."""
        if self.chosen_row is None:
            raise ModelError("no candidate is usable (%s):\n%s" % (self.reason, self.to_text()))
        return self.chosen_row

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "budget_ms": self.budget_ms, "margin": self.margin,
                "chosen": self.chosen, "reason": self.reason, "candidates": [r.to_dict() for r in self.rows]}

    def to_table(self) -> Table:
        """A rich table: precision, accuracy, latency and throughput per batch, chosen / why not."""
        batches = sorted({t.batch for r in self.rows for t in r.timings})
        table = Table(title="candidates (%s%s, margin %.0f%%)" % (
            self.strategy, ", budget %g ms" % self.budget_ms if self.budget_ms else "", 100 * self.margin))
        for col in ("candidate", "backend", "precision", "accuracy"):
            table.add_column(col)
        for b in batches:
            table.add_column("b%d ms" % b, justify="right")
        table.add_column("score", justify="right")
        table.add_column("vs eager", justify="right")
        table.add_column("chosen / why not")
        for r in self.rows:
            cells: list[str | Text] = [r.name, r.backend, r.precision, r.accuracy.summary()]
            for b in batches:
                t = r.timing(b)
                cells.append("%.3f" % t.median_ms if t else "-")
            if r.score is None:
                cells.append("-")
            elif self.strategy == "min-latency":
                cells.append("%.3f ms @%s" % (r.score, r.score_batch))
            else:
                cells.append("%.0f/s @%s" % (r.score, r.score_batch))
            cells.append("%.2fx" % r.speedup if r.speedup is not None else "-")
            cells.append("[bold green]chosen[/]" if r.chosen else Text(r.why_not))  # quotes exceptions: not markup
            table.add_row(*cells)
        return table

    def to_text(self, width: int = 160) -> str:
        buf = io.StringIO()
        Console(file=buf, width=width, no_color=True).print(self.to_table())
        return buf.getvalue()

    def __rich__(self) -> Table:
        return self.to_table()


def select_from_measurements(candidates: Sequence[Candidate], accuracy: Mapping[str, AccuracyReport],
                             timings: Mapping[str, Sequence[Timing]], strategy: str,
                             budget_ms: float | None = None, margin: float = DEFAULT_MARGIN) -> SelectionResult:
    """The decision alone, from measurements already taken (pure: unit-testable exactly)."""
    validate_strategy(strategy, budget_ms, margin)
    scored: dict[str, tuple[float | None, int | None]] = {}
    why: dict[str, str] = {}
    for c in candidates:
        if not accuracy[c.name].ok:
            why[c.name] = "inaccurate: %s" % accuracy[c.name].summary()
            scored[c.name] = (None, None)
            continue
        s, b = score(strategy, timings.get(c.name, ()), budget_ms)
        scored[c.name] = (s, b)
        if s is None:
            ok = [t for t in timings.get(c.name, ()) if t.ok]
            if not ok:
                errors = [t.error for t in timings.get(c.name, ()) if t.error]
                why[c.name] = "failed to run: %s" % (errors[0] if errors else "no timing")
            else:
                fastest = min(ok, key=lambda t: t.median_ms)
                why[c.name] = "over budget: %.3f ms at batch %d > %g ms" % (
                    fastest.median_ms, fastest.batch, math.inf if budget_ms is None else budget_ms)
    values = {name: s for name, (s, _) in scored.items() if s is not None}
    usable = [c for c in candidates if c.name in values]
    eager = next((c for c in usable if c.is_eager), None)
    lower_better = strategy == "min-latency"

    def value(c: Candidate) -> float:
        return values[c.name]

    ranked = sorted(usable, key=value, reverse=not lower_better)
    ratios = {c.name: speedup(strategy, value(c), value(eager)) for c in usable} if eager else {}
    chosen: Candidate | None
    if not usable:
        chosen, reason = None, "no candidate passed the accuracy check and ran%s" % (
            " within the budget" if strategy == "latency-budget" else "")
    elif eager is None:
        chosen = ranked[0]
        unusable = next((c for c in candidates if c.is_eager), None)
        reason = "best %s; %s, so no margin rule" % (
            strategy, "eager is out (%s)" % why[unusable.name] if unusable else "no eager candidate")
    else:
        best = next((c for c in ranked if not c.is_eager), None)
        if best is not None and ratios[best.name] >= 1.0 + margin:
            chosen, reason = best, "%.2fx eager on %s (margin %.0f%%)" % (ratios[best.name], strategy, 100 * margin)
        else:
            chosen = eager
            reason = ("no candidate beats eager by the %.0f%% margin" % (100 * margin)
                      if best else "only eager is usable")
    for c in usable:
        if chosen is None or c.name == chosen.name:
            continue
        if c.is_eager:
            why[c.name] = "%s is %.2fx better" % (chosen.name, ratios[chosen.name])
        elif eager is not None and ratios[c.name] < 1.0 + margin:
            why[c.name] = "%.2fx eager, below the %.0f%% margin" % (ratios[c.name], 100 * margin)
        else:
            why[c.name] = "%s is better" % chosen.name
    rows = tuple(CandidateRow(
        name=c.name, backend=c.backend, precision=c.precision, accuracy=accuracy[c.name],
        timings=tuple(timings.get(c.name, ())), score=scored[c.name][0], score_batch=scored[c.name][1],
        speedup=ratios.get(c.name), chosen=chosen is not None and c.name == chosen.name, why_not=why.get(c.name, ""))
        for c in candidates)
    return SelectionResult(strategy, budget_ms, margin, rows, chosen.name if chosen else None, reason)


def warm_up(runs: Mapping[str, RunFn], make_batch: MakeBatch, batch_sizes: Sequence[int], *, calls: int = 3,
            min_seconds: float = 0.25, max_calls: int = 200) -> dict[str, dict[int, int]]:
    """Run every candidate at every batch size before anything is timed: at least ``calls`` calls
    and ``min_seconds`` per pair (at most ``max_calls``). Without it the first batch measured paid
    for first calls and for what the process was still doing (compile workers, thread pools,
    allocator growth): export and eager timed batch 1 at ~30x the batch-8 time. Failures are left
    for the measurement to report. Returns the calls made per candidate and batch."""
    made: dict[str, dict[int, int]] = {name: {} for name in runs}
    with torch.inference_mode():
        for batch in sorted(set(int(b) for b in batch_sizes)):
            try:
                feed = make_batch(batch)
            except Exception as exc:  # noqa: BLE001 - measure_candidates reports it
                log.info("warm-up: no batch %d: %s", batch, exc)
                continue
            for name, run in runs.items():
                n, t0 = 0, time.monotonic()
                try:
                    while n < max_calls and (n < calls or time.monotonic() - t0 < min_seconds):
                        run(feed)
                        n += 1
                except Exception as exc:  # noqa: BLE001 - measure_candidates reports it
                    log.info("warm-up: %s failed at batch %d: %s", name, batch, exc)
                made[name][batch] = n
            del feed
    return made


def select_candidate(candidates: Sequence[Candidate], samples_feed: Sequence[Feed],
                     reference_outputs: Sequence[Mapping[str, Any]], strategy: str,
                     budget_ms: float | None = None, margin: float = DEFAULT_MARGIN, *,
                     batch_sizes: Sequence[int] | None = None, make_batch: MakeBatch | None = None,
                     warmup: int = 3, rounds: int = 7, per_round: int = 3,
                     warmup_s: float = 0.25) -> SelectionResult:
    """Check accuracy, time the accurate candidates, and apply ``strategy``.

    ``samples_feed[i]`` (input name -> tensor) gave the eager outputs ``reference_outputs[i]``
    (output name -> tensor or array). ``batch_sizes`` should be 1, the profiles' opt batches and
    the max batch (default: 1 and the largest sample batch); ``make_batch(b)`` builds a feed of
    batch ``b`` (default: the first sample's items cycled along axis 0). Candidates that fail
    accuracy are not timed; the others are all warmed up at every batch size (``warm_up``: at
    least ``warmup`` calls and ``warmup_s`` seconds each) before the first timing.
    """
    validate_strategy(strategy, budget_ms, margin)
    if not candidates:
        raise ValueError("no candidates")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError("candidate names must be unique: %s" % names)
    if not samples_feed:
        raise ValueError("no samples")
    accuracy = {c.name: check_accuracy(c, samples_feed, reference_outputs) for c in candidates}
    first = samples_feed[0]
    if batch_sizes is None:
        largest = max((t.shape[0] for f in samples_feed for t in f.values() if t.dim() > 0), default=1)
        batch_sizes = sorted({1, largest})
    if make_batch is None:
        def make_batch(b: int) -> Feed:
            return tile_batch(first, b)
    accurate = {c.name: c.run for c in candidates if accuracy[c.name].ok}
    timings = {}
    if accurate:
        warm_up(accurate, make_batch, batch_sizes, calls=warmup, min_seconds=warmup_s)
        timings = measure_candidates(accurate, make_batch, batch_sizes, warmup=1, rounds=rounds, per_round=per_round)
    result = select_from_measurements(candidates, accuracy, timings, strategy, budget_ms, margin)
    log.info("stage-1 selection: %s (%s)", result.chosen, result.reason)
    return result
