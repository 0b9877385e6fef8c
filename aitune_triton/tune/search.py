"""Stage-2 tuning: search Triton settings for one model on a live server, write the best back.

The search space is instance count x ``max_queue_delay_microseconds`` x preferred batch sizes
(searched only for multi-profile TensorRT plans, where Triton advises them; otherwise the
config's own value is kept) x client concurrency. ``max_batch_size`` is never raised above the
manifest's (what the plan's profiles allow), so every variant loads.

Each variant is loaded into the running server with the load API's config override (Triton
2.51 accepts ``{"parameters":{"config":"<json>"}}``): nothing on disk changes while searching,
and an interrupted search leaves the repository as it was. perf_analyzer then measures one
concurrency per call, keeping its windows (``tune.measure``): every point has a median and a
spread, and one point beats another only when their spreads do not overlap (and the median gains
``min_gain``), because on a shared machine smaller differences are noise.

The default search is a coordinate descent capped at 10 % of the grid (``quick_budget``):
concurrency first (no reload; upwards only while the point meets the constraint), then instance
count, queue delay and preferred sizes; a full cycle without a move ends it. ``brute=True``
measures the whole grid. Either way the top few configs (``finalists``) and the current config
are then re-measured back to back, interleaved, ``rounds`` times; only those figures choose, and
the current config is kept unless a finalist beats it beyond both spreads. Only the winner is
written, atomically, to ``config.pbtxt`` (the previous text kept as ``config.pbtxt.bak`` and in
the manifest's history) and reloaded from disk to prove it loads.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.version import __version__
from aitune_triton.errors import ModelError, UserError
from aitune_triton.triton.manifest import MANIFEST, REFERENCE, Manifest, load_reference
from aitune_triton.triton.perf import PerfOptions, write_input_data_json
from aitune_triton.triton.render import check_config, parse_config
from aitune_triton.triton.repository import replace_file_atomically, repository_lock
from aitune_triton.triton.server import ServerError
from aitune_triton.tune.measure import (  # noqa: F401  (Variant, Point, Measurement, LiveRunner re-exported)
    LiveRunner,
    Measure,
    Measurement,
    Point,
    TRANSPORTS,
    Remeasured,
    Status,
    Variant,
    perf_flags,
    remeasure,
)
from aitune_triton.tune.model_analyzer import write_model_analyzer_config
from aitune_triton.tune.report import (  # noqa: F401  (report names re-exported)
    BACKUP,
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    to_markdown,
    write_plot,
    write_reports,
)

log = logging.getLogger(__name__)

OBJECTIVES = ("max-throughput", "min-latency")
DIMENSIONS = ("concurrency", "transport", "instances", "delay_us", "preferred")  # the quick search's order
CONFIG = "config.pbtxt"


# ---------------------------------------------------------------- objective, grid, search


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
        """0 when the constraints hold, else how far off they are (relative)."""
        v = 0.0
        if self.budget_ms is not None and m.p99_ms > self.budget_ms:
            v += m.p99_ms / self.budget_ms - 1.0
        if self.min_throughput is not None and m.throughput < self.min_throughput:
            v += 1.0 - m.throughput / self.min_throughput
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
        if self.kind == "max-throughput":
            return a.lo > b.hi and a.throughput > b.throughput * (1.0 + min_gain)
        return a.p99_hi < b.p99_lo and a.p99_ms < b.p99_ms * (1.0 - min_gain)

    def key(self, m: Measurement) -> float:
        """Sort key of a feasible measurement by its median, larger is better."""
        return m.throughput if self.kind == "max-throughput" else -m.p99_ms

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


@dataclass(frozen=True)
class SearchSpace:
    """The grid. Values are kept in the given order; neighbours are adjacent values.

    ``instances`` is the instance_group ``count``: per listed GPU (or per visible GPU when the group
    lists none) for GPU instances, so ``gpus`` (the devices they are placed on; 0 for CPU) times it
    is the total. ``transports`` are the client's perf_analyzer ``--shared-memory`` modes: a
    measurement dimension (no reload, nothing in the config), searched where the model serves from
    GPUs or when asked for."""

    instances: tuple[int, ...]
    delays_us: tuple[int | None, ...]
    concurrency: tuple[int, ...]
    preferred: tuple[tuple[int, ...], ...] = ((),)
    transports: tuple[str, ...] = ("none",)
    gpus: int = 0

    def __post_init__(self) -> None:
        for dim in DIMENSIONS:
            values = self.values(dim)
            if not values or len(set(values)) != len(values):
                raise UserError("search dimension %s needs distinct values, got %s" % (dim, list(values)))
        if min(self.instances) < 1 or min(self.concurrency) < 1:
            raise UserError("instances and concurrency values must be >= 1")
        check_transports(self.transports, self.gpus)

    def values(self, dim: str) -> tuple:
        return {"concurrency": self.concurrency, "delay_us": self.delays_us, "instances": self.instances,
                "preferred": self.preferred, "transport": self.transports}[dim]

    @property
    def size(self) -> int:
        return (len(self.instances) * len(self.delays_us) * len(self.concurrency) * len(self.preferred)
                * len(self.transports))

    def variants(self) -> list[Variant]:
        return [Variant(i, d, p) for i in self.instances for d in self.delays_us for p in self.preferred]

    def points(self) -> list[Point]:
        """Variant-major, so a full sweep reloads each variant once."""
        return [Point(v, c, t) for v in self.variants() for t in self.transports for c in self.concurrency]

    def shift(self, point: Point, dim: str, step: int) -> Point | None:
        values = self.values(dim)
        i = values.index(point.value(dim)) + step
        return point.replace(dim, values[i]) if 0 <= i < len(values) else None

    def snap(self, dim: str, value) -> object:
        """The grid value closest to ``value`` (numeric dims), or the first one."""
        values = self.values(dim)
        if value in values:
            return value
        if dim in ("instances", "delay_us", "concurrency") and value is not None and None not in values:
            return min(values, key=lambda v: abs(v - value))
        return values[0]

    def to_dict(self) -> dict:
        return {"instances": list(self.instances), "max_queue_delay_us": list(self.delays_us),
                "concurrency": list(self.concurrency), "preferred": [list(p) for p in self.preferred],
                "transports": list(self.transports), "gpus": self.gpus,
                "instances_are": "per GPU" if self.gpus else "in all", "size": self.size}


def parse_transports(text: str) -> tuple[str, ...] | None:
    """``--transports``: ``auto`` (None: decided by ``build_space``) or comma-separated modes."""
    if text.strip() == "auto":
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    check_transports(values, 1)  # cuda is checked against the GPUs once they are known
    return values


def parse_visible_gpus(text: str) -> int | None:
    """``--visible-gpus``: ``auto`` (None: detected) or a count >= 0."""
    if text.strip() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise UserError("--visible-gpus takes auto or a GPU count, got %r" % text) from None
    if count < 0:
        raise UserError("--visible-gpus must be >= 0, got %d" % count)
    return count


def check_transports(transports: tuple[str, ...], gpus: int) -> None:
    """Known, distinct perf_analyzer shared-memory modes; ``cuda`` only where a GPU is visible."""
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports or len(set(transports)) != len(transports):
        raise UserError("transports must be distinct values of %s, got %s" % (", ".join(TRANSPORTS),
                                                                              ",".join(transports) or "nothing"))
    if "cuda" in transports and gpus < 1:
        raise UserError("transport cuda (CUDA shared memory) needs a GPU visible to the server; none is "
                        "(pass --visible-gpus N if detection is wrong, or use --transports none,system)")




def quick_budget(grid_size: int) -> int:
    """Points the quick search may measure: 10 % of the grid, at least 3 (a concurrency step and
    one neighbour per config dimension need that many on a tiny grid)."""
    return max(3, grid_size // 10)


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
    no claim)."""

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
        return Decision(incumbent, incumbent, incumbent is not best, None,
                        tuple(p for p in ties if p != incumbent.point) + ((best.point,) if best is not incumbent
                                                                            else ()),
                        "current config kept: no finalist beats it beyond the re-measured spread")
    improvement = None
    if (incumbent is not None and objective.feasible(incumbent) and incumbent is not best
            and objective.better(best, incumbent, min_gain)):
        improvement = (best.throughput / incumbent.throughput if objective.kind == "max-throughput"
                       else incumbent.p99_ms / best.p99_ms)
        reason = "best of %d finalists, measurably better than the current config" % len(summaries)
    elif incumbent is not None and incumbent is not best:
        why = ("was %s when re-measured" % incumbent.status if not incumbent.ok
               else "missed the constraint when re-measured" if not objective.feasible(incumbent)
               else "(outside the searched grid) is within the chosen one's spread")
        reason = "best of %d finalists; the current config %s, so no improvement is claimed" % (len(summaries), why)
    else:
        reason = "best of %d finalists" % len(summaries)
    return Decision(best, incumbent, False, improvement, ties, reason)


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


