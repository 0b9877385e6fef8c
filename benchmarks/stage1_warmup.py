"""Stage-1 timing with and without the warm-up pass over every format and batch size.

Each protocol runs in a fresh process (the cold start being measured is the process's own):

* ``per-batch``: what stage-1 did before: 3 warm-up calls per candidate right before each batch
  size is timed, batch 1 first;
* ``warm-up pass``: ``strategies.warm_up`` runs every candidate at every batch size first
  (>= 3 calls and >= 0.25 s each), then the same timing.

Prints one JSON line per protocol: the median ms per candidate and batch, and batch-1 time over
batch-8 time (a batch-1 call costing more than a batch-8 call is the cold start showing).

    .venv/bin/python benchmarks/stage1_warmup.py examples/cnn/model.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BATCHES = (1, 2, 4, 8)
FORMATS = ("export", "eager")


def measure(model_py: Path, protocol: str) -> dict:
    from aitune_triton.prepared import _build_fallback, prepare
    from aitune_triton.export.torch_export import load_runner
    from aitune_triton.spec import call_with_feed, sample_feed
    from aitune_triton.tune.candidates import measure_candidates, tile_batch
    from aitune_triton.tune.strategies import warm_up

    prep = prepare(model_py, {"device": "cpu"})
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            trial = Path(tmp) / fmt
            trial.mkdir()
            _build_fallback(prep, trial, fmt)
            runner = load_runner(trial, fmt, "cpu", prep.spec)
            runs[fmt] = lambda feed, r=runner: call_with_feed(r, prep.spec, feed)
        feed = sample_feed(prep.spec, prep.source.samples[0])

        def make_batch(b: int):
            return tile_batch(feed, b)

        if protocol == "warm-up pass":
            warm_up(runs, make_batch, BATCHES)
            timings = measure_candidates(runs, make_batch, BATCHES, warmup=1)
        else:
            timings = measure_candidates(runs, make_batch, BATCHES, warmup=3)
    medians = {n: {t.batch: round(t.median_ms, 3) for t in ts} for n, ts in timings.items()}
    return {"protocol": protocol, "median_ms": medians,
            "b1_over_b8": {n: round(m[1] / m[8], 2) for n, m in medians.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_py", type=Path)
    parser.add_argument("--protocol", choices=("per-batch", "warm-up pass"))
    args = parser.parse_args()
    if args.protocol:
        print(json.dumps(measure(args.model_py, args.protocol)))
        return
    for protocol in ("per-batch", "warm-up pass"):
        subprocess.run([sys.executable, __file__, str(args.model_py), "--protocol", protocol], check=True)


if __name__ == "__main__":
    main()
