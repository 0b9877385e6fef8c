"""Stage-1 tuning inputs: candidate runners, their accuracy against eager, in-process timing.

At generate time there is no server yet, and the question "which artifact (AOTInductor,
ExportedProgram, a TensorRT plan per precision, eager) is fastest while still accurate" is a
property of the artifact, not of Triton, so it is answered in-process: accuracy against the
eager reference outputs within the tolerance of the candidate's precision, then latency at a
few batch sizes. Triton's own settings are searched later on the live server (``search.py``).

Timings are interleaved across candidates (round-robin, rotating the order every round) and
summarised by the median: on a shared machine a burst of background load then hits every
candidate alike instead of penalising whichever happened to run during it.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from aitune_triton.numerics import DEFAULT_TOLERANCES, Tolerance, compare

log = logging.getLogger(__name__)

Feed = Mapping[str, torch.Tensor]
RunFn = Callable[[Feed], Any]
MakeBatch = Callable[[int], Feed]

# Precision of the compute, not of the I/O: a TensorRT fp16 plan still returns fp32 tensors but
# carries fp16 rounding, so its outputs are judged with the fp16 tolerance. int8/fp8 defaults are
# deliberately loose; pass an explicit tolerance where the model's output scale is known.
PRECISION_TOLERANCES = {
    "fp32": DEFAULT_TOLERANCES["float32"],
    "tf32": Tolerance(1e-3, 1e-3),
    "fp16": DEFAULT_TOLERANCES["float16"],
    "bf16": DEFAULT_TOLERANCES["bfloat16"],
    "int8": Tolerance(1e-1, 1e-1),
    "fp8": Tolerance(1e-1, 1e-1),
}


@dataclass(frozen=True)
class Candidate:
    """One way to run the model. ``run`` maps a feed (input name -> tensor) to the outputs: a
    mapping by output name, a sequence in reference order, or a single tensor.
    ``backend`` "eager" marks the reference the others must beat by the selection margin.
    ``tolerance``: one for every output, or one per output name (stage 1 judges each output by
    its dtype and the user's override, as the fallback's build check does); an output it does not
    name, or None, gets the tolerance of ``precision``."""

    name: str
    backend: str
    precision: str
    run: RunFn
    tolerance: Tolerance | Mapping[str, Tolerance] | None = None

    @property
    def effective_tolerance(self) -> Tolerance:
        """The tolerance of an output ``tolerance`` does not name."""
        if isinstance(self.tolerance, Tolerance):
            return self.tolerance
        return PRECISION_TOLERANCES.get(self.precision, DEFAULT_TOLERANCES["float32"])

    def output_tolerance(self, name: str) -> Tolerance:
        if isinstance(self.tolerance, Mapping) and name in self.tolerance:
            return self.tolerance[name]
        return self.effective_tolerance

    @property
    def is_eager(self) -> bool:
        return self.backend == "eager"


@dataclass(frozen=True)
class OutputError:
    """Worst error of one output over all samples, and the tolerance it was judged by."""

    name: str
    max_abs: float
    max_rel: float
    mismatched: float
    ok: bool
    detail: str = ""
    tolerance: Tolerance | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel,
             "mismatched": self.mismatched, "ok": self.ok, "detail": self.detail}
        if self.tolerance is not None:
            d["tolerance"] = self.tolerance.to_dict()
        return d


@dataclass(frozen=True)
class AccuracyReport:
    """A candidate's accuracy: ``tolerance`` is the candidate's default (``effective_tolerance``);
    each output row carries the tolerance it was actually judged by."""

    candidate: str
    tolerance: Tolerance
    outputs: tuple[OutputError, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.outputs) and all(o.ok for o in self.outputs)

    def summary(self) -> str:
        if self.error:
            return "error: %s" % self.error
        bad = [o for o in self.outputs if not o.ok]
        worst = max(self.outputs, key=lambda o: o.max_abs, default=None)
        if not bad:
            return "ok (max abs %.2g)" % (worst.max_abs if worst else 0.0)
        o = bad[0]
        tol = o.tolerance or self.tolerance
        return "%s: %s" % (o.name, o.detail or "max abs %.2g > atol %g + rtol %g" % (o.max_abs, tol.atol, tol.rtol))

    def to_dict(self) -> dict:
        return {"ok": self.ok, "atol": self.tolerance.atol, "rtol": self.tolerance.rtol, "error": self.error,
                "outputs": [o.to_dict() for o in self.outputs]}


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, order="C"))  # a 0-d output stays 0-d (not ascontiguousarray)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError("output is a %s, not a tensor" % type(value).__name__)


def named_outputs(outputs: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Match a run's outputs to the reference names (by name, by position, or a lone tensor)."""
    if isinstance(outputs, Mapping):
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ValueError("outputs %s missing (got %s)" % (missing, sorted(outputs)))
        return {n: _as_tensor(outputs[n]) for n in names}
    if isinstance(outputs, (torch.Tensor, np.ndarray)):
        outputs = [outputs]
    outputs = list(outputs)
    if len(outputs) != len(names):
        raise ValueError("%d outputs returned, %d expected (%s)" % (len(outputs), len(names), list(names)))
    return {n: _as_tensor(v) for n, v in zip(names, outputs, strict=True)}