# ---------------------------------------------------------------- configs


def apply_variant(base: model_config_pb2.ModelConfig, variant: Variant,
                  max_batch_size: int) -> model_config_pb2.ModelConfig:
    """A copy of ``base`` with the variant's settings; max_batch_size (and warmup batches) clamped
    to what the plan allows."""
    cfg = model_config_pb2.ModelConfig()
    cfg.CopyFrom(base)
    if max_batch_size and cfg.max_batch_size > max_batch_size:
        cfg.max_batch_size = max_batch_size
        for w in cfg.model_warmup:
            w.batch_size = min(w.batch_size, max_batch_size)
    if not cfg.instance_group:
        cfg.instance_group.add()
    for group in cfg.instance_group:
        group.count = variant.instances
    if variant.delay_us is not None:
        cfg.dynamic_batching.max_queue_delay_microseconds = variant.delay_us
        del cfg.dynamic_batching.preferred_batch_size[:]
        cfg.dynamic_batching.preferred_batch_size.extend(variant.preferred)
    return cfg


def current_variant(cfg: model_config_pb2.ModelConfig) -> Variant:
    count = cfg.instance_group[0].count if cfg.instance_group else 1
    if cfg.max_batch_size == 0:
        return Variant(count, None)
    db = cfg.dynamic_batching
    return Variant(count, db.max_queue_delay_microseconds, tuple(db.preferred_batch_size))


