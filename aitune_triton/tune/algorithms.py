"""The search algorithms over a ``SearchSpace``: brute force, and the quick coordinate descent.

The quick search is capped at 10 % of the grid (``quick_budget``): concurrency first (no reload;
upwards only while the point meets the constraint), then the client transport (no reload either),
instance count, queue delay and preferred sizes; a full cycle without a move ends it. A neighbour
replaces the current point only when it is measurably better (``Objective.better``). Both
algorithms only ask a ``Measure`` for points; measuring on a live server is ``measure.LiveRunner``.
"""

from __future__ import annotations

import logging

from aitune_triton.tune.objective import Objective
from aitune_triton.tune.points import Measure, Measurement, Point, Variant
from aitune_triton.tune.space import DIMENSIONS, SearchSpace

log = logging.getLogger(__name__)


QUICK_MIN_POINTS = 6


def quick_budget(grid_size: int) -> int:
    """Points the quick search may measure: 10 % of the grid, but at least ``QUICK_MIN_POINTS``
    (the start, a concurrency step, one neighbour per config dimension and that neighbour one
    concurrency step lower): with 3 points on a 24-point GPU grid the search could not try the
    second instance below the load where it missed the latency budget, and kept a config 1.5x
    slower than brute force's (BENCHMARKS.md, tuning on the GPU). Grids of 60 points and more
    stay at <= 10 %."""
    return min(grid_size, max(QUICK_MIN_POINTS, grid_size // 10))


def brute_force(space: SearchSpace, measure: Measure) -> list[Measurement]:
    return [measure(p) for p in space.points()]


def hill_climb(space: SearchSpace, measure: Measure, objective: Objective, start: Point | None = None,
               min_gain: float = 0.03, max_measurements: int | None = None,
               lookahead: tuple[str, ...] = ("concurrency", "transport")) -> list[Measurement]:
    """Coordinate descent with line search and early stop; returns every measurement made.

    A neighbour replaces the current point only when it is measurably better
    (``Objective.better``: beyond both spreads and by ``min_gain``): on a noisy machine smaller
    "wins" are noise and chasing them costs reloads. For max throughput, concurrency is walked
    down only from a point that misses the constraint, and walked again right after any other
    dimension moved (a new config has its own best load). Along ``lookahead``
    dimensions (concurrency and transport: no reload) a flat or unmeasurable neighbour does not end
    the walk at once: the point one step further is tried too, because throughput over concurrency
    rises in steps (the batcher forms larger batches only past some queue depth), and system shared
    memory may gain nothing where CUDA shared memory does.
    """
    cache: dict[Point, Measurement] = {}

    class Budget(Exception):
        pass

    def m(p: Point) -> Measurement:
        if p not in cache:
            if max_measurements is not None and len(cache) >= max_measurements:
                raise Budget
            cache[p] = measure(p)
        return cache[p]

    def advance(current: Point, best: Measurement, dim: str, step: int) -> Point | None:
        nb = space.shift(current, dim, step)
        if nb is None:
            return None
        if objective.better(m(nb), best, min_gain):
            return nb
        if (dim not in lookahead and "concurrency" in dims and objective.kind == "max-throughput"
                and m(nb).ok and not objective.feasible(m(nb))):
            # a new config has its own best load: one that misses the latency budget at this
            # concurrency is judged one concurrency step lower before it is dropped
            lower = space.shift(nb, "concurrency", -1)
            if lower is not None and objective.better(m(lower), best, min_gain):
                return lower
        if dim in lookahead and step > 0 and (not m(nb).ok or objective.feasible(m(nb))):
            far = space.shift(nb, dim, step)
            if far is not None and objective.better(m(far), best, min_gain):
                return far
        return None

    dims = [d for d in DIMENSIONS if len(space.values(d)) > 1]
    current = start or Point(Variant(space.instances[0], space.delays_us[len(space.delays_us) // 2],
                                     space.preferred[0]), space.concurrency[len(space.concurrency) // 2],
                             space.transports[0])
    direction = {d: 1 for d in dims}
    try:
        best = m(current)
        stale, i = 0, 0
        while dims and stale < len(dims):
            dim = dims[i % len(dims)]
            i += 1
            moved = False
            for step in (direction[dim], -direction[dim]):
                if (dim == "concurrency" and step < 0 and objective.kind == "max-throughput"
                        and objective.feasible(best)):
                    continue  # less load does not serve more where more load met the constraint
                nxt = advance(current, best, dim, step)
                while nxt is not None:
                    current, best, moved, direction[dim] = nxt, m(nxt), True, step
                    nxt = advance(current, best, dim, step)
                if moved:
                    break
            stale = 0 if moved else stale + 1
            if moved and dim != "concurrency" and "concurrency" in dims:
                i = dims.index("concurrency")  # a new config has its own best load: walk concurrency next
    except Budget:
        log.info("search stopped at the measurement budget (%d)", max_measurements)
    return list(cache.values())