def compare_output(name: str, got: torch.Tensor, want: torch.Tensor, tol: Tolerance) -> OutputError:
    """One output against its reference by ``numerics.compare`` (the package's one comparison
    rule), as the selection table's row."""
    c = compare(got, want, tol)
    return OutputError(name, c.max_abs, c.max_rel, c.bad_fraction, c.ok, c.reason or "", tol)


def check_accuracy(candidate: Candidate, feeds: Sequence[Feed],
                   references: Sequence[Mapping[str, Any]]) -> AccuracyReport:
    """Run the candidate on every sample and keep, per output, the worst error over samples."""
    tol = candidate.effective_tolerance
    if len(feeds) != len(references):
        raise ValueError("%d feeds but %d reference outputs" % (len(feeds), len(references)))
    worst: dict[str, OutputError] = {}
    try:
        with torch.inference_mode():
            for feed, ref in zip(feeds, references, strict=True):
                names = list(ref)
                got = named_outputs(candidate.run(feed), names)
                for n in names:
                    e = compare_output(n, got[n], _as_tensor(ref[n]), candidate.output_tolerance(n))
                    prev = worst.get(n)
                    if prev is None:
                        worst[n] = e
                    else:
                        worst[n] = OutputError(n, max(prev.max_abs, e.max_abs), max(prev.max_rel, e.max_rel),
                                               max(prev.mismatched, e.mismatched), prev.ok and e.ok,
                                               prev.detail or e.detail, e.tolerance)
    except Exception as exc:  # a candidate that cannot even run is rejected, not fatal
        log.warning("candidate %s failed the accuracy run: %s", candidate.name, exc)
        return AccuracyReport(candidate.name, tol, tuple(worst.values()), "%s: %s" % (type(exc).__name__, exc))
    return AccuracyReport(candidate.name, tol, tuple(worst.values()))


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Latency of one call at one batch size: median and p90 over ``runs`` timed calls."""

    batch: int
    median_ms: float
    p90_ms: float
    runs: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.runs > 0

    @property
    def throughput(self) -> float:
        """Items per second at this batch size."""
        return self.batch * 1000.0 / self.median_ms if self.ok and self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"batch": self.batch, "median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs,
                "throughput": self.throughput, "error": self.error}


def feed_device(feed: Feed) -> torch.device:
    for t in feed.values():
        if isinstance(t, torch.Tensor) and t.is_cuda:
            return t.device
    return torch.device("cpu")


def time_call(run: RunFn, feed: Feed) -> float:
    """Milliseconds of one call: CUDA events on a GPU feed (host timers miss queued kernels),
    ``time.perf_counter`` on the CPU."""
    device = feed_device(feed)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        run(feed)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    run(feed)
    return (time.perf_counter() - t0) * 1000.0


def _summarise(batch: int, samples: list[float]) -> Timing:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return Timing(batch, statistics.median(ordered), p90, len(ordered))


def measure_candidates(runs: Mapping[str, RunFn], make_batch: MakeBatch, batch_sizes: Sequence[int], *,
                       warmup: int = 3, rounds: int = 7, per_round: int = 3) -> dict[str, tuple[Timing, ...]]:
    """Timings per candidate and batch size, interleaved round-robin across candidates.

    A candidate that fails at some batch (e.g. out of memory at max batch) gets an error timing
    for that batch and is skipped for the rest of it; other batch sizes still count.
    """
    out: dict[str, list[Timing]] = {name: [] for name in runs}
    names = list(runs)
    with torch.inference_mode():
        for batch in sorted(set(int(b) for b in batch_sizes)):
            feed = make_batch(batch)
            samples: dict[str, list[float]] = {n: [] for n in names}
            failed: dict[str, str] = {}
            for n in names:
                try:
                    for _ in range(warmup):
                        runs[n](feed)
                except Exception as exc:
                    failed[n] = "%s: %s" % (type(exc).__name__, exc)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    if n in failed:
                        continue
                    try:
                        samples[n].extend(time_call(runs[n], feed) for _ in range(per_round))
                    except Exception as exc:
                        failed[n] = "%s: %s" % (type(exc).__name__, exc)
            for n in names:
                if n in failed:
                    log.warning("candidate %s failed at batch %d: %s", n, batch, failed[n])
                    out[n].append(Timing(batch, float("nan"), float("nan"), 0, failed[n]))
                else:
                    out[n].append(_summarise(batch, samples[n]))
            del feed
    return {n: tuple(t) for n, t in out.items()}


def tile_batch(feed: Feed, batch: int) -> dict[str, torch.Tensor]:
    """A feed of ``batch`` items built by cycling the items of ``feed`` along axis 0 (tensors
    without axes are passed through)."""
    out = {}
    for name, t in feed.items():
        if t.dim() == 0:
            out[name] = t
        else:
            idx = torch.arange(batch, device=t.device) % t.shape[0]
            out[name] = t.index_select(0, idx).contiguous()
    return out
