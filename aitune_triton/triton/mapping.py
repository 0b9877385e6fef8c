"""Pure rules from (IOSpec, ProfileSet, backend choice) to a typed ``ModelConfigPlan``.

Every rule is a small function with its own test; the rendered protobuf is checked against
the same invariants again in ``render.py``. The Triton facts they rest on:

* with ``max_batch_size > 0`` the served shape is ``[-1] + dims``: ``dims`` never hold the batch
  axis, ``-1`` marks a size that varies, and ``dims: []`` is illegal (an output with only the batch
  axis is ``dims: [1]`` + ``reshape: { shape: [] }``);
* the dynamic batcher sends any batch from 1 to ``max_batch_size`` to any instance and is not
  profile-aware, so every instance group's TensorRT profiles together cover batch 1..max, and an
  instance uses only profile 0 unless ``instance_group.profile`` lists them (TensorRT plans only);
  ``preferred_batch_size`` is set only for plans with several profiles (their opt batches);
* ``KIND_GPU`` ``count`` is per listed GPU (no ``gpus``: every GPU); the TensorRT backend accepts
  GPU instances only; ``gpus`` is rejected for ``KIND_CPU``;
* CUDA graphs (TensorRT only) are captured per ``graph_spec`` batch size, non-batch dims from each
  profile's opt;
* ``model_warmup`` dims exclude the batch axis and must be concrete; raw row-major files live in
  ``<model>/warmup/``; a model is not ready until its warmup passes;
* the Python backend gets GPU-resident inputs only with ``FORCE_CPU_ONLY_INPUT_TENSORS: "no"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from aitune_triton.defaults import QUEUE_DELAY_US
from aitune_triton.errors import UserError
from aitune_triton.spec import IOSpec, TensorSpec
from aitune_triton.profile_set import ProfileSet

log = logging.getLogger(__name__)

TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
PLATFORMS = {"tensorrt": ("tensorrt_plan", None, "model.plan"),
             "onnxruntime": ("onnxruntime_onnx", None, "model.onnx"),
             "python": (None, "python", "model.py")}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class InstanceGroup:
    count: int
    kind: str
    gpus: tuple[int, ...] = ()
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class DynamicBatching:
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class GraphSpec:
    batch_size: int
    inputs: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class WarmupInput:
    name: str
    data_type: str
    dims: tuple[int, ...]
    data_file: str


@dataclass(frozen=True)
class Warmup:
    name: str
    batch_size: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True)
class ModelConfigPlan:
    """Everything config.pbtxt says, as data. Templates only print it."""

    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    instance_groups: tuple[InstanceGroup, ...]
    dynamic_batching: DynamicBatching | None = None
    cuda_graphs: bool = False
    graph_specs: tuple[GraphSpec, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    warmup: tuple[Warmup, ...] = ()
    ort_tensorrt: tuple[tuple[str, str], ...] = ()
    num_profiles: int = 0
    description: str = ""

    @property
    def platform(self) -> str | None:
        return PLATFORMS[self.backend][0]

    @property
    def backend_name(self) -> str | None:
        return PLATFORMS[self.backend][1]

    @property
    def model_filename(self) -> str:
        return PLATFORMS[self.backend][2]


def triton_dtype(dtype: str) -> str:
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise UserError("dtype %s has no Triton equivalent; cast it in forward()" % dtype) from None


def tensor_config(t: TensorSpec, dtype: str | None = None) -> TensorConfig:
    """Dims exclude the batch axis; dynamic axes are -1. A batch-only tensor is declared ``dims: [1]``
    with ``reshape: { shape: [] }`` because ``dims: []`` is illegal; a scalar of a model without a batch
    axis is plain ``dims: [1]`` (Triton refuses an empty reshape there: it has no scalar tensors)."""
    dims = t.triton_dims()
    if not dims:
        return TensorConfig(t.name, triton_dtype(dtype or t.dtype), (1,), () if t.has_batch else None)
    return TensorConfig(t.name, triton_dtype(dtype or t.dtype), dims)


def client_shape_notes(spec: IOSpec) -> tuple[str, ...]:
    """What clients send or receive where it differs from eager PyTorch: a tensor with no axis besides
    the batch is declared ``dims: [1]`` + ``reshape: { shape: [] }`` (Triton refuses empty dims), so the
    model sees ``[batch]`` but the wire carries ``[batch, 1]``; a scalar of a model without a batch axis
    is ``dims: [1]`` on the wire (the served model turns it into a scalar and back)."""
    notes = []
    for kind, tensors, verb, side in (("input", spec.inputs, "send", "takes"),
                                      ("output", spec.outputs, "receive", "returns")):
        for t in tensors:
            if t.triton_dims():
                continue
            if t.has_batch:
                notes.append("%s %r is served as dims [1] with reshape [] (Triton refuses empty dims): clients %s "
                             "shape [batch, 1] where eager PyTorch %s [batch]" % (kind, t.name, verb, side))
            else:
                notes.append("%s %r is a scalar, served as dims [1] (Triton has no scalar tensors): clients %s "
                             "shape [1] where eager PyTorch %s [] (a scalar)" % (kind, t.name, verb, side))
    return tuple(notes)


def profile_max_batch(profile_set: ProfileSet, indices: Sequence[int]) -> int:
    """The largest batch the given profiles can take together: the max over profiles of the
    batch every input accepts in that profile."""
    return max(profile_set.profiles[i].batch_range()[2] for i in indices)


def max_batch_size(spec: IOSpec, requested: int, profile_set: ProfileSet | None,
                   groups: Sequence[InstanceGroup] = ()) -> int:
    """> 0 only with a batch axis; never above the smallest max batch of any instance group's profiles."""
    if not spec.batching:
        return 0
    if requested < 1:
        raise UserError("max_batch_size must be >= 1 for a batching model, got %d" % requested)
    if profile_set is None:
        return requested
    limits = []
    for g in groups or (InstanceGroup(1, "KIND_GPU"),):
        indices = [int(p) for p in g.profiles] or [0]
        limits.append(profile_max_batch(profile_set, indices))
    limit = min(limits)
    if requested > limit:
        raise UserError("max_batch_size %d is above what the TensorRT profiles allow (%d); lower max_batch_size or "
                        "raise the profiles' max batch" % (requested, limit))
    return requested


