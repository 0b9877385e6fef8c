"""Stage-2 tuning: search Triton settings for one model on a live server, write the best back.

The search space is instance count x ``max_queue_delay_microseconds`` x preferred batch sizes
(searched only for multi-profile TensorRT plans, where Triton advises them; otherwise the
config's own value is kept) x client concurrency. ``max_batch_size`` is never raised above the
manifest's (what the plan's profiles allow), so every variant loads.

Each variant is loaded into the running server with the load API's config override (Triton
2.51 accepts ``{"parameters":{"config":"<json>"}}``): nothing on disk changes while searching,
and an interrupted search leaves the repository as it was. perf_analyzer then measures one
concurrency per call. Only the winner is written, atomically, to ``config.pbtxt`` (the previous
text kept as ``config.pbtxt.bak`` and in the manifest's history) and reloaded from disk to
prove it loads.

The default search is a coordinate descent with early stop: walk one dimension while a
neighbour beats the current point by ``min_gain`` (3 %), cycle through the dimensions, stop
when a full cycle finds no move. Reloads cost seconds each, so measurements are cached, and
concurrency (no reload) is walked first and may look one step past a plateau. ``brute=True``
measures the whole grid.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.version import __version__
from aitune_triton.errors import ModelError, UserError
from aitune_triton.triton.manifest import MANIFEST, REFERENCE, Manifest, load_reference
from aitune_triton.triton.perf import PerfError, PerfOptions, run_perf, write_input_data_json
from aitune_triton.triton.render import check_config, parse_config
from aitune_triton.triton.repository import replace_file_atomically, repository_lock
from aitune_triton.triton.server import ServerError

log = logging.getLogger(__name__)

OBJECTIVES = ("max-throughput", "min-latency")
DIMENSIONS = ("concurrency", "delay_us", "instances", "preferred")
CONFIG = "config.pbtxt"
BACKUP = "config.pbtxt.bak"
REPORT_JSON, REPORT_MD, REPORT_PNG = "tune_report.json", "tune_report.md", "tune_variants.png"


# ---------------------------------------------------------------- points, measurements, objective


@dataclass(frozen=True)
class Variant:
    """The config.pbtxt part of a point. ``delay_us`` None: the model does not batch."""

    instances: int
    delay_us: int | None
    preferred: tuple[int, ...] = ()

    def label(self) -> str:
        parts = ["%d inst" % self.instances]
        if self.delay_us is not None:
            parts.append("delay %d us" % self.delay_us)
        if self.preferred:
            parts.append("preferred %s" % list(self.preferred))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"instances": self.instances, "max_queue_delay_us": self.delay_us, "preferred": list(self.preferred)}


@dataclass(frozen=True)
class Point:
    variant: Variant
    concurrency: int

    def value(self, dim: str):
        return self.concurrency if dim == "concurrency" else getattr(self.variant, dim)

    def replace(self, dim: str, value) -> "Point":
        if dim == "concurrency":
            return Point(self.variant, value)
        return Point(dataclasses.replace(self.variant, **{dim: value}), self.concurrency)

    def label(self) -> str:
        return "%s @ c=%d" % (self.variant.label(), self.concurrency)

    def to_dict(self) -> dict:
        return {**self.variant.to_dict(), "concurrency": self.concurrency}


@dataclass(frozen=True)
class Measurement:
    """One point measured; ``status`` is ok, unstable (perf_analyzer never settled) or failed."""

    point: Point
    throughput: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    status: str = "ok"
    detail: str = ""
    index: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {**self.point.to_dict(), "throughput": self.throughput, "p50_ms": self.p50_ms,
                "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "status": self.status, "detail": self.detail,
                "index": self.index}


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
        """Is ``a`` better than ``b`` by more than ``min_gain`` (relative)? Feasibility first, then
        the smaller violation, then the objective."""
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
            return a.throughput > b.throughput * (1.0 + min_gain)
        return a.p99_ms < b.p99_ms * (1.0 - min_gain)

    def best(self, measurements: Iterable[Measurement]) -> Measurement | None:
        """The best feasible measurement, or None when none is feasible."""
        best = None
        for m in measurements:
            if self.feasible(m) and (best is None or self.better(m, best)):
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
    """The grid. Values are kept in the given order; neighbours are adjacent values."""

    instances: tuple[int, ...]
    delays_us: tuple[int | None, ...]
    concurrency: tuple[int, ...]
    preferred: tuple[tuple[int, ...], ...] = ((),)

    def __post_init__(self) -> None:
        for dim in DIMENSIONS:
            values = self.values(dim)
            if not values or len(set(values)) != len(values):
                raise UserError("search dimension %s needs distinct values, got %s" % (dim, list(values)))
        if min(self.instances) < 1 or min(self.concurrency) < 1:
            raise UserError("instances and concurrency values must be >= 1")

    def values(self, dim: str) -> tuple:
        return {"concurrency": self.concurrency, "delay_us": self.delays_us, "instances": self.instances,
                "preferred": self.preferred}[dim]

    @property
    def size(self) -> int:
        return len(self.instances) * len(self.delays_us) * len(self.concurrency) * len(self.preferred)

    def variants(self) -> list[Variant]:
        return [Variant(i, d, p) for i in self.instances for d in self.delays_us for p in self.preferred]

    def points(self) -> list[Point]:
        """Variant-major, so a full sweep reloads each variant once."""
        return [Point(v, c) for v in self.variants() for c in self.concurrency]

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
                "size": self.size}


Measure = Callable[[Point], Measurement]


def choose(measurements: Iterable[Measurement], objective: Objective, previous: Variant | None = None,
           min_gain: float = 0.0) -> Measurement | None:
    """The best feasible point, unless the current config's own best is within ``min_gain`` of
    it: then the current config stays, as a noise-sized win is not worth a config change."""
    measurements = list(measurements)
    best = objective.best(measurements)
    incumbent = objective.best(m for m in measurements if m.point.variant == previous)
    if best is not None and incumbent is not None and not objective.better(best, incumbent, min_gain):
        return incumbent
    return best


def brute_force(space: SearchSpace, measure: Measure) -> list[Measurement]:
    return [measure(p) for p in space.points()]


def hill_climb(space: SearchSpace, measure: Measure, objective: Objective, start: Point | None = None,
               min_gain: float = 0.03, max_measurements: int | None = None,
               lookahead: tuple[str, ...] = ("concurrency",)) -> list[Measurement]:
    """Coordinate descent with line search and early stop; returns every measurement made.

    A neighbour replaces the current point only when it is better by ``min_gain``: on a noisy
    machine smaller "wins" are mostly noise and chasing them costs reloads. Along ``lookahead``
    dimensions (concurrency: no reload) a flat or unmeasurable neighbour does not end the walk
    at once: the point one step further is tried too, because throughput over concurrency rises
    in steps (the batcher forms larger batches only past some queue depth).
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
        if dim in lookahead and (not m(nb).ok or objective.feasible(m(nb))):
            far = space.shift(nb, dim, step)
            if far is not None and objective.better(m(far), best, min_gain):
                return far
        return None

    dims = [d for d in DIMENSIONS if len(space.values(d)) > 1]
    current = start or Point(Variant(space.instances[0], space.delays_us[len(space.delays_us) // 2],
                                     space.preferred[0]), space.concurrency[len(space.concurrency) // 2])
    direction = {d: 1 for d in dims}
    try:
        best = m(current)
        stale, i = 0, 0
        while dims and stale < len(dims):
            dim = dims[i % len(dims)]
            i += 1
            moved = False
            for step in (direction[dim], -direction[dim]):
                nxt = advance(current, best, dim, step)
                while nxt is not None:
                    current, best, moved, direction[dim] = nxt, m(nxt), True, step
                    nxt = advance(current, best, dim, step)
                if moved:
                    break
            stale = 0 if moved else stale + 1
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


TRANSPORTS = {"none": "plain messages", "system": "system shared memory", "cuda": "CUDA shared memory"}


def placement(cfg: model_config_pb2.ModelConfig, instances: int, perf: PerfOptions) -> dict:
    """Where the chosen instances run and how the client fed them: on GPU, throughput depends on both
    (host inputs pay a gather and a host-to-device copy per batch; one instance per GPU on two GPUs is
    not two instances on one)."""
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    groups = list(cfg.instance_group) or [model_config_pb2.ModelInstanceGroup(kind=gpu)]
    on_gpu = any(g.kind in (gpu, model_config_pb2.ModelInstanceGroup.KIND_AUTO) for g in groups)
    gpus = sorted({int(i) for g in groups for i in g.gpus})
    total = instances * len(gpus) if on_gpu and gpus else None
    if on_gpu:
        where = ("%d instance(s) on each of GPU %s (%d in all)" % (instances, ", ".join(map(str, gpus)), total)
                 if gpus else "%d instance(s) on every GPU the server sees" % instances)
    else:
        where = "%d CPU instance(s)" % instances
    transport = "%s, %s" % ("gRPC" if perf.protocol == "grpc" else "HTTP", TRANSPORTS[perf.shared_memory])
    return {"kind": "KIND_GPU" if on_gpu else "KIND_CPU", "gpus": gpus, "instances_per_device": instances,
            "total_instances": total, "transport": transport, "text": "%s; client transport: %s" % (where, transport)}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_space(cfg: model_config_pb2.ModelConfig, manifest: Manifest, options: "TuneOptions") -> SearchSpace:
    """The grid for this model: instance counts above the usable cores are dropped for CPU
    instances (they only add contention); preferred sizes are searched only for multi-profile plans."""
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
    return SearchSpace(instances, delays, tuple(options.concurrency), preferred)


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
    max_measurements: int | None = None
    perf: PerfOptions = field(default_factory=_tune_perf_defaults)
    report_dir: Path | None = None
    lock_wait_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("instances", "delays_us", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if any(d < 0 for d in self.delays_us):
            raise UserError("queue delays must be >= 0 us")
        if not 0 <= self.min_gain < 1:
            raise UserError("min_gain must be in [0, 1), got %r" % self.min_gain)
        self.objective_spec()

    def objective_spec(self) -> Objective:
        return Objective(self.objective, self.budget_ms, self.min_throughput)


class LiveRunner:
    """Measures points on the server: reloads the model only when the variant changes."""

    def __init__(self, server, model: str, base: model_config_pb2.ModelConfig, max_batch_size: int,
                 num_profiles: int, perf: PerfOptions, workdir: Path):
        self.server, self.model, self.base = server, model, base
        self.max_batch_size, self.num_profiles = max_batch_size, num_profiles
        self.perf, self.workdir = perf, workdir
        self.loaded: Variant | None = None
        self.loads = 0
        self.count = 0
        self.serving = 0
        if server.model_ready(model):
            self.serving = _effective_variant(server, model).instances
        grpc = getattr(server, "grpc_url", None)
        if perf.protocol == "grpc" and grpc:
            self.url = grpc
        else:
            self.url, self.perf = server.http_url, dataclasses.replace(perf, protocol="http")

    def _stubs(self) -> int | None:
        children = getattr(self.server, "children", None)
        return len(children()) if children else None

    def _settle(self, expected: int | None, timeout_s: float = 10.0) -> None:
        """Wait for the replaced instances' stub processes to exit: Triton unloads the old
        version after the load call returns, and its teardown would be measured as noise."""
        deadline = time.monotonic() + timeout_s
        while expected is not None and time.monotonic() < deadline and (self._stubs() or 0) > expected:
            time.sleep(0.1)

    def load(self, variant: Variant) -> None:
        cfg = apply_variant(self.base, variant, self.max_batch_size)
        check_config(cfg, self.num_profiles)
        self.loaded = None
        before = self._stubs()
        t0 = time.monotonic()
        self.server.load_model(self.model, config_json=json_format.MessageToJson(cfg, preserving_proto_field_name=True))
        self.loads += 1
        self.loaded = variant
        self._settle(None if before is None else before - self.serving + variant.instances)
        self.serving = variant.instances
        log.info("loaded %s with %s in %.1f s", self.model, variant.label(), time.monotonic() - t0)

    def __call__(self, point: Point) -> Measurement:
        self.count += 1
        if self.loaded != point.variant:
            try:
                self.load(point.variant)
            except ServerError as exc:
                log.warning("variant %s failed to load: %s", point.variant.label(), exc)
                return Measurement(point, status="failed", detail="load: %s" % str(exc)[:400], index=self.count)
        workdir = self.workdir / ("%03d" % self.count)
        perf = dataclasses.replace(self.perf, concurrency=(point.concurrency,))
        result = None
        for attempt in range(2):
            try:
                result = run_perf(self.model, self.url, perf, workdir=workdir)
            except PerfError as exc:
                return Measurement(point, status="failed", detail=str(exc)[:400], index=self.count)
            if result.rows:
                break
            perf = dataclasses.replace(perf, measurement_request_count=2 * perf.measurement_request_count,
                                       measurement_interval_ms=2 * perf.measurement_interval_ms,
                                       stability_percentage=min(100, 2 * perf.stability_percentage))
        if not result.rows:
            return Measurement(point, status="unstable", detail=result.stdout_tail[-400:], index=self.count)
        row = result.rows[0]
        m = Measurement(point, row.throughput, row.p50_ms, row.p95_ms, row.p99_ms, index=self.count)
        log.info("measured %s: %.1f infer/s, p99 %.2f ms", point.label(), m.throughput, m.p99_ms)
        return m


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

    @property
    def measured(self) -> int:
        return len(self.measurements)

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
                "placement": self.placement,
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
    header = ("Tuned by aitune-triton %s on %s: %s; %d of %d grid points measured.\n"
              "Chosen: %s at client concurrency %d: %.1f infer/s, p99 %.2f ms. Previous config: %s"
              % (__version__, stamp, result.objective.describe(), result.measured, result.grid_size,
                 m.point.variant.label(), m.point.concurrency, m.throughput, m.p99_ms, BACKUP))
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
                            perf_inputs(model_dir, manifest, options.perf, report_dir), report_dir / "perf")
        start = Point(Variant(space.snap("instances", previous.instances), space.snap("delay_us", previous.delay_us),
                              space.snap("preferred", previous.preferred)),
                      space.concurrency[len(space.concurrency) // 2])
        log.info("tuning %s: %s over %d grid points (%s)", model, objective.describe(), space.size,
                 "brute force" if options.brute else "quick search")
        try:
            if options.brute:
                measurements = brute_force(space, runner)
            else:
                measurements = hill_climb(space, runner, objective, start, options.min_gain, options.max_measurements)
        except BaseException:
            _restore(server, model)
            raise
        chosen = choose(measurements, objective, previous, options.min_gain)
        baseline = next((m for m in measurements if chosen and m.ok and m.point.variant == previous
                         and m.point.concurrency == chosen.point.concurrency), None)
        result = TuneResult(model, objective, space, "brute" if options.brute else "quick", tuple(measurements),
                            chosen, baseline, previous, runner.loads, False, "", 0.0, config_path,
                            placement=placement(base, (chosen.point.variant if chosen else previous).instances,
                                                options.perf))
        if chosen is None:
            _restore(server, model)
            result = dataclasses.replace(result, reason="no measured variant met the constraint (%s); config.pbtxt "
                                                        "left unchanged" % objective.describe())
        else:
            backup = _write_back(server, result, base, original, limit, num_profiles)
            kept = chosen.point.variant == previous and chosen is not objective.best(measurements)
            reason = ("current config kept: no variant beats it by %.0f %%" % (100 * options.min_gain) if kept
                      else "best of %d measured points" % sum(1 for m in measurements if m.ok))
            result = dataclasses.replace(result, written=True, backup_path=backup, reason=reason)
        result = dataclasses.replace(result, elapsed_s=time.monotonic() - t0)
        reports = write_reports(result, report_dir)
        result = dataclasses.replace(result, reports=reports)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        summary = {k: v for k, v in result.to_dict().items() if k != "measurements"}
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


def _md_row(m: Measurement, result: TuneResult) -> str:
    v = m.point.variant
    if result.chosen is not None and m.point == result.chosen.point:
        note = "**chosen**"
    elif not m.ok:
        note = "%s: %s" % (m.status, m.detail.splitlines()[-1][:80] if m.detail else "")
    elif not result.objective.feasible(m):
        note = "violates the constraint"
    else:
        note = ""
    return "| %d | %d | %s | %s | %d | %.1f | %.2f | %.2f | %s |" % (
        m.index, v.instances, "-" if v.delay_us is None else v.delay_us, list(v.preferred) or "-",
        m.point.concurrency, m.throughput, m.p50_ms, m.p99_ms, note.replace("|", "/"))


def to_markdown(result: TuneResult) -> str:
    lines = ["# Tuning report: %s" % result.model, "",
             "- objective: %s" % result.objective.describe(),
             "- search: %s, %d of %d grid points measured (%.0f %%), %d model loads, %.0f s" % (
                 "brute force" if result.mode == "brute" else "quick (coordinate descent)", result.measured,
                 result.grid_size, 100.0 * result.measured / result.grid_size, result.loads, result.elapsed_s),
             "- previous config: %s" % result.previous.label()]
    if result.placement:
        lines.append("- placement: %s" % result.placement["text"])
    c, b = result.chosen, result.baseline
    if c is not None:
        lines.append("- chosen: %s at client concurrency %d: %.1f infer/s, p50 %.2f ms, p99 %.2f ms"
                     % (c.point.variant.label(), c.point.concurrency, c.throughput, c.p50_ms, c.p99_ms))
    if b is not None and c is not None and b.point != c.point and b.throughput > 0:
        lines.append("- previous config at the same concurrency: %.1f infer/s, p99 %.2f ms (%.2fx throughput)"
                     % (b.throughput, b.p99_ms, c.throughput / b.throughput))
    lines.append("- result: %s%s" % (result.reason, "; written to %s (previous kept as %s)" % (
        result.config_path.name, BACKUP) if result.written else ""))
    lines += ["", "| # | instances | delay us | preferred | concurrency | infer/s | p50 ms | p99 ms | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [_md_row(m, result) for m in sorted(result.measurements, key=lambda m: m.index)]
    lines += ["", "![variants](%s)" % REPORT_PNG, ""]
    return "\n".join(lines)


def write_plot(result: TuneResult, path: Path) -> Path:
    """Every measured point on throughput vs p99; the chosen one starred, the constraint drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ok = [m for m in result.measurements if m.ok]
    for inst in sorted({m.point.variant.instances for m in ok}):
        pts = [m for m in ok if m.point.variant.instances == inst]
        ax.scatter([m.p99_ms for m in pts], [m.throughput for m in pts], s=[18 + 4 * m.point.concurrency ** 0.5
                   for m in pts], alpha=0.7, label="%d instance(s)" % inst)
    if result.chosen is not None:
        c = result.chosen
        ax.scatter([c.p99_ms], [c.throughput], marker="*", s=320, facecolors="none", edgecolors="red", linewidths=1.5,
                   label="chosen: %s @ c=%d" % (c.point.variant.label(), c.point.concurrency))
    if result.objective.budget_ms:
        ax.axvline(result.objective.budget_ms, color="grey", linestyle="--", label="p99 budget")
    if result.objective.min_throughput:
        ax.axhline(result.objective.min_throughput, color="grey", linestyle=":", label="min throughput")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title("%s: %d of %d grid points measured (%s)" % (result.model, result.measured, result.grid_size,
                                                               result.mode))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_reports(result: TuneResult, report_dir: Path) -> dict[str, Path]:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": report_dir / REPORT_JSON, "markdown": report_dir / REPORT_MD, "plot": report_dir / REPORT_PNG}
    replace_file_atomically(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    replace_file_atomically(paths["markdown"], to_markdown(result))
    try:
        write_plot(result, paths["plot"])
    except Exception as exc:  # a broken matplotlib must not lose the measurements
        log.warning("could not draw %s: %s", paths["plot"], exc)
        paths.pop("plot")
    return paths
