"""Benchmark (not a test): does the tuner's choice survive noise? Quick search twice vs brute force.

Generates ``examples/cnn/model.py`` (ExportedProgram fallback, Python backend only), starts the
embedded tritonserver, and tunes the model over issue 18's grid (instances {1, 2} x queue delay
{0, 500, 1000, 2000, 4000} us x concurrency {1, 2, 4, 8, 16, 32} = 60 points; max throughput with
p99 <= 25 ms) with real perf_analyzer measurements, each run starting from the generated config:

1. quick search, run 1; 2. quick search, run 2; 3. brute force (unless ``--skip-brute``).

Each run ends with its own interleaved re-measurement of its finalists (that is how ``tune``
chooses). Then the runs' choices are re-measured together, interleaved (A B C A B C ...),
``--rounds`` times: the choices are "within each other's spread" when their min-max intervals
over those rounds overlap. The 1-minute load average is recorded before and after each phase,
because the machine's other load is the noise in question. Figures go to stdout (Markdown) and
``--json``, written after every phase so an interrupted run keeps what it measured.

Usage: ``.venv/bin/python benchmarks/tune_search.py [--budget-ms 25] [--rounds 4] [--skip-brute] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aitune_triton.api import generate  # noqa: E402
from aitune_triton.triton.manifest import Manifest  # noqa: E402
from aitune_triton.triton.render import parse_config  # noqa: E402
from aitune_triton.triton.launch import ServerOptions  # noqa: E402
from aitune_triton.triton.server import TritonServer  # noqa: E402
from aitune_triton.tune.measure import LiveRunner, remeasure  # noqa: E402
from aitune_triton.tune.points import Measurement  # noqa: E402
from aitune_triton.tune.options import TuneOptions  # noqa: E402
from aitune_triton.tune.result import TuneResult  # noqa: E402
from aitune_triton.tune.search import perf_inputs, tune_model  # noqa: E402

MODEL = "cnn"
INSTANCES = (1, 2)
DELAYS_US = (0, 500, 1000, 2000, 4000)
CONCURRENCY = (1, 2, 4, 8, 16, 32)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def spread(m: Measurement) -> str:
    if m.throughput is None:
        return "—"
    return "%.0f (%.0f–%.0f)" % (m.throughput, m.lo, m.hi)


def summary(name: str, r: TuneResult, wall: float, loads: tuple[float, float]) -> dict:
    c = r.chosen
    return {"run": name, "wall_s": round(wall, 1), "measured": r.measured, "grid": r.grid_size,
            "remeasured": r.remeasured, "loads": r.loads, "statuses": r.status_counts,
            "chosen": c.to_dict() if c else None, "chosen_label": c.point.label() if c else None,
            "reason": r.reason, "improvement": r.improvement, "ties": [p.label() for p in r.ties],
            "load_avg": list(loads), "finalists": [f.to_dict() for f in r.finalists]}


def overlap(a: Measurement, b: Measurement) -> bool:
    return a.ok and b.ok and a.lo <= b.hi and b.lo <= a.hi


def cross(server, repo: Path, original: str, results: dict, rounds: int, work: Path) -> dict:
    """The runs' choices re-measured together, interleaved, from the generated config."""
    points = list(dict.fromkeys(r.chosen.point for r in results.values() if r.chosen is not None))
    if not points:
        return {}
    model_dir = repo / MODEL
    manifest = Manifest.load(model_dir)
    base = parse_config(original)
    work.mkdir(parents=True, exist_ok=True)
    perf = perf_inputs(model_dir, manifest, TuneOptions().perf, work)
    runner = LiveRunner(server, MODEL, base, manifest.max_batch_size, 0, perf, work / "perf")
    before = load()
    summaries = [f.summary() for f in remeasure(runner, points, rounds)]
    pairs = {"%s vs %s" % (a.point.label(), b.point.label()): overlap(a, b)
             for i, a in enumerate(summaries) for b in summaries[i + 1:]}
    return {"rounds": rounds, "load_avg": [before, load()], "points": [m.to_dict() for m in summaries],
            "labels": [m.point.label() for m in summaries], "within_each_others_spread": pairs}


