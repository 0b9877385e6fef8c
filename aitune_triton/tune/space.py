"""The search grid of one model and the config each of its points loads.

The grid is instance count x ``max_queue_delay_microseconds`` x preferred batch sizes (searched
only for multi-profile TensorRT plans, where Triton advises them; otherwise the config's own
value is kept) x client concurrency x client transport. ``max_batch_size`` is never raised above
the manifest's (what the plan's profiles allow), so every variant loads.

Where the instance group is on GPU and the server sees GPUs, the instance count is per GPU (the
instance_group ``count`` applies to each listed GPU, or to every visible one when none is listed)
and the client transport (perf_analyzer ``--shared-memory none|system|cuda``) is searched too:
it is a measurement dimension, not a config one, so the config a point loads never depends on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2

from aitune_triton.errors import UserError
from aitune_triton.triton.perf import PerfOptions
from aitune_triton.tune.points import TRANSPORTS, Point, Variant

from aitune_triton.triton.manifest import Manifest
from aitune_triton.tune.options import TuneOptions, check_transports

log = logging.getLogger(__name__)

DIMENSIONS = ("concurrency", "transport", "instances", "delay_us", "preferred")  # the quick search's order


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

    def snap(self, dim: str, value: Any) -> Any:
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
    else:  # a variant that does not batch: no dynamic batcher, whatever the base had
        cfg.ClearField("dynamic_batching")
    return cfg


def current_variant(cfg: model_config_pb2.ModelConfig) -> Variant:
    count = cfg.instance_group[0].count if cfg.instance_group else 1
    if cfg.max_batch_size == 0 or not cfg.HasField("dynamic_batching"):
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
    if on_gpu and gpus:
        where = "%d instance(s) on each of GPU %s (%d in all)" % (instances, ", ".join(map(str, gpus)),
                                                                   instances * devices)
    elif on_gpu and visible_gpus:
        where = "%d instance(s) on each of the %d GPU(s) the server sees (%d in all)" % (
            instances, visible_gpus, instances * devices)
    elif on_gpu:
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


def instance_copies(cfg: model_config_pb2.ModelConfig, visible: int) -> int:
    """How many model instances one unit of the instance_group ``count`` makes, over all groups:
    a GPU group (or KIND_AUTO with GPUs visible) gets ``count`` on each listed GPU, or on each of
    the ``visible`` ones when it lists none; any other group gets ``count``. For the Python backend
    each instance is one stub process, which is what reloads wait on."""
    gpu, auto = model_config_pb2.ModelInstanceGroup.KIND_GPU, model_config_pb2.ModelInstanceGroup.KIND_AUTO
    groups = list(cfg.instance_group) or [model_config_pb2.ModelInstanceGroup(kind=auto)]
    return sum((len(g.gpus) or visible or 1) if g.kind == gpu or (g.kind == auto and visible) else 1
               for g in groups)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def batching_refused(manifest: "Manifest") -> str | None:
    """Why dynamic batching must stay off for this model, or None: generate's probe found that a
    row's outputs change with the rows batched beside it, so merging requests gives wrong answers."""
    probe = getattr(getattr(manifest, "checks", None), "batching", None)
    if probe is None or probe.rows_independent:
        return None
    return ("dynamic batching stays off: generate found that rows are not independent (%s), so merging requests "
            "would change answers" % (probe.reason or "a row's outputs change with the rows beside it"))


def build_space(cfg: model_config_pb2.ModelConfig, manifest: Manifest, options: TuneOptions,
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
    unbatchable = cfg.max_batch_size == 0 or batching_refused(manifest) is not None
    delays: tuple[int | None, ...] = (None,) if unbatchable else tuple(options.delays_us)
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
