"""The search algorithms over a measured-cost table (no server): the quick coordinate descent
against brute force on synthetic grids, under noise and constraints, within 10 % of the grid."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from aitune_triton.tune.algorithms import brute_force, hill_climb, quick_budget
from aitune_triton.tune.objective import Objective, pick_finalists
from aitune_triton.tune.points import Measurement, Point, Variant
from aitune_triton.tune.space import SearchSpace

SPACE = SearchSpace(instances=(1, 2, 4), delays_us=(0, 100, 250, 500, 1000, 2000, 4000),
                    concurrency=(1, 2, 4, 8, 16, 32, 64))

def synthetic(point: Point, noise: float = 0.0) -> Measurement:
    """A plausible 2-core CPU: 2 instances best, batching pays most around 1 ms delay,
    throughput saturates with concurrency while p99 keeps growing (Little's law)."""
    v, c = point.variant, point.concurrency
    capacity = {1: 800.0, 2: 1100.0, 4: 950.0}[v.instances]
    batching = 1.0 + 0.6 * (1.0 - abs(min(v.delay_us, 4000) - 1000) / 4000.0) * c / (c + 8)
    thr = capacity * batching * c / (c + 3.0)
    if noise:
        digest = hashlib.sha256(repr(point).encode()).digest()
        thr *= 1.0 + noise * (digest[0] / 127.5 - 1.0)
    p99 = 2.5 * c / thr * 1000.0 + v.delay_us / 1000.0
    return Measurement(point, thr, p99 / 2.5, p99 / 1.3, p99)

class Table:
    """The measured-cost table: counts how many distinct points the search asked for."""

    def __init__(self, noise: float = 0.0, fail: set | None = None):
        self.noise, self.fail, self.asked = noise, fail or set(), []

    def __call__(self, point: Point) -> Measurement:
        self.asked.append(point)
        if point in self.fail:
            return Measurement(point, status="failed", detail="load: boom")
        return synthetic(point, self.noise)

@pytest.mark.parametrize("objective", [
    Objective("max-throughput"),
    Objective("max-throughput", budget_ms=20.0),
    Objective("max-throughput", budget_ms=12.0),
    Objective("min-latency", min_throughput=900.0),
    Objective("min-latency", min_throughput=1500.0),
])
def test_hill_climb_finds_the_brute_force_best(objective):
    brute = objective.best(brute_force(SPACE, synthetic))
    table = Table()
    quick = hill_climb(SPACE, table, objective, min_gain=0.0)
    best = objective.best(quick)
    assert best is not None and brute is not None
    assert objective.feasible(best)
    if objective.kind == "max-throughput":
        assert best.throughput >= 0.97 * brute.throughput
    else:
        assert best.p99_ms <= brute.p99_ms / 0.97
    assert len(table.asked) == len(set(table.asked)) == len(quick)  # each point measured once
    assert len(quick) <= 0.15 * SPACE.size, len(quick)

def test_constraints_are_respected_and_drive_the_choice():
    free = Objective("max-throughput").best(brute_force(SPACE, synthetic))
    tight = Objective("max-throughput", budget_ms=12.0)
    best = tight.best(hill_climb(SPACE, Table(), tight))
    assert best.p99_ms <= 12.0 < free.p99_ms
    assert best.point.concurrency < free.point.concurrency
    floor = Objective("min-latency", min_throughput=1500.0)
    best = floor.best(hill_climb(SPACE, Table(), floor))
    assert best.throughput >= 1500.0
    # nothing can meet an impossible constraint: no best, even though points were measured
    impossible = Objective("max-throughput", budget_ms=0.01)
    measured = hill_climb(SPACE, Table(), impossible)
    assert measured and impossible.best(measured) is None

def test_quick_search_under_noise_stays_close_and_cheap():
    objective = Objective("max-throughput", budget_ms=25.0)
    brute = objective.best(brute_force(SPACE, lambda p: synthetic(p, noise=0.04)))
    for start in (None, Point(Variant(1, 0), 1), Point(Variant(4, 4000), 64)):
        table = Table(noise=0.04)
        best = objective.best(hill_climb(SPACE, table, objective, start=start))
        assert best.throughput >= 0.90 * brute.throughput, (start, best, brute)
        assert len(table.asked) <= 0.2 * SPACE.size

def test_infeasible_start_walks_to_feasibility():
    objective = Objective("max-throughput", budget_ms=10.0)
    start = Point(Variant(1, 4000), 64)
    assert not objective.feasible(synthetic(start))
    best = objective.best(hill_climb(SPACE, Table(), objective, start=start))
    assert best is not None and best.p99_ms <= 10.0

def test_failed_points_are_never_chosen_and_budget_caps_measurements():
    objective = Objective("max-throughput")
    winner = objective.best(brute_force(SPACE, synthetic))
    table = Table(fail={winner.point})
    measured = brute_force(SPACE, table)
    best = objective.best(measured)
    assert best.point != winner.point and best.ok
    capped = Table()
    assert len(hill_climb(SPACE, capped, objective, max_measurements=5)) == 5 == len(capped.asked)

def test_lookahead_walks_over_a_concurrency_plateau():
    # measured shape of the CPU example: flat from 6 to 8, a step up at 12 (the batcher fills batches)
    thr = {1: 800, 2: 1200, 4: 1500, 6: 2200, 8: 2200, 12: 2750, 16: 2780, 24: 2350, 32: 2300}
    space = SearchSpace((1,), (0,), tuple(thr))

    def table(p: Point) -> Measurement:
        c = p.concurrency
        return Measurement(p, thr[c], 1000.0 * c / thr[c], 0, 2000.0 * c / thr[c])

    objective = Objective("max-throughput", budget_ms=20.0)
    start = Point(Variant(1, 0), 4)
    stuck = objective.best(hill_climb(space, table, objective, start=start, lookahead=()))
    assert stuck.point.concurrency == 6
    best = objective.best(hill_climb(space, table, objective, start=start))
    assert best.point.concurrency == 16 and best.p99_ms <= 20.0

def noisy(point: Point, seed: int, noise: float = 0.06) -> Measurement:
    """``synthetic`` with a window spread of +-``noise`` and a run-to-run wobble of the same size."""
    base = synthetic(point)
    digest = hashlib.sha256(repr((point, seed)).encode()).digest()
    median = base.throughput * (1.0 + noise * (digest[0] / 127.5 - 1.0))
    return dataclasses.replace(base, throughput=median, throughput_low=median * (1 - noise),
                               throughput_high=median * (1 + noise))

ISSUE_GRID = SearchSpace(instances=(1, 2), delays_us=(0, 500, 1000, 2000, 4000), concurrency=(1, 2, 4, 8, 16, 32))
DEFAULT_CPU_GRID = SearchSpace(instances=(1, 2), delays_us=(0, 100, 250, 500, 1000, 2000),
                               concurrency=(1, 2, 4, 8, 16, 32))

@pytest.mark.parametrize("space", [ISSUE_GRID, DEFAULT_CPU_GRID, SPACE], ids=["issue-60", "default-72", "147"])
def test_quick_search_measures_at_most_a_tenth_of_the_grid(space):
    objective = Objective("max-throughput", budget_ms=25.0)
    assert quick_budget(space.size) == space.size // 10
    brute = objective.best(brute_force(space, synthetic))
    for seed in range(4):
        table: list[Point] = []

        def measure(p: Point, seed: int = seed, table: list[Point] = table) -> Measurement:
            table.append(p)
            return noisy(p, seed)

        start = Point(Variant(1, space.delays_us[1]), space.concurrency[len(space.concurrency) // 2])
        measured = hill_climb(space, measure, objective, start=start, max_measurements=quick_budget(space.size))
        assert len(table) == len(measured) <= space.size // 10
        best = objective.best(measured)
        assert best is not None and objective.feasible(best)
        assert best.throughput >= 0.85 * brute.throughput, (seed, best, brute)

def test_quick_search_over_transports_finds_cuda_within_a_tenth_of_the_grid():
    space = SearchSpace((1, 2, 4), (0, 500, 1000, 2000), (1, 2, 4, 8, 16, 32), transports=("none", "system", "cuda"),
                        gpus=1)
    gain = {"none": 1.0, "system": 1.02, "cuda": 1.5}  # system shm alone gains nothing measurable

    def table(p: Point) -> Measurement:
        base = synthetic(dataclasses.replace(p, transport="none"))
        thr = base.throughput * gain[p.transport]
        return dataclasses.replace(base, point=p, throughput=thr, throughput_low=0.97 * thr, throughput_high=1.03 * thr)

    objective = Objective("max-throughput", budget_ms=25.0)
    brute = objective.best(brute_force(space, table))
    asked: list[Point] = []
    quick = hill_climb(space, lambda p: asked.append(p) or table(p), objective,
                       max_measurements=quick_budget(space.size))
    best = objective.best(quick)
    assert len(asked) <= space.size // 10
    assert brute.point.transport == "cuda" and best.point.transport == "cuda"
    assert best.throughput >= 0.85 * brute.throughput
    # the current config re-measured as a finalist uses the best point's transport too
    assert pick_finalists(quick, objective, Variant(4, 2000), 1)[-1].transport == "cuda"


def test_a_config_over_the_budget_at_this_load_is_judged_one_concurrency_step_lower():
    """The GPU case (BENCHMARKS.md, tuning on the GPU): the second instance missed the p99 budget at c=64
    by a fraction of a millisecond; at c=16 it still beats the first instance's best."""
    space = SearchSpace(instances=(1, 2), delays_us=(0, 500, 2000), concurrency=(1, 4, 16, 64))
    figures = {(1, 16): (3000.0, 8.0), (1, 64): (5000.0, 19.0), (2, 16): (5600.0, 6.0), (2, 64): (7300.0, 25.4)}

    def measure(p: Point) -> Measurement:
        thr, p99 = figures.get((p.variant.instances, p.concurrency), (100.0, 1.0))
        return Measurement(p, thr, p99 / 2, p99 / 1.5, p99, throughput_low=thr * 0.98, throughput_high=thr * 1.02)

    objective = Objective("max-throughput", budget_ms=25.0)
    measured = hill_climb(space, measure, objective, start=Point(Variant(1, 500), 16),
                          max_measurements=quick_budget(space.size))
    best = objective.best(measured)
    assert quick_budget(space.size) == 6
    assert best is not None and (best.point.variant.instances, best.point.concurrency) == (2, 16)