def placement(cfg: model_config_pb2.ModelConfig, instances: int, perf: PerfOptions, transport: str | None = None,
              visible_gpus: int = 0) -> dict:
    """Where the chosen instances run and which client transport measured them (``transport``:
    the chosen point's; default ``perf.shared_memory``): on GPU, throughput depends on both (host
    inputs pay a gather and a host-to-device copy per batch; one instance per GPU on two GPUs is
    not two instances on one). The transport is the measurement's, not the config's."""
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    groups = list(cfg.instance_group) or [model_config_pb2.ModelInstanceGroup(kind=gpu)]
    on_gpu = any(g.kind in (gpu, model_config_pb2.ModelInstanceGroup.KIND_AUTO) for g in groups)
    gpus = sorted({int(i) for g in groups for i in g.gpus})
    devices = len(gpus) or visible_gpus
    total = instances * devices if on_gpu and devices else None
    if on_gpu:
        if gpus:
            where = "%d instance(s) on each of GPU %s (%d in all)" % (instances, ", ".join(map(str, gpus)), total)
        elif visible_gpus:
            where = "%d instance(s) on each of the %d GPU(s) the server sees (%d in all)" % (
                instances, visible_gpus, total)
        else:
            where = "%d instance(s) on every GPU the server sees" % instances
    else:
        where = "%d CPU instance(s)" % instances
    shm = transport or perf.shared_memory
    text = "%s, %s" % ("gRPC" if perf.protocol == "grpc" else "HTTP", TRANSPORTS[shm])
    return {"kind": "KIND_GPU" if on_gpu else "KIND_CPU", "gpus": gpus, "instances_per_device": instances,
            "total_instances": total, "transport": text, "shared_memory": shm,
            "text": "%s; client transport: %s" % (where, text)}