def instance_groups(count: int, kind: str, num_profiles: int = 0,
                    gpus: Sequence[int] = ()) -> tuple[InstanceGroup, ...]:
    """One group; a multi-profile plan lists every profile so the group covers batch 1..max
    (omitting ``profile`` would make Triton use profile 0 only)."""
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise UserError("instance kind must be KIND_GPU or KIND_CPU, got %r" % kind)
    if gpus and kind != "KIND_GPU":
        raise UserError("gpus can only be given for GPU instances")
    profiles = tuple(str(i) for i in range(num_profiles)) if num_profiles > 1 else ()
    return (InstanceGroup(count, kind, tuple(gpus), profiles),)


def gpu_placement(kind: str, requested: Sequence[int] = (), visible: int = 0) -> tuple[int, ...]:
    """The GPUs an instance group is placed on, written into the config as ``gpus: [...]``.

    ``count`` instances go on *each* listed GPU. Default: every GPU visible where the repository is
    generated, so the config states the placement instead of relying on Triton's implicit "all GPUs"
    (which silently changes with the serving host). Nothing visible and nothing requested: no list
    (Triton's default), since a guess would pin instances to a GPU the serving host may not have.
    """
    if kind != "KIND_GPU":
        if requested:
            raise UserError("gpus can only be given for GPU instances (device cuda or a TensorRT plan)")
        return ()
    gpus = tuple(int(g) for g in requested)
    if not gpus:
        return tuple(range(visible))
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError("gpus must be distinct GPU indices >= 0, got %s" % ",".join(str(g) for g in gpus))
    if visible and max(gpus) >= visible:  # the serving host may have more GPUs than this one: say so, go on
        log.warning("gpus %s: this machine sees %d GPU(s); Triton will refuse to load the model on a host "
                    "without GPU %d", ",".join(str(g) for g in gpus), visible, max(gpus))
    return gpus


def dynamic_batching(spec: IOSpec, max_batch: int, delay_us: int, profile_set: ProfileSet | None,
                     multi_profile_plan: bool) -> DynamicBatching | None:
    """On for batching models whose rows were found independent (merging requests into one batch
    must not change any request's answer). Preferred sizes only for multi-profile plans (Triton's
    advice): the profiles' opt batches, each <= max_batch_size."""
    if not spec.dynamic_batching_ok or max_batch < 1:
        return None
    preferred: tuple[int, ...] = ()
    if multi_profile_plan and profile_set is not None:
        preferred = tuple(b for b in profile_set.opt_batches() if 1 <= b <= max_batch)
    return DynamicBatching(delay_us, preferred)


