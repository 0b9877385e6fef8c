"""Replay the quick search over the points recorded on the GPU (no server, no GPU).

``tune_vs_model_analyzer.py`` measured the whole 24-point grid (``tune --brute``) and, separately,
what ``tune`` quick saw at the 3 points it measured. This script answers "what would the quick
search choose from those observations with this checkout's rules?": each point returns quick's
own observation where quick measured it, else brute force's. It runs the search as it was on
the GPU (``--before COMMIT``'s ``tune/algorithms.py``) and as it is now, and prints both paths.
It is a replay of recorded figures, not a new measurement.

    .venv/bin/python benchmarks/replay_quick_search.py [--before 1f71bc2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitune_triton.tune.objective import Objective  # noqa: E402
from aitune_triton.tune.points import Measurement, Point, Variant  # noqa: E402
from aitune_triton.tune.space import SearchSpace  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tune_vs_model_analyzer_h200.json"


def _measurement(row: dict) -> Measurement:
    point = Point(Variant(row["instances"], row["max_queue_delay_us"], tuple(row["preferred"])), row["concurrency"],
                  row.get("transport", "none"))
    keys = ("throughput", "p50_ms", "p95_ms", "p99_ms", "status", "detail", "throughput_low", "throughput_high",
            "p99_low", "p99_high")
    return Measurement(point, **{k: row[k] for k in keys}, windows=tuple(row["windows"]))


def _algorithms(commit: str):
    source = subprocess.run(["git", "show", "%s:aitune_triton/tune/algorithms.py" % commit], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "algorithms_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("algorithms_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="1f71bc2", help="the commit whose quick search ran on the GPU")
    args = parser.parse_args()
    data = json.loads(RESULTS.read_text())
    quick, brute = data["methods"][0], data["methods"][1]
    table = {m.point: m for m in map(_measurement, brute["measurements"])}
    table.update({m.point: m for m in map(_measurement, quick["measurements"])})  # what quick itself saw
    space = SearchSpace(instances=(1, 2), delays_us=(0, 500, 2000), concurrency=(1, 4, 16, 64))
    objective = Objective("max-throughput", budget_ms=25.0)
    start = Point(Variant(1, 500), 16)
    from aitune_triton.tune import algorithms as now
    for label, module in (("as run on the GPU (%s)" % args.before, _algorithms(args.before)), ("this checkout", now)):
        asked: list[Point] = []

        def measure(p: Point, asked: list[Point] = asked) -> Measurement:
            asked.append(p)
            return table[p]

        budget = module.quick_budget(space.size)
        measured = module.hill_climb(space, measure, objective, start, 0.03, budget)
        best = objective.best(measured)
        print("%s: budget %d of %d points" % (label, budget, space.size))
        for p in asked:
            m = table[p]
            print("  %-28s %7.1f infer/s  p99 %6.2f ms%s" % (p.label(), m.throughput, m.p99_ms,
                                                           "" if objective.feasible(m) else "  (over budget)"))
        print("  best: %s" % (best.point.label() if best else None))


if __name__ == "__main__":
    main()