def visible_gpus() -> int:
    """GPUs the server this process starts will see: ``nvidia-smi -L``'s GPUs, narrowed by
    ``CUDA_VISIBLE_DEVICES`` (which the embedded server inherits). nvidia-smi rather than
    torch.cuda, because a CPU build of torch on a GPU machine sees none. 0 without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("nvidia-smi -L failed (%s): searching as without a GPU", exc)
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        entries = [e.strip() for e in mask.split(",")]
        listed = 0
        for e in entries:  # CUDA stops at the first entry that names no device
            if not e or e.startswith("-"):
                break
            listed += 1
        count = min(count, listed)
    return count


def instances_on_gpu(cfg: model_config_pb2.ModelConfig) -> bool:
    """The model's instances run on GPUs where GPUs are visible (KIND_GPU, or KIND_AUTO)."""
    kinds = {g.kind for g in cfg.instance_group} or {model_config_pb2.ModelInstanceGroup.KIND_AUTO}
    return bool(kinds & {model_config_pb2.ModelInstanceGroup.KIND_GPU, model_config_pb2.ModelInstanceGroup.KIND_AUTO})


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_space(cfg: model_config_pb2.ModelConfig, manifest: Manifest, options: "TuneOptions",
                gpus: int | None = None) -> SearchSpace:
    """The grid for this model: instance counts above the usable cores are dropped for CPU
    instances (they only add contention); preferred sizes are searched only for multi-profile plans.

    ``gpus`` is how many GPUs the server sees (default ``options.visible_gpus``, else detected by
    ``visible_gpus``). Where the instance group is on GPU and GPUs are visible, the instance counts
    are per GPU (the listed GPUs, or every visible one) and the client transports default to all
    three (none, system, cuda); elsewhere the transports default to ``options.perf.shared_memory``
    alone, so the CPU grid is unchanged unless ``options.transports`` asks for more."""
    if gpus is None:
        gpus = options.visible_gpus if options.visible_gpus is not None else visible_gpus()
    listed = sorted({int(i) for g in cfg.instance_group for i in g.gpus})
    devices = (len(listed) or gpus) if gpus and instances_on_gpu(cfg) else 0
    if options.transports is not None:
        transports = tuple(options.transports)
    elif devices:
        transports = tuple(TRANSPORTS)
    else:
        transports = (options.perf.shared_memory,)
    check_transports(transports, gpus)
    instances = tuple(sorted(set(options.instances)))
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    if cfg.instance_group and all(g.kind == cpu for g in cfg.instance_group):
        cores = usable_cores()
        kept = tuple(i for i in instances if i <= cores) or instances[:1]
        if kept != instances:
            log.info("instance counts %s exceed the %d usable cores: searching %s", instances, cores, kept)
        instances = kept
    delays: tuple[int | None, ...] = (None,) if cfg.max_batch_size == 0 else tuple(options.delays_us)
    current = tuple(cfg.dynamic_batching.preferred_batch_size)
    preferred: tuple[tuple[int, ...], ...] = (current,)
    if options.search_preferred and manifest.backend == "tensorrt" and len(manifest.profiles.profiles) > 1:
        limit = min(cfg.max_batch_size, manifest.max_batch_size or cfg.max_batch_size)
        opts = tuple(b for b in manifest.profiles.opt_batches() if 1 <= b <= limit)
        preferred = tuple(dict.fromkeys(((), opts)))
    if devices:
        log.info("instances on %d GPU(s): searching %s instance(s) per GPU over client transports %s", devices,
                 instances, ", ".join(transports))
    return SearchSpace(instances, delays, tuple(options.concurrency), preferred, transports, devices)


