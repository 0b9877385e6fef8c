"""Benchmark (not a test): quick search vs brute force for stage-2 tuning on the CPU example.

Generates ``examples/cnn/model.py`` (ExportedProgram fallback, Python backend only), starts the
embedded tritonserver, then tunes the model twice over the same grid with real perf_analyzer
measurements: the default quick search (coordinate descent) and the full grid (``brute=True``),
the original config restored in between. The grid includes client concurrency, which costs no
reload, so that "10 % of the grid" is a meaningful number of points.

How close the quick search came is reported three ways, because a brute-force maximum over ~150
noisy points is biased upwards (the luckiest measurement wins):

* raw: quick's best measurement / brute force's best measurement;
* in-sweep: brute force's own measurement of quick's chosen point / brute force's best;
* re-measured: both chosen points measured again, alternating, ``--repeats`` times each; ratio of medians.

Usage: ``.venv/bin/python benchmarks/tune_search.py [--budget-ms 25] [--repeats 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitune_triton.api import generate  # noqa: E402
from aitune_triton.triton.manifest import Manifest  # noqa: E402
from aitune_triton.triton.render import parse_config  # noqa: E402
from aitune_triton.triton.server import ServerOptions, TritonServer  # noqa: E402
from aitune_triton.tune.search import (  # noqa: E402
    LiveRunner,
    Measurement,
    Point,
    TuneOptions,
    TuneResult,
    hill_climb,
    perf_inputs,
    tune_model,
)

MODEL = "cnn"
INSTANCES = (1, 2)
DELAYS_US = (0, 100, 250, 500, 1000, 2000, 4000, 8000)
CONCURRENCY = (1, 2, 4, 6, 8, 12, 16, 24, 32)


def remeasure(server, repo: Path, points, repeats: int, workdir: Path) -> list[list[Measurement]]:
    """Each point measured ``repeats`` times, alternating between points (each switch reloads)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = repo / MODEL
    manifest = Manifest.load(model_dir)
    base = parse_config((model_dir / "config.pbtxt.bak").read_text())
    perf = perf_inputs(model_dir, manifest, TuneOptions().perf, workdir)
    runner = LiveRunner(server, MODEL, base, manifest.max_batch_size, 0, perf, workdir / "perf")
    runs: list[list[Measurement]] = [[] for _ in points]
    for _ in range(repeats):
        for i, point in enumerate(points):
            runs[i].append(runner(point))
    return runs


