"""The one way config.pbtxt text is made and written, checked against Triton's own schema.

``generate`` renders a ``ModelConfigPlan`` through the Jinja template (``render_config``);
``tune`` turns a ``ModelConfig`` message into text (``config_text``). Either text is parsed with
``google.protobuf.text_format`` into tritonclient's ``model_config_pb2.ModelConfig`` and the
mapping's invariants are checked again on the parsed message, so neither a template bug nor a
tuned variant can ship a config that Triton rejects at load time; ``write_config`` checks once
more and writes atomically, for both.

Triton's schema comes with the client library (``tritonclient``), which ``generate`` does not
otherwise need: where it is not installed the rendered text is written unchecked and ``generate``
says so in one line (``SCHEMA_SKIPPED``); the server still checks the config when it loads the
model, and the test suite checks every template path with the schema. Vendoring the generated
descriptor instead would pin a second copy of Triton's schema that could drift from the client's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import text_format

from aitune_triton.errors import ModelError
from aitune_triton.templating import render
from aitune_triton.triton.mapping import ModelConfigPlan
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.version import __version__

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

log = logging.getLogger(__name__)

CONFIG = "config.pbtxt"
SCHEMA_SKIPPED = ("config.pbtxt was not checked against Triton's ModelConfig schema: tritonclient is not installed "
                  "here (pip install 'tritonclient[grpc]' adds the check); Triton checks it when it loads the model")


def schema() -> Any | None:
    """tritonclient's ``model_config_pb2`` module (Triton's ModelConfig schema), None when tritonclient
    cannot be imported."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except ImportError:
        return None
    return pb2


def _check_text(text: str, num_profiles: int) -> None:
    """Parse and check ``text`` with Triton's schema; without tritonclient there is nothing to parse with."""
    if schema() is None:
        log.info("%s", SCHEMA_SKIPPED)
        return
    check_config(parse_config(text), num_profiles)


def render_config(plan: ModelConfigPlan) -> str:
    text = render("config.pbtxt.j2", plan=plan, tool_version=__version__)
    _check_text(text, plan.num_profiles)
    return text


def config_text(cfg: model_config_pb2.ModelConfig, header: str = "", num_profiles: int = 0) -> str:
    """``cfg`` as checked pbtxt under a ``#`` comment header. A zero queue delay is spelled out:
    the text format omits zero fields, and "0" is a choice the reader should see."""
    body = text_format.MessageToString(cfg, use_short_repeated_primitives=True)
    if cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 0:
        body = body.replace("dynamic_batching {\n", "dynamic_batching {\n  max_queue_delay_microseconds: 0\n", 1)
    text = "".join("# %s\n" % line for line in header.splitlines()) + body
    check_config(parse_config(text), num_profiles)
    return text


def write_config(model_dir: Path, text: str, num_profiles: int = 0) -> Path:
    """Check ``text`` and write it as ``model_dir``'s config.pbtxt, atomically (a reader or a
    server loading the model sees the old text or the new one, never half of it)."""
    _check_text(text, num_profiles)
    path = Path(model_dir) / CONFIG
    replace_file_atomically(path, text)
    return path


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelError("rendered config.pbtxt does not parse as a Triton ModelConfig: %s" % exc) from exc


def config_problems(cfg: model_config_pb2.ModelConfig, num_profiles: int = 0) -> list[str]:
    """Rule violations Triton would report at load time (or worse, at request time)."""
    from tritonclient.grpc import model_config_pb2

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
        if cfg.max_batch_size == 0 and t.HasField("reshape") and len(t.reshape.shape) == 0:
            problems.append("%s.reshape: an empty reshape is refused for a model without a batch axis (no scalar "
                            "tensors); declare dims [1] without reshape" % t.name)
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
