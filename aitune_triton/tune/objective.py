"""What "better" means when tuning, and the choice among re-measured finalists.

``Objective`` is max throughput under a p99 budget, or min p99 above a throughput floor. Points
are compared by their intervals, not single numbers: one beats another only when their spreads do
not overlap (and the median gains ``min_gain``), because on a shared machine smaller differences
are noise. ``pick_finalists`` names the configs to re-measure interleaved, and ``decide`` chooses
among them from those rounds alone: the current config stays unless a finalist beats it beyond
both spreads, and an improvement is claimed only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from aitune_triton.errors import UserError
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant

OBJECTIVES = ("max-throughput", "min-latency")


@dataclass(frozen=True)
class Objective:
    """``max-throughput`` with p99 <= ``budget_ms``, or ``min-latency`` (p99) with throughput >=
    ``min_throughput``; either constraint may be None (unconstrained)."""

    kind: str = "max-throughput"
    budget_ms: float | None = None
    min_throughput: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise UserError("unknown objective %r; choose from %s" % (self.kind, ", ".join(OBJECTIVES)))
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise UserError("budget_ms must be > 0, got %r" % self.budget_ms)
        if self.min_throughput is not None and not self.min_throughput > 0:
            raise UserError("min_throughput must be > 0, got %r" % self.min_throughput)

    def violation(self, m: Measurement) -> float:
        """0 when the constraints hold, else how far off they are (relative); ``m`` is ok."""
        throughput, p99 = m.figures()
        v = 0.0
        if self.budget_ms is not None and p99 > self.budget_ms:
            v += p99 / self.budget_ms - 1.0
        if self.min_throughput is not None and throughput < self.min_throughput:
            v += 1.0 - throughput / self.min_throughput
        return v

    def feasible(self, m: Measurement) -> bool:
        return m.ok and self.violation(m) == 0.0

    def better(self, a: Measurement, b: Measurement, min_gain: float = 0.0) -> bool:
        """Is ``a`` measurably better than ``b``? Feasibility first, then the smaller violation,
        then the objective, where "better" means the spreads do not overlap (``a``'s worst window
        or round beats ``b``'s best) and the median gains more than ``min_gain`` (relative). A
        measurement without a spread counts as a single value."""
        if not a.ok:
            return False
        if not b.ok:
            return True
        fa, fb = self.feasible(a), self.feasible(b)
        if fa != fb:
            return fa
        if not fa:
            return self.violation(a) < self.violation(b) * (1.0 - min_gain)
        (a_thr, a_p99), (b_thr, b_p99) = a.figures(), b.figures()
        if self.kind == "max-throughput":
            return a.lo > b.hi and a_thr > b_thr * (1.0 + min_gain)
        return a.p99_hi < b.p99_lo and a_p99 < b_p99 * (1.0 - min_gain)

    def key(self, m: Measurement) -> float:
        """Sort key of a feasible measurement by its median, larger is better."""
        throughput, p99 = m.figures()
        return throughput if self.kind == "max-throughput" else -p99

    def best(self, measurements: Iterable[Measurement]) -> Measurement | None:
        """The feasible measurement with the best median, or None when none is feasible (the
        first of equal ones)."""
        best = None
        for m in measurements:
            if self.feasible(m) and (best is None or self.key(m) > self.key(best)):
                best = m
        return best

    def describe(self) -> str:
        if self.kind == "max-throughput":
            return "max throughput" + (" with p99 <= %g ms" % self.budget_ms if self.budget_ms else "")
        return "min p99" + (" with throughput >= %g/s" % self.min_throughput if self.min_throughput else "")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "budget_ms": self.budget_ms, "min_throughput": self.min_throughput}


def pick_finalists(measurements: Iterable[Measurement], objective: Objective, previous: Variant | None,
                   count: int) -> list[Point]:
    """The points to re-measure before choosing: the best point of each of the top ``count``
    configs (by median), and the current config at the best one's concurrency (the baseline any
    claim of improvement is made against). Empty when nothing measured is feasible."""
    best_of: dict[Variant, Measurement] = {}
    for m in measurements:
        if objective.feasible(m):
            held = best_of.get(m.point.variant)
            if held is None or objective.key(m) > objective.key(held):
                best_of[m.point.variant] = m
    ranked = sorted(best_of.values(), key=objective.key, reverse=True)[:max(1, count)]
    points = [m.point for m in ranked]
    if points and previous is not None and all(p.variant != previous for p in points):
        points.append(Point(previous, points[0].concurrency, points[0].transport))
    return points


@dataclass(frozen=True)
class Decision:
    """What the interleaved re-measurement decided: the chosen finalist (its summary over rounds),
    the current config's summary, and the claim of improvement that the figures support (None:
    no claim). ``kept``: the chosen one is the current config, so there is nothing to write (a
    rewrite would only drop the user's comments and layout)."""

    chosen: Measurement | None
    incumbent: Measurement | None
    kept: bool
    improvement: float | None
    ties: tuple[Point, ...]
    reason: str


def decide(finalists: Iterable[Remeasured], objective: Objective, previous: Variant | None,
           min_gain: float = 0.0, keep_current: bool = True) -> Decision:
    """The best finalist by median over rounds, unless the current config is not measurably worse
    (spreads overlap): then it stays. An improvement is claimed only when the chosen config beats
    the current one beyond both spreads in the same rounds. ``keep_current`` False (the current
    config is outside the searched grid): it is only the baseline of the claim, never chosen."""
    summaries = [f.summary() for f in finalists]
    incumbent = next((m for m in summaries if m.point.variant == previous), None)
    best = objective.best(m for m in summaries if keep_current or m is not incumbent)
    if best is None:
        return Decision(None, incumbent, False, None, (), "no measured variant met the constraint (%s) when the "
                        "finalists were re-measured" % objective.describe())
    ties = tuple(m.point for m in summaries if m is not best and objective.feasible(m)
                 and not objective.better(best, m, min_gain))
    if (keep_current and incumbent is not None and objective.feasible(incumbent)
            and not objective.better(best, incumbent, min_gain)):
        return Decision(incumbent, incumbent, True, None,
                        tuple(p for p in ties if p != incumbent.point) + ((best.point,) if best is not incumbent
                                                                            else ()),
                        "current config kept: no finalist beats it beyond the re-measured spread")
    improvement = None
    if (incumbent is not None and objective.feasible(incumbent) and incumbent is not best
            and objective.better(best, incumbent, min_gain)):
        (best_thr, best_p99), (inc_thr, inc_p99) = best.figures(), incumbent.figures()
        improvement = best_thr / inc_thr if objective.kind == "max-throughput" else inc_p99 / best_p99
        reason = "best of %d finalists, measurably better than the current config" % len(summaries)
    elif incumbent is not None and incumbent is not best:
        why = ("was %s when re-measured" % incumbent.status if not incumbent.ok
               else "missed the constraint when re-measured" if not objective.feasible(incumbent)
               else "(outside the searched grid) is within the chosen one's spread")
        reason = "best of %d finalists; the current config %s, so no improvement is claimed" % (len(summaries), why)
    else:
        reason = "best of %d finalists" % len(summaries)
    return Decision(best, incumbent, False, improvement, ties, reason)