def config_text(cfg: model_config_pb2.ModelConfig, header: str) -> str:
    """pbtxt with a comment header; a zero queue delay is spelled out (text format omits zeros)."""
    body = text_format.MessageToString(cfg, use_short_repeated_primitives=True)
    if cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0:
        body = body.replace("dynamic_batching {\n", "dynamic_batching {\n  max_queue_delay_microseconds: 0\n", 1)
    return "".join("# %s\n" % line for line in header.splitlines()) + body


# ---------------------------------------------------------------- live measurement


def _tune_perf_defaults() -> PerfOptions:
    # time windows bound the cost of a point whatever its throughput (a 40 infer/s variant would
    # need 8 s per 300-request window); 1 s windows and a 30 % band settle on a busy 2-core box in
    # 3-6 s, and an unstable point is retried once with windows twice as long and a looser band
    return PerfOptions(measurement_mode="time_windows", measurement_interval_ms=1000, stability_percentage=30,
                       max_trials=6, timeout_s=180)


@dataclass(frozen=True)
class TuneOptions:
    """What to search and how to judge it (see the module docstring)."""

    objective: str = "max-throughput"
    budget_ms: float | None = None
    min_throughput: float | None = None
    instances: tuple[int, ...] = (1, 2, 4)
    delays_us: tuple[int, ...] = (0, 100, 250, 500, 1000, 2000)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    search_preferred: bool = True
    brute: bool = False
    min_gain: float = 0.03
    max_measurements: int | None = None  # the quick search's cap; None: quick_budget(grid size)
    finalists: int = 2  # configs re-measured before choosing (plus the current config)
    rounds: int = 3  # interleaved re-measurement rounds of the finalists
    perf: PerfOptions = field(default_factory=_tune_perf_defaults)
    report_dir: Path | None = None
    lock_wait_s: float = 0.0
    export_model_analyzer: Path | None = None  # also write a Model Analyzer profile config here
    # client transports (perf_analyzer --shared-memory) to search; None: none/system/cuda where the
    # instances are on visible GPUs, else perf.shared_memory alone
    transports: tuple[str, ...] | None = None
    visible_gpus: int | None = None  # GPUs the server sees; None: detect (nvidia-smi -L, CUDA_VISIBLE_DEVICES)

    def __post_init__(self) -> None:
        for name in ("instances", "delays_us", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if any(d < 0 for d in self.delays_us):
            raise UserError("queue delays must be >= 0 us")
        if not 0 <= self.min_gain < 1:
            raise UserError("min_gain must be in [0, 1), got %r" % self.min_gain)
        if self.finalists < 1 or self.rounds < 1:
            raise UserError("finalists and rounds must be >= 1, got %r and %r" % (self.finalists, self.rounds))
        if self.max_measurements is not None and self.max_measurements < 1:
            raise UserError("max_measurements must be >= 1, got %r" % self.max_measurements)
        if self.visible_gpus is not None and self.visible_gpus < 0:
            raise UserError("visible GPUs must be >= 0, got %r" % self.visible_gpus)
        if self.transports is not None:
            object.__setattr__(self, "transports", tuple(self.transports))
            check_transports(self.transports, 1 if self.visible_gpus is None else self.visible_gpus)
        self.objective_spec()

    def objective_spec(self) -> Objective:
        return Objective(self.objective, self.budget_ms, self.min_throughput)


def output_bytes(manifest: Manifest, batch_size: int = 1) -> int | None:
    """The largest output of one request at the largest recorded sizes, in bytes (for
    perf_analyzer's shared-memory output regions); None when a dtype is unknown."""
    import numpy as np

    sizes = []
    for t in manifest.spec.outputs:
        try:
            itemsize = 2 if t.dtype == "bfloat16" else np.dtype(t.dtype).itemsize
        except TypeError:
            return None
        count = 1
        for d in t.shape("max", batch=batch_size):
            count *= max(int(d), 1)
        sizes.append(count * itemsize)
    return max(sizes, default=None)


def perf_inputs(model_dir: Path, manifest: Manifest, perf: PerfOptions, workdir: Path) -> PerfOptions:
    """perf_analyzer gets the recorded sample inputs (one batch item each): random data can be
    out of range for ids or masks. Without reference data, concrete shapes for dynamic dims."""
    if perf.input_data is not None:
        return perf
    ref = model_dir / REFERENCE
    if ref.exists():
        batching = manifest.spec.batching
        requests = [{k: (v[:1] if batching else v) for k, v in case.inputs.items()} for case in load_reference(ref)]
        path = write_input_data_json(requests, workdir / "input_data.json", has_batch_dim=batching)
        return dataclasses.replace(perf, input_data=path)
    shapes = dict(perf.shapes)
    for t in manifest.spec.inputs:
        if -1 in t.triton_dims() and t.name not in shapes:
            axes = t.axes[1:] if t.has_batch else t.axes
            shapes[t.name] = tuple(a.common for a in axes)
    return dataclasses.replace(perf, shapes=shapes)


# ---------------------------------------------------------------- result, write-back, reports


@dataclass(frozen=True)
class TuneResult:
    """What was measured, what was chosen, and where it was written."""

    model: str
    objective: Objective
    space: SearchSpace
    mode: str
    measurements: tuple[Measurement, ...]
    chosen: Measurement | None
    baseline: Measurement | None
    previous: Variant
    loads: int
    written: bool
    reason: str
    elapsed_s: float
    config_path: Path
    backup_path: Path | None = None
    reports: dict[str, Path] = field(default_factory=dict)
    placement: dict = field(default_factory=dict)  # placement() of the chosen (or previous) instance count
    finalists: tuple[Remeasured, ...] = ()  # the interleaved re-measurement that chose
    improvement: float | None = None  # chosen vs current config in those rounds; None: no claim
    ties: tuple[Point, ...] = ()  # finalists within the chosen one's spread
    perf_flags: dict = field(default_factory=dict)  # perf_analyzer settings that made points settle here
    load_avg: tuple[float, ...] = ()  # 1-minute load average at the start and the end (the noise's cause)

    @property
    def measured(self) -> int:
        return len(self.measurements)

    @property
    def remeasured(self) -> int:
        return sum(len(f.runs) for f in self.finalists)

    @property
    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.measurements:
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

    @property
    def grid_size(self) -> int:
        return self.space.size

    def to_dict(self) -> dict:
        return {"model": self.model, "objective": self.objective.to_dict(), "mode": self.mode,
                "space": self.space.to_dict(), "grid_size": self.grid_size, "measured": self.measured,
                "loads": self.loads, "chosen": self.chosen.to_dict() if self.chosen else None,
                "baseline": self.baseline.to_dict() if self.baseline else None, "previous": self.previous.to_dict(),
                "written": self.written, "reason": self.reason, "elapsed_s": round(self.elapsed_s, 1),
                "config_path": str(self.config_path),
                "backup_path": str(self.backup_path) if self.backup_path else None,
                "placement": self.placement, "statuses": self.status_counts,
                "finalists": [f.to_dict() for f in self.finalists], "remeasured": self.remeasured,
                "improvement": None if self.improvement is None else round(self.improvement, 3),
                "ties": [p.to_dict() for p in self.ties], "perf_analyzer_flags": self.perf_flags,
                "load_avg": [round(v, 2) for v in self.load_avg],
                "measurements": [m.to_dict() for m in self.measurements], "tool_version": __version__}


def _effective_variant(server, model: str) -> Variant:
    """What the server says it runs (GET /v2/models/M/config)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        cfg = client.get_model_config(model)
    except InferenceServerException as exc:
        raise ServerError("reading the config of %r failed: %s" % (model, exc.message())) from exc
    finally:
        client.close()
    count = (cfg.get("instance_group") or [{}])[0].get("count", 1)
    if not cfg.get("max_batch_size"):
        return Variant(count, None)
    return Variant(count, int((cfg.get("dynamic_batching") or {}).get("max_queue_delay_microseconds", 0)))


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _restore(server, model: str) -> None:
    """Put the on-disk config back into the server after an interrupted or failed search."""
    try:
        server.load_model(model)
    except Exception as exc:  # the server may be gone; the repository is untouched anyway
        log.warning("could not reload %s from disk: %s", model, exc)


def _write_manifest(model_dir: Path, manifest: Manifest) -> None:
    replace_file_atomically(model_dir / MANIFEST, json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")


def _write_back(server, result: TuneResult, base: model_config_pb2.ModelConfig, original: str,
                max_batch_size: int, num_profiles: int) -> Path:
    """config.pbtxt.bak <- the old text; config.pbtxt <- the winner; reload from disk to prove it
    loads and says what was chosen (else the old text is restored and ModelError raised)."""
    m = result.chosen
    cfg = apply_variant(base, m.point.variant, max_batch_size)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = ("Tuned by aitune-triton %s on %s: %s; %d of %d grid points measured, %d finalists re-measured.\n"
              "Chosen: %s at client concurrency %d: median %.1f infer/s (%.1f-%.1f over %d rounds), p99 %.2f ms "
              "(client transport: %s). Previous config: %s"
              % (__version__, stamp, result.objective.describe(), result.measured, result.grid_size,
                 len(result.finalists), m.point.variant.label(), m.point.concurrency, m.throughput, m.lo, m.hi,
                 len(m.windows), m.p99_ms, TRANSPORTS[m.point.transport], BACKUP))
    text = config_text(cfg, header)
    check_config(parse_config(text), num_profiles)
    path, backup = result.config_path, result.config_path.with_name(BACKUP)
    replace_file_atomically(backup, original)
    replace_file_atomically(path, text)
    try:
        server.load_model(result.model)
        effective = _effective_variant(server, result.model)
        wanted = m.point.variant
        if (effective.instances, effective.delay_us) != (wanted.instances, wanted.delay_us):
            raise ServerError("server reports %s, expected %s" % (effective.label(), wanted.label()))
    except ServerError as exc:
        replace_file_atomically(path, original)
        _restore(server, result.model)
        raise ModelError("the tuned config did not load as written (%s); %s restored" % (exc, path)) from exc
    return backup


def tune_model(repo: Path, model: str, server, options: TuneOptions = TuneOptions()) -> TuneResult:
    """Search ``options``' grid for ``model`` on ``server`` (started, explicit model control),
    write the best config back and the reports; returns what was measured and chosen.

    The repository lock is held throughout, so no ``generate`` replaces the model mid-search.
    The model is left loaded with the config now on disk.
    """
    repo = Path(repo)
    model_dir = repo / model
    config_path = model_dir / CONFIG
    if not config_path.exists():
        raise UserError("%s not found; is %s a model in the repository %s?" % (config_path, model, repo))
    manifest = Manifest.load(model_dir)
    original = config_path.read_text()
    base = parse_config(original)
    num_profiles = len(manifest.profiles.profiles) if manifest.backend == "tensorrt" else 0
    limit = manifest.max_batch_size
    objective = options.objective_spec()
    space = build_space(base, manifest, options)
    previous = current_variant(base)
    report_dir = Path(options.report_dir) if options.report_dir else model_dir / "tuning"
    report_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with repository_lock(repo, options.lock_wait_s):
        runner = LiveRunner(server, model, base, limit, num_profiles,
                            perf_inputs(model_dir, manifest, options.perf, report_dir), report_dir / "perf",
                            output_bytes=output_bytes(manifest, options.perf.batch_size))
        start = Point(Variant(space.snap("instances", previous.instances), space.snap("delay_us", previous.delay_us),
                              space.snap("preferred", previous.preferred)),
                      space.concurrency[len(space.concurrency) // 2], space.transports[0])
        budget = options.max_measurements or quick_budget(space.size)
        log.info("tuning %s: %s over %d grid points (%s)", model, objective.describe(), space.size,
                 "brute force" if options.brute else "quick search, at most %d points" % budget)
        load_start = _load_avg()
        try:
            if options.brute:
                measurements = brute_force(space, runner)
            else:
                measurements = hill_climb(space, runner, objective, start, options.min_gain, budget)
            points = pick_finalists(measurements, objective, previous, options.finalists)
            log.info("re-measuring %d finalists, %d interleaved rounds", len(points), options.rounds)
            finalists = remeasure(runner, points, options.rounds) if points else []
        except BaseException:
            _restore(server, model)
            raise
        decision = decide(finalists, objective, previous, options.min_gain, previous in space.variants())
        chosen = decision.chosen
        result = TuneResult(model, objective, space, "brute" if options.brute else "quick", tuple(measurements),
                            chosen, decision.incumbent, previous, runner.loads, False, "", 0.0, config_path,
                            placement=placement(base, (chosen.point.variant if chosen else previous).instances,
                                                runner.perf, chosen.point.transport if chosen else None,
                                                space.gpus),
                            finalists=tuple(finalists), improvement=decision.improvement, ties=decision.ties,
                            perf_flags=perf_flags(runner.stable_perf()))
        if chosen is None:
            _restore(server, model)
            why = decision.reason if finalists else "no measured variant met the constraint (%s)" % objective.describe()
            result = dataclasses.replace(result, reason=why + "; config.pbtxt left unchanged")
        else:
            result = dataclasses.replace(result, reason=decision.reason)
            backup = _write_back(server, result, base, original, limit, num_profiles)
            result = dataclasses.replace(result, written=True, backup_path=backup)
        result = dataclasses.replace(result, load_avg=(load_start, _load_avg()))
        result = dataclasses.replace(result, elapsed_s=time.monotonic() - t0)
        reports = write_reports(result, report_dir)
        if options.export_model_analyzer is not None:
            # Model Analyzer cannot sweep the client transport: it gets the chosen point's
            ma_perf = dataclasses.replace(runner.perf, shared_memory=chosen.point.transport) if chosen else runner.perf
            reports["model_analyzer"] = write_model_analyzer_config(
                options.export_model_analyzer, repo, model, base, space, objective, result.perf_flags, ma_perf)
        result = dataclasses.replace(result, reports=reports)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        summary = {k: v for k, v in result.to_dict().items() if k not in ("measurements", "finalists")}
        # relative paths: the repository may be moved or mounted elsewhere (e.g. into a container)
        where = report_dir.resolve()
        summary.update(time=stamp, config_path=CONFIG, backup_path=BACKUP if result.written else None,
                       report_dir=str(where.relative_to(model_dir.resolve()))
                       if where.is_relative_to(model_dir.resolve()) else str(where))
        history = manifest.history
        if result.written:
            history += ({"event": "tune", "time": stamp, "backup": BACKUP, "previous": previous.to_dict(),
                         "chosen": chosen.point.to_dict(), "objective": objective.to_dict(),
                         "previous_config": original},)
        _write_manifest(model_dir, dataclasses.replace(manifest, tuning=summary, history=history))
    log.info("tuning %s: %s (%d of %d points, %d loads, %.0f s)", model, result.reason, result.measured,
             result.grid_size, result.loads, result.elapsed_s)
    return result


