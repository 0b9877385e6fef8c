"""``metadata``: the server's effective config and metadata agree with config.pbtxt, and
config.pbtxt with the manifest (names, dtypes, dims, reshape, max batch, backend)."""

from __future__ import annotations

import time
from typing import Any, Iterable

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.mapping import tensor_config, triton_dtype
from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import wire_dtype

_PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
# per tensor name: (protocol dtype, dims, reshape or None)
TensorView = dict[str, tuple[str, list[int], list[int] | None]]


def _normalized(cfg: dict) -> dict:
    """Names, dtypes, dims, reshape, max batch and backend of a config in JSON (server) form."""
    def tensors(items: Iterable[dict]) -> TensorView:
        return {t["name"]: (wire_dtype(t.get("data_type", "TYPE_INVALID")), [int(d) for d in t.get("dims", [])],
                            [int(d) for d in t["reshape"].get("shape", [])] if "reshape" in t else None)
                for t in items}
    platform = cfg.get("platform") or ""
    return {"max_batch_size": int(cfg.get("max_batch_size", 0)),
            "backend": cfg.get("backend") or _PLATFORM_BACKENDS.get(platform, platform),
            "input": tensors(cfg.get("input", [])), "output": tensors(cfg.get("output", []))}


def _config_json(config: model_config_pb2.ModelConfig) -> dict:
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _reshape_words(reshape: list[int] | None) -> str:
    return "none" if reshape is None else str(reshape)


def _diff_configs(a: dict, b: dict, a_name: str, b_name: str, dtypes: bool = True) -> list[str]:
    """Differences between two normalized configs. A reshape must match on both sides, absent
    included: the server's config JSON keeps an empty ``reshape {}`` (backends find it there to
    serve dims [1] as [batch]), so only a changed config lacks it. The model metadata carries no
    reshape at all (its shape is the dims), which is why ``metadata_problems`` compares dims there."""
    problems = []
    if a["max_batch_size"] != b["max_batch_size"]:
        problems.append("max_batch_size %d in %s but %d in %s" % (a["max_batch_size"], a_name, b["max_batch_size"],
                                                                  b_name))
    if a.get("backend") and b.get("backend") and a["backend"] != b["backend"]:
        problems.append("backend %r in %s but %r in %s" % (a["backend"], a_name, b["backend"], b_name))
    for kind in ("input", "output"):
        if set(a[kind]) != set(b[kind]):
            problems.append("%ss %s in %s but %s in %s" % (kind, sorted(a[kind]), a_name, sorted(b[kind]), b_name))
        for name in sorted(set(a[kind]) & set(b[kind])):
            (da, dims_a, ra), (db, dims_b, rb) = a[kind][name], b[kind][name]
            if dtypes and da != db:
                problems.append("%s %r: dtype %s in %s but %s in %s" % (kind, name, da, a_name, db, b_name))
            if dims_a != dims_b:
                problems.append("%s %r: dims %s in %s but %s in %s" % (kind, name, dims_a, a_name, dims_b, b_name))
            if ra != rb:  # one side without a reshape is a difference too: [batch, 1] on the wire vs [batch]
                problems.append("%s %r: reshape %s in %s but %s in %s" % (kind, name, _reshape_words(ra), a_name,
                                                                         _reshape_words(rb), b_name))
    return problems


def _manifest_view(manifest: Manifest) -> dict:
    def tensors(specs: Iterable[Any]) -> TensorView:
        out: TensorView = {}
        for t in specs:
            tc = tensor_config(t)
            out[t.name] = (wire_dtype(triton_dtype(t.dtype)), list(tc.dims), list(tc.reshape)
                           if tc.reshape is not None else None)
        return out
    return {"max_batch_size": manifest.max_batch_size, "backend": manifest.backend,
            "input": tensors(manifest.spec.inputs), "output": tensors(manifest.spec.outputs)}


def metadata_problems(target: ModelTarget, server_config: dict, metadata: dict) -> list[str]:
    """Differences between the server's config/metadata (JSON), config.pbtxt and the manifest.
    TensorRT dtypes come from the engine, so they are not held to the torch dtypes."""
    local = _normalized(_config_json(target.config))
    problems = _diff_configs(local, _normalized(server_config), "config.pbtxt", "the server's config")
    problems += _diff_configs(_manifest_view(target.manifest), local, "manifest.json", "config.pbtxt",
                              dtypes=target.manifest.backend != "tensorrt")
    lead = [-1] if target.batching else []
    for kind, declared in (("inputs", local["input"]), ("outputs", local["output"])):
        seen = {t["name"]: t for t in metadata.get(kind, [])}
        if set(seen) != set(declared):
            problems.append("metadata %s %s but config.pbtxt declares %s" % (kind, sorted(seen), sorted(declared)))
        for name in sorted(set(seen) & set(declared)):
            dtype, dims, _ = declared[name]
            shape = [int(d) for d in seen[name].get("shape", [])]
            if seen[name].get("datatype") != dtype:
                problems.append("metadata %s %r: datatype %s, config.pbtxt says %s"
                                % (kind[:-1], name, seen[name].get("datatype"), dtype))
            if shape != lead + dims:
                problems.append("metadata %s %r: shape %s, config.pbtxt implies %s"
                                % (kind[:-1], name, shape, lead + dims))
    return problems


def check_metadata(target: ModelTarget, session: Session) -> CheckResult:
    """The server's effective config and metadata agree with config.pbtxt, and config.pbtxt with the manifest."""
    t0 = time.monotonic()
    problems = metadata_problems(target, session.http.get_model_config(target.name),
                                 session.http.get_model_metadata(target.name))
    if problems:
        return finished("metadata", CheckStatus.FAIL, "; ".join(problems), t0)
    return finished("metadata", CheckStatus.PASS, "%d inputs, %d outputs, max_batch_size %d agree with config.pbtxt "
                    "and the manifest" % (len(target.inputs), len(target.outputs), target.max_batch_size), t0)


register(Check("metadata", 20, lambda ctx: check_metadata(ctx.target, ctx.session)))
