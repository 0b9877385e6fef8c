"""What "better" means and the choice among re-measured finalists: intervals, not single numbers."""

from __future__ import annotations

import dataclasses

import pytest

from aitune_triton.errors import UserError
from aitune_triton.tune.objective import Objective, decide, pick_finalists
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant

def test_objective_order():
    o = Objective("max-throughput", budget_ms=10.0)
    p = Point(Variant(1, 0), 1)
    fast_late = Measurement(p, 1000, 5, 8, 12)
    slow_ok = Measurement(p, 500, 2, 4, 6)
    assert o.better(slow_ok, fast_late) and not o.better(fast_late, slow_ok)
    assert o.better(Measurement(p, 515, 2, 4, 6), slow_ok) and not o.better(Measurement(p, 515, 2, 4, 6), slow_ok, 0.05)
    failed = Measurement(p, status="unstable")
    assert o.better(slow_ok, failed) and not o.better(failed, slow_ok) and not o.feasible(failed)
    with pytest.raises(UserError, match="unknown objective 'fastest'; choose from max-throughput, min-latency"):
        Objective("fastest")
    with pytest.raises(UserError, match="budget_ms must be > 0, got 0"):
        Objective("max-throughput", budget_ms=0)

def spread(point: Point, median: float, half: float, p99: float = 10.0) -> Measurement:
    """A measurement with a min-max spread of +-``half`` (relative) around ``median``."""
    return Measurement(point, median, p99 / 2, p99 / 1.2, p99, throughput_low=median * (1 - half),
                       throughput_high=median * (1 + half))

def test_better_needs_the_spreads_apart():
    o = Objective("max-throughput", budget_ms=20.0)
    a, b = Point(Variant(1, 0), 8), Point(Variant(2, 0), 8)
    assert not o.better(spread(a, 1200, 0.15), spread(b, 1000, 0.15))  # 1020 < 1150: overlap, noise
    assert o.better(spread(a, 1400, 0.05), spread(b, 1000, 0.15))  # 1330 > 1150
    assert o.better(spread(a, 1400, 0.05), spread(b, 1000, 0.15, p99=25.0)) is True  # b infeasible
    assert o.best([spread(a, 1200, 0.15), spread(b, 1000, 0.01)]).point == a  # best is by median
    latency = Objective("min-latency")
    fast, slow = Measurement(a, 900, 3, 4, 5.0, p99_low=4.5, p99_high=5.5), Measurement(b, 900, 3, 4, 6.0,
                                                                                        p99_low=5.2, p99_high=6.8)
    assert not latency.better(fast, slow)  # 5.5 > 5.2: overlap
    assert latency.better(dataclasses.replace(fast, p99_high=5.1), slow)

def rounds(point: Point, values: list[float], p99: float = 10.0) -> Remeasured:
    return Remeasured(point, tuple(Measurement(point, v, p99 / 2, p99 / 1.2, p99) for v in values))

def test_finalists_are_the_top_configs_and_the_current_one():
    objective = Objective("max-throughput", budget_ms=20.0)
    current = Variant(1, 500)
    ms = [Measurement(Point(Variant(2, 0), 8), 1500, 4, 8, 12), Measurement(Point(Variant(2, 0), 16), 1800, 6, 9, 15),
          Measurement(Point(Variant(2, 1000), 16), 1700, 6, 9, 16), Measurement(Point(current, 8), 1000, 4, 8, 9),
          Measurement(Point(Variant(1, 0), 32), 2500, 9, 20, 30),  # over budget: never a finalist
          Measurement(Point(Variant(1, 2000), 16), 2600, status="unstable", throughput_low=1000,
                      throughput_high=4000)]  # unstable: never a finalist
    points = pick_finalists(ms, objective, current, 2)
    assert points == [Point(Variant(2, 0), 16), Point(Variant(2, 1000), 16), Point(current, 16)]
    assert pick_finalists(ms, objective, Variant(2, 0), 2) == points[:2]  # current config already in
    assert pick_finalists(ms[-2:], objective, current, 2) == []

def test_decide_keeps_the_current_config_within_the_spread_and_claims_only_measured_gains():
    objective = Objective("max-throughput", budget_ms=20.0)
    current, other, third = Variant(1, 500), Variant(2, 0), Variant(2, 1000)
    tie = decide([rounds(Point(other, 16), [1500, 1900, 1700]), rounds(Point(current, 16), [1400, 1800, 1600])],
                 objective, current)
    assert tie.chosen.point == Point(current, 16) and tie.kept and tie.improvement is None
    assert tie.ties == (Point(other, 16),)
    win = decide([rounds(Point(other, 16), [2500, 2700, 2600]), rounds(Point(third, 16), [2400, 2650, 2500]),
                  rounds(Point(current, 16), [1400, 1800, 1600])], objective, current)
    assert win.chosen.point == Point(other, 16) and not win.kept
    assert win.improvement == pytest.approx(2600 / 1600) and win.ties == (Point(third, 16),)
    assert (win.chosen.throughput_low, win.chosen.throughput_high) == (2500, 2700)
    # the current config stalled in the re-measurement: a choice, but no claim against it
    stalled = Remeasured(Point(current, 16), (Measurement(Point(current, 16), status="stalled"),) * 3)
    noclaim = decide([rounds(Point(other, 16), [2500, 2700, 2600]), stalled], objective, current)
    assert noclaim.chosen.point == Point(other, 16) and noclaim.improvement is None
    assert "no improvement is claimed" in noclaim.reason
    assert decide([rounds(Point(other, 16), [2500], p99=30.0)], objective, current).chosen is None

def test_the_current_config_best_by_median_is_kept_so_nothing_is_written():
    """``kept`` was False when the current config was also the best median, and tune rewrote config.pbtxt."""
    objective = Objective("max-throughput", budget_ms=20.0)
    current, other = Variant(1, 500), Variant(2, 0)
    best = decide([rounds(Point(other, 16), [1400, 1800, 1600]), rounds(Point(current, 16), [1500, 1900, 1700])],
                  objective, current)
    assert best.chosen.point == Point(current, 16) and best.kept and best.improvement is None
    assert decide([rounds(Point(current, 16), [1500, 1900, 1700])], objective, current).kept


def test_decide_never_keeps_a_current_config_outside_the_grid():
    objective = Objective("max-throughput", budget_ms=20.0)
    current, other = Variant(1, 500), Variant(1, 0)
    finalists = [rounds(Point(other, 4), [1500, 1900, 1700]), rounds(Point(current, 4), [1400, 1800, 1600])]
    assert decide(finalists, objective, current).chosen.point == Point(current, 4)  # in the grid: kept
    outside = decide(finalists, objective, current, keep_current=False)
    assert outside.chosen.point == Point(other, 4) and outside.improvement is None and not outside.kept
    assert "outside the searched grid" in outside.reason