def print_tables(figures: dict) -> None:
    print("\nCPU example `examples/cnn` (ExportedProgram in the Python backend), objective max throughput with "
          "p99 <= %g ms; grid %d instance counts x %d queue delays x %d client concurrencies = %d points." % (
              figures["budget_ms"], len(INSTANCES), len(DELAYS_US), len(CONCURRENCY), figures["grid"]))
    print("\n| run | points measured / grid | unsettled | finalist re-measurements | loads | wall s | load avg "
          "start→end | choice | median infer/s (min–max over rounds) | p99 ms | claim |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in figures["runs"]:
        c = s["chosen"]
        unsettled = ", ".join("%d %s" % (n, k) for k, n in s["statuses"].items() if k != "ok") or "none"
        claim = ("%.2fx over the current config" % s["improvement"]) if s["improvement"] else "none"
        print("| %s | %d / %d (%.0f %%) | %s | %d | %d | %.0f | %.1f→%.1f | %s | %s | %s | %s |" % (
            s["run"], s["measured"], s["grid"], 100.0 * s["measured"] / s["grid"], unsettled, s["remeasured"],
            s["loads"], s["wall_s"], s["load_avg"][0], s["load_avg"][1], s["chosen_label"] or "none",
            "%.0f (%.0f–%.0f)" % (c["throughput"], c["throughput_low"], c["throughput_high"]) if c else "—",
            "%.2f" % c["p99_ms"] if c else "—", claim))
    for key in ("cross_quick", "cross_all"):
        x = figures.get(key)
        if not x:
            continue
        print("\nChoices re-measured together, interleaved, %d rounds (load avg %.1f→%.1f):\n" % (
            x["rounds"], x["load_avg"][0], x["load_avg"][1]))
        print("| choice | median infer/s | min–max | median p99 ms | status |")
        print("|---|---|---|---|---|")
        for label, p in zip(x["labels"], x["points"], strict=True):
            print("| %s | %s | %s–%s | %s | %s |" % (label, p["throughput"], p["throughput_low"],
                                                     p["throughput_high"], p["p99_ms"], p["detail"] or p["status"]))
        for pair, ok in x["within_each_others_spread"].items():
            print("- %s: %s" % (pair, "within each other's spread" if ok else "spreads apart"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-ms", type=float, default=25.0, help="p99 budget (max-throughput objective)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds when re-measuring the runs' choices")
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here (after every phase)")
    ap.add_argument("--skip-brute", action="store_true", help="only the two quick runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("aitune_triton.triton.perf").setLevel(logging.WARNING)

    work = args.out or Path(tempfile.mkdtemp(prefix="tune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    generate(ROOT / "examples" / "cnn" / "model.py", repo, force=True,
             overrides={"fallback_format": "export", "backends": ("python",)})
    config = repo / MODEL / "config.pbtxt"
    original = config.read_text()
    grid = dict(instances=INSTANCES, delays_us=DELAYS_US, concurrency=CONCURRENCY, budget_ms=args.budget_ms)
    figures: dict = {"budget_ms": args.budget_ms, "grid": len(INSTANCES) * len(DELAYS_US) * len(CONCURRENCY),
                     "machine": "%d usable cores, %s" % (len(os.sched_getaffinity(0)), os.uname().release),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")

    results: dict[str, TuneResult] = {}
    runs = ["quick 1", "quick 2"] + ([] if args.skip_brute else ["brute"])
    with TritonServer(repo, ServerOptions(), log_path=work / "tritonserver.log") as server:
        for name in runs:
            config.write_text(original)  # every run starts from the generated config
            server.load_model(MODEL)
            before, t0 = load(), time.monotonic()
            options = TuneOptions(brute=name == "brute", report_dir=work / name.replace(" ", "_"), **grid)
            r = tune_model(repo, MODEL, server, options)
            results[name] = r
            figures["runs"].append(summary(name, r, time.monotonic() - t0, (before, load())))
            save()
            if name == "quick 2":
                figures["cross_quick"] = cross(server, repo, original, {k: results[k] for k in ("quick 1", "quick 2")},
                                               args.rounds, work / "cross_quick")
                save()
        if "brute" in results:
            figures["cross_all"] = cross(server, repo, original, results, args.rounds, work / "cross_all")
            save()
    print_tables(figures)
    print("\nwork dir: %s" % work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