def replay(brute: TuneResult, min_gain: float) -> dict:
    """The quick search re-run offline over brute force's measured table, from every config of
    the grid as the start (at the middle concurrency): no new measurements, same noise."""
    table = {m.point: m for m in brute.measurements}
    best = brute.objective.best(table.values())
    space = brute.space
    fractions, counts = [], []
    for variant in space.variants():
        start = Point(variant, space.concurrency[len(space.concurrency) // 2])
        measured = hill_climb(space, table.__getitem__, brute.objective, start, min_gain)
        found = brute.objective.best(measured)
        fractions.append(found.throughput / best.throughput if found else 0.0)
        counts.append(len(measured))
    return {"starts": len(fractions), "fraction_median": statistics.median(fractions), "fraction_min": min(fractions),
            "at_least_97": sum(f >= 0.97 for f in fractions), "points_median": statistics.median(counts),
            "points_max": max(counts)}


def median_throughput(ms: list[Measurement]) -> float:
    ok = [m.throughput for m in ms if m.ok]
    return statistics.median(ok) if ok else 0.0


def row(name: str, r: TuneResult, wall: float) -> str:
    c = r.objective.best(r.measurements) if r.mode == "brute" else r.chosen
    chosen = "%s @ c=%d" % (c.point.variant.label(), c.point.concurrency) if c else "none feasible"
    return "| %s | %d | %d | %.1f %% | %d of %d | %.0f | %s | %.1f | %.2f |" % (
        name, r.measured, r.grid_size, 100.0 * r.measured / r.grid_size, r.loads, len(r.space.variants()), wall,
        chosen, c.throughput if c else 0.0, c.p99_ms if c else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-ms", type=float, default=25.0, help="p99 budget (max-throughput objective)")
    ap.add_argument("--repeats", type=int, default=5, help="re-measurements of each chosen point")
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--quick-only", action="store_true", help="skip brute force (a fast smoke run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("aitune_triton.triton.perf").setLevel(logging.WARNING)

    work = args.out or Path(tempfile.mkdtemp(prefix="tune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    generate(ROOT / "examples" / "cnn" / "model.py", repo, force=True,
             overrides={"fallback_format": "export", "backends": ("python",)})
    original = (repo / MODEL / "config.pbtxt").read_text()
    grid = dict(instances=INSTANCES, delays_us=DELAYS_US, concurrency=CONCURRENCY, budget_ms=args.budget_ms)
    results: dict[str, tuple[TuneResult, float]] = {}
    with TritonServer(repo, ServerOptions(), log_path=work / "tritonserver.log") as server:
        for mode in ("quick",) if args.quick_only else ("quick", "brute"):
            (repo / MODEL / "config.pbtxt").write_text(original)
            t0 = time.monotonic()
            r = tune_model(repo, MODEL, server, TuneOptions(brute=mode == "brute", report_dir=work / mode, **grid))
            results[mode] = (r, time.monotonic() - t0)
        quick = results["quick"][0]
        brute = results.get("brute", (None,))[0]
        figures = {"budget_ms": args.budget_ms, "grid_size": quick.grid_size}
        # brute force's best measurement, not its written choice (which keeps the current config
        # when nothing beats it by min_gain): the reference is the grid's maximum as measured
        best = brute.objective.best(brute.measurements) if brute is not None else None
        if best is not None and quick.chosen:
            in_sweep = next((m for m in brute.measurements if m.point == quick.chosen.point), None)
            figures["brute_best"] = best.to_dict()
            figures["raw"] = quick.chosen.throughput / best.throughput
            figures["in_sweep"] = in_sweep.throughput / best.throughput if in_sweep else None
            figures["in_sweep_feasible"] = bool(in_sweep and brute.objective.feasible(in_sweep))
            figures["replay"] = replay(brute, TuneOptions().min_gain)
            figures["same_point"] = quick.chosen.point == best.point
            if figures["same_point"]:
                figures["remeasured"] = 1.0
            else:
                runs = remeasure(server, repo, [quick.chosen.point, best.point], args.repeats, work / "again")
                q, b = median_throughput(runs[0]), median_throughput(runs[1])
                figures["remeasured"] = q / b if b else None
                figures["remeasured_runs"] = [[m.to_dict() for m in rs] for rs in runs]

    print()
    print("CPU example `examples/cnn` (ExportedProgram in the Python backend), objective: max throughput with "
          "p99 <= %g ms; grid %d instance counts x %d queue delays x %d client concurrencies = %d points "
          "(%d configs)." % (args.budget_ms, len(INSTANCES), len(DELAYS_US), len(CONCURRENCY), quick.grid_size,
                             len(quick.space.variants())))
    print()
    print("| search | points measured | grid | fraction | loads (of configs) | wall s | chosen | infer/s | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (r, wall) in results.items():
        print(row(name, r, wall))
    if "raw" in figures:
        print()
        print("| quick vs brute force best | fraction |")
        print("|---|---|")
        print("| raw (each search's own best measurement) | %.1f %% |" % (100 * figures["raw"]))
        if figures["in_sweep"] is not None:
            print("| in-sweep (brute force's measurement of quick's point) | %.1f %%%s |" % (
                100 * figures["in_sweep"], "" if figures["in_sweep_feasible"] else " (over budget there)"))
        if figures.get("remeasured") is not None:
            print("| re-measured, median of %d alternating runs each | %.1f %%%s |" % (
                args.repeats, 100 * figures["remeasured"], " (same point)" if figures["same_point"] else ""))
        rp = figures["replay"]
        print("| offline replay over brute force's table, %d start configs: median (min) | %.1f %% (%.1f %%); "
              "%d of %d starts >= 97 %%; %g (max %d) points |" % (
                  rp["starts"], 100 * rp["fraction_median"], 100 * rp["fraction_min"], rp["at_least_97"],
                  rp["starts"], rp["points_median"], rp["points_max"]))
    figures["results"] = {name: {**{k: v for k, v in r.to_dict().items() if k != "measurements"}, "wall_s": wall}
                          for name, (r, wall) in results.items()}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nwork dir: %s" % work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
