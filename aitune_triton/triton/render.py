"""Render a ``ModelConfigPlan`` to config.pbtxt and check it against Triton's own schema.

The text is parsed with ``google.protobuf.text_format`` into tritonclient's
``model_config_pb2.ModelConfig``, then the mapping's invariants are checked again on the
parsed message, so a template bug cannot ship a config that Triton rejects at load time.
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton import __version__
from aitune_triton.errors import ModelError
from aitune_triton.templating import render
from aitune_triton.triton.mapping import ModelConfigPlan


def render_config(plan: ModelConfigPlan) -> str:
    text = render("config.pbtxt.j2", plan=plan, tool_version=__version__)
    check_config(parse_config(text), num_profiles=plan.num_profiles)
    return text


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelError("rendered config.pbtxt does not parse as a Triton ModelConfig: %s" % exc) from exc


def config_problems(cfg: model_config_pb2.ModelConfig, num_profiles: int = 0) -> list[str]:
    """Rule violations Triton would report at load time (or worse, at request time)."""
    problems = []
    names = [t.name for t in list(cfg.input) + list(cfg.output)]
    if len(set(names)) != len(names):
        problems.append("input/output names are not unique: %s" % names)
    if not cfg.input or not cfg.output:
        problems.append("input/output: a model needs at least one of each")
    for t in list(cfg.input) + list(cfg.output):
        if len(t.dims) == 0:
            problems.append("%s.dims: empty dims are illegal; use dims [1] with reshape { shape: [] }" % t.name)
        if any(d == 0 or d < -1 for d in t.dims):
            problems.append("%s.dims: %s has a size that is neither -1 nor positive" % (t.name, list(t.dims)))
    if cfg.max_batch_size < 0:
        problems.append("max_batch_size: must be >= 0")
    if cfg.HasField("dynamic_batching"):
        if cfg.max_batch_size == 0:
            problems.append("dynamic_batching: needs max_batch_size > 0")
        for size in cfg.dynamic_batching.preferred_batch_size:
            if not 0 < size <= cfg.max_batch_size:
                problems.append("dynamic_batching.preferred_batch_size: %d must be in 1..max_batch_size (%d)"
                                % (size, cfg.max_batch_size))
    for group in cfg.instance_group:
        if group.count < 1:
            problems.append("instance_group.count: must be >= 1")
        if group.gpus and group.kind != model_config_pb2.ModelInstanceGroup.KIND_GPU:
            problems.append("instance_group.gpus: only allowed for KIND_GPU")
        if group.profile and cfg.platform != "tensorrt_plan":
            problems.append("instance_group.profile: only supported for TensorRT plans")
        for p in group.profile:
            if not p.isdigit() or (num_profiles and int(p) >= num_profiles):
                problems.append("instance_group.profile: %r is not a profile index below %d" % (p, num_profiles))
    if cfg.platform == "tensorrt_plan" and any(
            g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in cfg.instance_group):
        problems.append("instance_group.kind: TensorRT plans need KIND_GPU")
    if cfg.optimization.cuda.graphs and cfg.platform != "tensorrt_plan":
        problems.append("optimization.cuda.graphs: only the TensorRT backend uses CUDA graphs")
    for spec in cfg.optimization.cuda.graph_spec:
        if cfg.max_batch_size and not 0 < spec.batch_size <= cfg.max_batch_size:
            problems.append("optimization.cuda.graph_spec.batch_size: %d must be in 1..%d"
                            % (spec.batch_size, cfg.max_batch_size))
    for w in cfg.model_warmup:
        if not 1 <= w.batch_size <= max(cfg.max_batch_size, 1):
            problems.append("model_warmup.batch_size: %d must be in 1..%d" % (w.batch_size, max(cfg.max_batch_size, 1)))
        if set(w.inputs) != {t.name for t in cfg.input}:
            problems.append("model_warmup.inputs: must list every input")
        for name, value in w.inputs.items():
            if any(d < 1 for d in value.dims):
                problems.append("model_warmup.inputs[%s].dims: must be concrete" % name)
    if cfg.backend == "python" and cfg.platform:
        problems.append("platform: Python models set backend only")
    return problems


def check_config(cfg: model_config_pb2.ModelConfig, num_profiles: int = 0) -> None:
    problems = config_problems(cfg, num_profiles)
    if problems:
        raise ModelError("config for %r is invalid: %s" % (cfg.name, "; ".join(problems)))