def graph_specs(spec: IOSpec, profile_set: ProfileSet, max_batch: int,
                preferred: Sequence[int] = ()) -> tuple[GraphSpec, ...]:
    """CUDA graphs for each profile's opt shape and for the preferred batch sizes (non-batch dims
    from the opt shape: a graph only fires for requests of exactly those shapes)."""
    out: dict[int, GraphSpec] = {}
    for profile in profile_set.profiles:
        opts = {n: profile.shapes(n)[1] for n in profile.names()}
        non_batch = tuple((t.name, tuple(opts[t.name][1:] if t.has_batch else opts[t.name])) for t in spec.inputs)
        batches = [opts[spec.inputs[0].name][0]] if spec.batching else [0]
        batches += [b for b in preferred if b not in batches]
        for b in batches:
            b = min(b, max_batch) if spec.batching else 0
            out.setdefault(b, GraphSpec(b, non_batch))
    return tuple(out[k] for k in sorted(out))


def warmup(spec: IOSpec, max_batch: int, sample_dims: dict[str, tuple[int, ...]]) -> tuple[Warmup, ...]:
    """Warm up at batch 1 and max batch with recorded data (files under ``warmup/``; Triton
    replicates one batch item to fill the batch). ``sample_dims`` are the concrete non-batch dims."""
    sizes = [1, max_batch] if spec.batching and max_batch > 1 else [1]
    inputs = tuple(WarmupInput(t.name, triton_dtype(t.dtype), sample_dims[t.name] or (1,), "%s.bin" % t.name)
                   for t in spec.inputs)
    return tuple(Warmup("batch_%d" % b, b, inputs) for b in sizes)


@dataclass(frozen=True)
class MappingOptions:
    """Inputs of the mapping that are not in the spec: they come from GenerateConfig / the CLI."""

    name: str
    backend: str
    max_batch_size: int
    instances: int = 1
    kind: str = "KIND_CPU"
    gpus: tuple[int, ...] = ()  # GPU instances: which GPUs (each gets ``instances``); () = every visible one
    visible_gpus: int = 0  # GPUs seen where the repository is generated (torch.cuda.device_count())
    queue_delay_us: int = QUEUE_DELAY_US
    use_cuda_graphs: bool = False
    warmup_dims: dict[str, tuple[int, ...]] | None = None
    io_dtypes: dict[str, str] = field(default_factory=dict)
    ort_tensorrt: tuple[tuple[str, str], ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    description: str = ""


def plan_model_config(spec: IOSpec, profile_set: ProfileSet | None, opts: MappingOptions) -> ModelConfigPlan:
    """Apply every rule. For a TensorRT plan, ``opts.io_dtypes`` carries the engine's own I/O dtypes."""
    if opts.backend not in PLATFORMS:
        raise UserError("unknown backend %r" % opts.backend)
    is_trt = opts.backend == "tensorrt"
    num_profiles = len(profile_set.profiles) if (is_trt and profile_set) else 0
    kind = "KIND_GPU" if is_trt else opts.kind
    groups = instance_groups(opts.instances, kind, num_profiles, gpu_placement(kind, opts.gpus, opts.visible_gpus))
    mbs = max_batch_size(spec, opts.max_batch_size, profile_set if is_trt else None, groups)
    batching = dynamic_batching(spec, mbs, opts.queue_delay_us, profile_set, num_profiles > 1)
    graphs: tuple[GraphSpec, ...] = ()
    if is_trt and opts.use_cuda_graphs and profile_set is not None:
        graphs = graph_specs(spec, profile_set, mbs, batching.preferred_batch_sizes if batching else ())
    params = list(opts.parameters)
    if is_trt and num_profiles > 1:
        params.append(("execution_context_allocation_strategy", "ON_PROFILE_CHANGE"))
    if opts.backend == "python" and kind == "KIND_GPU":
        params.append(("FORCE_CPU_ONLY_INPUT_TENSORS", "no"))
    return ModelConfigPlan(
        name=opts.name,
        backend=opts.backend,
        max_batch_size=mbs,
        inputs=tuple(tensor_config(t, opts.io_dtypes.get(t.name)) for t in spec.inputs),
        outputs=tuple(tensor_config(t, opts.io_dtypes.get(t.name)) for t in spec.outputs),
        instance_groups=groups,
        dynamic_batching=batching,
        cuda_graphs=bool(graphs),
        graph_specs=graphs,
        parameters=tuple(params),
        warmup=warmup(spec, mbs, opts.warmup_dims) if opts.warmup_dims is not None else (),
        ort_tensorrt=opts.ort_tensorrt if opts.backend == "onnxruntime" else (),
        num_profiles=num_profiles,
        description=opts.description,
    )
