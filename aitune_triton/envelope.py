"""The serving envelope: the sizes every input axis of the generated models accepts, chosen for serving.

Samples show the shapes a user happened to have at hand (sequences of 16 and 32, batches up to 4);
traffic brings others. So each axis's range is decided on purpose, in this order:

* **declared**: ``GenerateConfig.axis_ranges`` (``--axis input_ids:1=1..512``) and ``max_batch_size``
  (``--max-batch-size``) are taken as given (eager is run at the declared ends, so a range the model
  cannot take fails here, in one line, not in production);
* **model config**: a limit the model states itself (Hugging Face ``max_position_embeddings``,
  ``n_positions``, ``max_source_positions`` on ``model.config``) bounds the token axes of its integer
  inputs;
* **probe**: otherwise the axis grows x2, x4, ... beyond the samples' largest size, up to
  ``AXIS_GROWTH_CAP`` times it (or the model's limit), while eager PyTorch takes the size, its outputs
  stay finite and one batch-1 forward stays under ``AXIS_PROBE_MAX_MS`` (on CUDA also under half
  the device's memory); the low end is tried down to 1 the same way;
* **measurement**: ``max_batch_size`` doubles on the target device while rows/s still improves by
  ``BATCH_GAIN`` and the batch's latency stays inside ``--budget-ms`` (else ``BATCH_PROBE_MAX_MS``),
  up to the device's cap; the curve (batch -> latency, rows/s) goes into the manifest. A model whose
  rows were found not independent keeps the samples' batch (requests are never merged for it).

Every probe runs eager PyTorch in this process on sizes built from the samples (axes tiled or cut,
so paired inputs such as ids and their mask stay paired). The exported fallback is then compared
with eager at the envelope's corners (``export/torch_export.reference_cases``), the runtime refuses
anything outside the envelope with a 400 naming the range, and ``validate`` sends the corners and one
shape just outside each bound.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Sequence

import torch

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, AxisSpec, IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed

log = logging.getLogger(__name__)

Feed = dict[str, torch.Tensor]
AxisRanges = dict[str, dict[int, tuple[int, int]]]  # input -> axis -> (lo, hi), as GenerateConfig declares them
# the limits a Hugging Face config states for the token axis (on ``model.config``)
MODEL_LIMITS = ("max_position_embeddings", "n_positions", "max_source_positions")
WIDEN_HINT = "--axis %s:%d=LO..HI (axis_ranges in get_config())"


class Source(str, Enum):
    """How a range was chosen."""

    SAMPLES = "samples"
    DECLARED = "declared"
    MODEL_CONFIG = "model config"
    PROBE = "probe"
    MEASUREMENT = "measurement"


@dataclass(frozen=True)
class AxisRange:
    """The sizes one input axis accepts and how that was decided."""

    input: str
    axis: int
    lo: int
    hi: int
    source: Source
    detail: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise UserError("axis range %s axis %d: need 1 <= lo <= hi, got %d..%d"
                            % (self.input, self.axis, self.lo, self.hi))

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "axis": self.axis, "min": self.lo, "max": self.hi,
                "source": self.source.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AxisRange":
        return cls(str(d["input"]), int(d["axis"]), int(d["min"]), int(d["max"]), Source(d["source"]),
                   str(d.get("detail", "")))


@dataclass(frozen=True)
class BatchPoint:
    """One point of the measured batch curve (eager PyTorch on the target device)."""

    batch: int
    latency_ms: float
    rows_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "latency_ms": round(self.latency_ms, 3), "rows_per_s": round(self.rows_per_s, 1)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchPoint":
        return cls(int(d["batch"]), float(d["latency_ms"]), float(d["rows_per_s"]))


@dataclass(frozen=True)
class Envelope:
    """The accepted range of the batch and of every dynamic axis (``axes``); ``max_batch_size`` 0:
    no batch axis. Static axes accept their one size and are not listed."""

    max_batch_size: int
    batch_source: Source = Source.SAMPLES
    batch_detail: str = ""
    axes: tuple[AxisRange, ...] = ()
    curve: tuple[BatchPoint, ...] = ()
    seconds: float = 0.0  # spent probing and measuring (not written: a manifest must not change run to run)
    # estimated eager milliseconds of one forward at max batch with every axis at its max: the
    # joint corner is checked (export check, validate) only when it is affordable; None: not estimated
    corner_ms: float | None = None

    def joint_corner_ok(self) -> bool:
        return self.corner_ms is None or self.corner_ms <= defaults.CORNER_MAX_MS

    def readme_lines(self, spec: IOSpec) -> tuple[str, ...]:
        return self.lines(spec, detail=True)

    def ranges(self, name: str) -> dict[int, AxisRange]:
        return {r.axis: r for r in self.axes if r.input == name}

    def lines(self, spec: IOSpec, detail: bool = False) -> tuple[str, ...]:
        """One line per input: ``input_ids: batch 1..64, axis 1: 1..512 (batch: measurement; axis 1: model
        config)``; ``detail`` adds why each range stops where it does."""
        out = []
        for t in spec.inputs:
            parts, how = [], []
            if t.has_batch and self.max_batch_size:
                parts.append("batch 1..%d" % self.max_batch_size)
                how.append("batch: %s%s" % (self.batch_source.value,
                                            ", %s" % self.batch_detail if self.batch_detail and detail else ""))
            ranges = self.ranges(t.name)
            fixed = []
            for i, a in enumerate(t.axes):
                if i == 0 and t.has_batch:
                    continue
                r = ranges.get(i)
                if r is not None:
                    parts.append("axis %d: %d..%d" % (i, r.lo, r.hi))
                    how.append("axis %d: %s%s" % (i, r.source.value, ", %s" % r.detail if r.detail and detail else ""))
                else:
                    fixed.append("axis %d: %d" % (i, a.max))
            parts.extend(fixed)
            if not parts:
                parts.append("a scalar")
            out.append("%s: %s%s" % (t.name, ", ".join(parts), " (%s)" % "; ".join(how) if how else ""))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "batch_source": self.batch_source.value,
                "batch_detail": self.batch_detail, "axes": [r.to_dict() for r in self.axes],
                "batch_curve": [p.to_dict() for p in self.curve],
                "corner_ms": None if self.corner_ms is None else round(self.corner_ms, 1)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Envelope":
        return cls(int(d["max_batch_size"]), Source(d.get("batch_source", "samples")), str(d.get("batch_detail", "")),
                   tuple(AxisRange.from_dict(r) for r in d.get("axes", [])),
                   tuple(BatchPoint.from_dict(p) for p in d.get("batch_curve", [])),
                   corner_ms=None if d.get("corner_ms") is None else float(d["corner_ms"]))


# ----------------------------------------------------------------------------- declared ranges


def parse_axis_option(text: str) -> tuple[str, int, tuple[int, int]]:
    """``input_ids:1=1..512`` (the CLI's ``--axis``) as (input, axis, (lo, hi)); ``=N`` fixes one size."""
    name, sep, rest = text.partition(":")
    axis, eq, bounds = rest.partition("=")
    lo, dots, hi = bounds.partition("..")
    try:
        if not (sep and eq and name) or (dots and not hi):
            raise ValueError(text)
        parsed = (int(lo), int(hi if dots else lo))
        return name, int(axis), parsed
    except ValueError:
        raise UserError("--axis %r: write INPUT:AXIS=LO..HI, e.g. input_ids:1=1..512" % text) from None


def parse_axis_options(values: Sequence[str]) -> AxisRanges:
    out: AxisRanges = {}
    for text in values:
        name, axis, bounds = parse_axis_option(text)
        out.setdefault(name, {})[axis] = bounds
    return out


def check_declared(spec: IOSpec, declared: Mapping[str, Mapping[int, tuple[int, int]]]) -> None:
    """Declared ranges name real inputs and axes (not the batch: that is ``max_batch_size``) and
    hold every size the samples have (the samples are replayed by validate)."""
    names = [t.name for t in spec.inputs]
    for name, axes in declared.items():
        if name not in names:
            raise UserError("axis_ranges names unknown input %r; the inputs are %s" % (name, names))
        t = spec.input(name)
        for axis, (lo, hi) in axes.items():
            if not 0 <= axis < t.rank:
                raise UserError("axis_ranges[%r] names axis %d but the input has rank %d" % (name, axis, t.rank))
            if axis == 0 and t.has_batch:
                raise UserError("axis_ranges[%r] names axis 0, the batch axis: set max_batch_size "
                                "(--max-batch-size) instead" % name)
            a = t.axes[axis]
            if lo > a.min or hi < a.max:
                raise UserError("axis_ranges[%r][%d] = %d..%d leaves out sizes the samples have (%d..%d); widen it"
                                % (name, axis, lo, hi, a.min, a.max))


# ----------------------------------------------------------------------------- probing


def _resize_axis(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``size`` entries along ``axis``: the tensor's own entries cut or repeated cyclically."""
    return t.index_select(axis, torch.arange(size, device=t.device) % t.shape[axis])


def resize_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    return _resize_axis(t, 0, batch)


@dataclass
class _Clock:
    """The probing budget shared by every axis and the batch curve."""

    budget_s: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)


@dataclass(frozen=True)
class _Runner:
    model: Any
    spec: IOSpec
    device: str

    def run(self, feed: Feed) -> tuple[float, str | None]:
        """(milliseconds, None) when eager takes ``feed`` and returns finite outputs, else (ms, why not)."""
        feed = {k: v.to(self.device) for k, v in feed.items()}
        cuda = self.device == "cuda"
        # on the CPU (one torch thread, see choose_envelope) the thread's CPU time: what the forward
        # costs, unlike wall time not inflated when other processes hold the cores
        clock = time.perf_counter if cuda else time.thread_time
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = clock()
        try:
            with torch.inference_mode():
                out = flatten_outputs(call_with_feed(self.model, self.spec, feed))
            if cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - the model cannot take this size: that is the finding
            text = str(exc).strip().splitlines()
            return (clock() - t0) * 1e3, "%s: %s" % (type(exc).__name__, text[0][:120] if text else "")
        ms = (clock() - t0) * 1e3
        for name, t in out:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return ms, "output %r is not finite" % name
        if cuda:
            total = torch.cuda.get_device_properties(torch.device(self.device)).total_memory
            if torch.cuda.max_memory_allocated() > total / 2:
                return ms, "it needs over half of the GPU's memory"
        return ms, None


def _groups(spec: IOSpec, feeds: Sequence[Feed], declared: AxisRanges) -> list[list[tuple[str, int]]]:
    """Dynamic (or declared) non-batch axes grouped by their sizes across samples: axes that always
    agree (ids and their mask) grow together, as torch.export gives them one Dim."""
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for t in spec.inputs:
        for i, a in enumerate(t.axes):
            if i == 0 and t.has_batch:
                continue
            if a.kind is AxisKind.DYNAMIC or i in declared.get(t.name, {}):
                groups.setdefault(tuple(f[t.name].shape[i] for f in feeds), []).append((t.name, i))
    return list(groups.values())


def model_limit(model: Any, spec: IOSpec, members: Sequence[tuple[str, int]]) -> tuple[int, str] | None:
    """The token-axis limit the model's (Hugging Face) config states, for groups holding an integer input."""
    if not any(not spec.input(n).torch_dtype.is_floating_point and spec.input(n).dtype != "bool" for n, _ in members):
        return None
    config = getattr(model, "config", None)
    for key in MODEL_LIMITS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, "%s=%d" % (key, value)
    return None


def _at(base: Feed, members: Sequence[tuple[str, int]], size: int) -> Feed:
    feed = dict(base)
    for name, axis in members:
        feed[name] = _resize_axis(feed[name], axis, size)
    return feed


def _probe_group(runner: _Runner, base: Feed, members: Sequence[tuple[str, int]], seen: tuple[int, int],
                 limit: tuple[int, str] | None, clock: _Clock) -> tuple[int, int, Source, str, float]:
    """(lo, hi, source, detail, batch-1 ms at hi) for one group of axes, grown from ``base`` (batch 1)."""
    lo_seen, hi_seen = seen
    lo = lo_seen
    for size in sorted({1, 2, lo_seen // 2} - {0}):
        if size >= lo_seen or clock.left() <= 0:
            break
        if runner.run(_at(base, members, size))[1] is None:
            lo = size
            break
    runner.run(_at(base, members, hi_seen))  # a warm-up: the first forward pays for lazy initialisation
    last_ms, why = runner.run(_at(base, members, hi_seen))
    if why:  # the largest sample size itself, at batch 1: keep the samples' range
        return lo, hi_seen, Source.SAMPLES, "eager at batch 1 and size %d: %s" % (hi_seen, why), last_ms
    if limit and hi_seen < limit[0] <= defaults.MODEL_LIMIT_RUN_CAP:  # the model's word, checked once
        ms, why = runner.run(_at(base, members, limit[0]))
        if why is None:
            return lo, limit[0], Source.MODEL_CONFIG, limit[1], ms
    cap = limit[0] if limit and limit[0] >= hi_seen else hi_seen * defaults.AXIS_GROWTH_CAP
    size, stop = hi_seen, "the cap, x%d the samples' %d" % (defaults.AXIS_GROWTH_CAP, hi_seen)
    while size < cap:
        nxt = min(size * 2, cap)
        predicted = last_ms * (nxt / size) ** 2  # attention grows with the square of the sequence
        if predicted > defaults.AXIS_PROBE_MAX_MS:
            stop = "%d would take ~%.0f ms at batch 1" % (nxt, predicted)
            break
        if clock.left() <= 0:
            stop = "probing time spent"
            break
        ms, why = runner.run(_at(base, members, nxt))
        if why:
            stop = "%d fails: %s" % (nxt, why)
            break
        size, last_ms = nxt, ms
    if limit and size == limit[0]:
        return lo, size, Source.MODEL_CONFIG, limit[1], last_ms
    if limit and limit[0] < hi_seen:
        stop += "; the model config's %s is below the samples, ignored" % limit[1]
    elif limit:
        stop += "; the model config's %s did not run at batch 1" % limit[1]
    return lo, size, Source.PROBE, "grown from the samples' %d..%d; stopped at %s" % (lo_seen, hi_seen, stop), \
        last_ms


def _row_feed(feeds: Sequence[Feed], spec: IOSpec, members: Sequence[tuple[str, int]]) -> Feed:
    """Batch 1 of the sample where the group is largest."""
    name, axis = members[0]
    feed = max(feeds, key=lambda f: f[name].shape[axis])
    return {k: v[:1] if spec.input(k).has_batch else v for k, v in feed.items()}


# ----------------------------------------------------------------------------- the batch curve


def _time_batch(runner: _Runner, feed: Feed, clock: _Clock) -> tuple[float, str | None]:
    """The fastest of a few runs (min: the best estimate of the cost on a busy machine), after a warm-up."""
    _, why = runner.run(feed)
    if why:
        return 0.0, why
    times: list[float] = []
    while len(times) < 2 or (len(times) < 3 and times[0] < 50) or (sum(times) < 30 and len(times) < 10):
        ms, why = runner.run(feed)
        if why:
            return 0.0, why
        times.append(ms)
        if clock.left() <= 0 and len(times) >= 1:
            break
    return min(times), None


def measure_batch(runner: _Runner, spec: IOSpec, feeds: Sequence[Feed], floor: int, cap: int,
                  budget_ms: float | None, clock: _Clock) -> tuple[int, str, tuple[BatchPoint, ...]]:
    """(max batch, why it stops there, the curve): doubling while rows/s improves meaningfully."""
    base = max(feeds, key=lambda f: next(f[t.name].shape[0] for t in spec.inputs if t.has_batch))
    limit_ms = budget_ms if budget_ms is not None else defaults.BATCH_PROBE_MAX_MS
    curve: list[BatchPoint] = []
    kept, why_stop, batch = 1, "the cap %d" % cap, 1
    while batch <= cap:
        if curve and curve[-1].latency_ms * 2 > limit_ms * 1.5:
            why_stop = "batch %d would exceed %g ms" % (batch, limit_ms)
            break
        if clock.left() <= 0:
            why_stop = "measuring time spent"
            break
        feed = {k: resize_batch(v, batch) if spec.input(k).has_batch else v for k, v in base.items()}
        ms, why = _time_batch(runner, feed, clock)
        if why:
            why_stop = "batch %d fails: %s" % (batch, why)
            break
        point = BatchPoint(batch, ms, batch / max(ms, 1e-6) * 1e3)
        if curve and point.rows_per_s < curve[-1].rows_per_s * (1 + defaults.BATCH_GAIN) and clock.left() > 0:
            again, _ = _time_batch(runner, feed, clock)  # a stall on a busy machine is not the curve: confirm
            ms = min(ms, again) if again else ms
            point = BatchPoint(batch, ms, batch / max(ms, 1e-6) * 1e3)
        curve.append(point)
        if ms > limit_ms:
            why_stop = "batch %d takes %.1f ms > %s %g ms" % (
                batch, ms, "limit" if budget_ms is None else "--budget-ms", limit_ms)
            break
        if len(curve) > 1 and point.rows_per_s < curve[-2].rows_per_s * (1 + defaults.BATCH_GAIN):
            why_stop = "rows/s gains under %d%% from %d to %d" % (defaults.BATCH_GAIN * 100, batch // 2, batch)
            break
        kept = batch
        batch *= 2
    if kept < floor:
        return floor, "the samples' batches (measured %d: %s)" % (kept, why_stop), tuple(curve)
    return kept, "stopped at %s" % why_stop, tuple(curve)


def sample_max_batch(spec: IOSpec) -> int:
    """The largest sample batch rounded up to a power of two (what the samples themselves show)."""
    power = 1
    while power < spec.max_sample_batch:
        power *= 2
    return power


# ----------------------------------------------------------------------------- the entry point


def _on_device(model: Any, device: str) -> Any:
    if not isinstance(model, torch.nn.Module):
        return model
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == device for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


def choose_envelope(model: Any, spec: IOSpec, samples: Sequence[Sample], *, device: str = "cpu",
                    declared: Mapping[str, Mapping[int, tuple[int, int]]] | None = None,
                    max_batch_size: int | None = None, budget_ms: float | None = None,
                    budget_s: float = defaults.ENVELOPE_PROBE_BUDGET_S,
                    progress: Callable[[str], None] | None = None) -> Envelope:
    """The envelope of ``spec``'s inputs (see the module docstring)."""
    given: AxisRanges = {k: dict(v) for k, v in (declared or {}).items()}
    check_declared(spec, given)
    threads = torch.get_num_threads()
    if device == "cpu":  # one thread: intra-op threads stall when other processes hold the cores, and
        torch.set_num_threads(1)  # batching's gain (the per-call overhead shared) shows on one as well
    try:
        return _choose(model, spec, samples, device, given, max_batch_size, budget_ms, budget_s, progress)
    finally:
        torch.set_num_threads(threads)


def _choose(model: Any, spec: IOSpec, samples: Sequence[Sample], device: str, declared: AxisRanges,
            max_batch_size: int | None, budget_ms: float | None, budget_s: float,
            progress: Callable[[str], None] | None) -> Envelope:
    clock = _Clock(budget_s)
    start = clock.start
    runner = _Runner(_on_device(model, device), spec, device)
    feeds = [sample_feed(spec, s) for s in samples]
    axes: list[AxisRange] = []
    hi_ms = 0.0  # the slowest group's batch-1 forward at its max
    for members in _groups(spec, feeds, declared):
        given = [declared[n][i] for n, i in members if i in declared.get(n, {})]
        base = _row_feed(feeds, spec, members)
        if given:
            lo, hi = max(g[0] for g in given), min(g[1] for g in given)
            for size in sorted({lo, hi}):
                ms, why = runner.run(_at(base, members, size))
                hi_ms = max(hi_ms, ms)
                if why:
                    name, axis = members[0]
                    raise UserError("axis_ranges %s axis %d = %d..%d: eager PyTorch fails at size %d (%s); declare "
                                    "a range the model takes" % (name, axis, lo, hi, size, why))
            # the group's sizes always agree (one Dim in the export), so only lo..hi was run and only lo..hi
            # is claimed: an axis declared wider keeps the common range, and says so
            for n, i in members:
                own = declared.get(n, {}).get(i, (lo, hi))
                detail = ""
                if own != (lo, hi):
                    detail = "declared %d..%d, narrowed to %d..%d shared with %s" % (
                        own[0], own[1], lo, hi, ", ".join("%s axis %d" % m for m in members if m != (n, i)))
                    log.warning("axis_ranges %s axis %d: %s (their sizes always agree; declare one range for all)",
                                n, i, detail)
                axes.append(AxisRange(n, i, lo, hi, Source.DECLARED, detail))
            continue
        seen = (min(spec.input(n).axes[i].min for n, i in members), max(spec.input(n).axes[i].max for n, i in members))
        lo, hi, source, detail, ms = _probe_group(runner, base, members, seen, model_limit(model, spec, members),
                                                  clock)
        hi_ms = max(hi_ms, ms)
        axes.extend(AxisRange(n, i, lo, hi, source, detail) for n, i in members)
    env = Envelope(0, Source.SAMPLES, "", tuple(axes))
    if spec.batching:
        if max_batch_size is not None:
            env = dataclasses.replace(env, max_batch_size=max_batch_size, batch_source=Source.DECLARED)
        elif not spec.dynamic_batching_ok:
            env = dataclasses.replace(env, max_batch_size=sample_max_batch(spec),
                                      batch_detail="rows are not independent, so only the samples' batches")
        else:
            if progress:
                progress("measuring the batch curve on %s" % device)
            cap = defaults.MAX_BATCH_CAP_GPU if device == "cuda" else defaults.MAX_BATCH_CAP_CPU
            best, why, curve = measure_batch(runner, spec, feeds, sample_max_batch(spec), cap, budget_ms,
                                             _Clock(budget_s))  # its own budget: long axes must not starve it
            env = dataclasses.replace(env, max_batch_size=best, batch_source=Source.MEASUREMENT, batch_detail=why,
                                      curve=curve)
    corner = None
    if axes and env.max_batch_size > 1:
        # rows at batch b cost lat(b) / (b * lat(1)) of a lone row on the measured curve (1 without one)
        per_row = min(1.0, env.curve[-1].latency_ms / (env.curve[-1].batch * env.curve[0].latency_ms)) \
            if len(env.curve) > 1 and env.curve[0].latency_ms > 0 else 1.0
        corner = hi_ms * env.max_batch_size * per_row
    return dataclasses.replace(env, seconds=time.monotonic() - start, corner_ms=corner)


def apply_envelope(spec: IOSpec, env: Envelope) -> IOSpec:
    """``spec`` with every enveloped axis's ``min``/``max`` set to its accepted range (a declared range
    makes a static axis dynamic): the profiles, the export's Dims and the runtime's checks read them."""
    inputs = []
    for t in spec.inputs:
        axes = list(t.axes)
        for r in env.ranges(t.name).values():
            a = axes[r.axis]
            kind = AxisKind.DYNAMIC if r.lo != r.hi else a.kind
            axes[r.axis] = AxisSpec(kind, r.lo, r.hi, min(max(a.common, r.lo), r.hi))
        inputs.append(dataclasses.replace(t, axes=tuple(axes)))
    return dataclasses.replace(spec, inputs=tuple(inputs))
