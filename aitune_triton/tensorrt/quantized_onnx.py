"""The ONNX the TensorRT stage stages: ``TensorRTBackendConfig.quantization_config`` applied for real.

Dispatched on the config's type:

* ``None``: the plain export, checked against eager with the per-dtype tolerances.
* ``ONNXQuantizationConfig`` / ``ONNXAutoCastConfig``: the float32 export (checked as usual), then
  ModelOpt rewrites it (``quantization.apply_onnx_quantization``): PTQ calibrated on the samples
  with ONNX Runtime CPU inserts Q/DQ nodes; AutoCast inserts Casts to fp16/bf16. The plan is built
  strongly typed from it.
* ``TorchQuantizationConfig``: ModelOpt quantizes a copy of the module, calibrated on the samples,
  and the copy is exported with the TorchScript exporter: ModelOpt's quantizers export as Q/DQ only
  through it (torch.export cannot trace them). The plan is built weakly typed with the Q/DQ flag.

Whatever was applied, the staged ONNX is run on ONNX Runtime CPU on the samples against the
*unquantized* eager model with the tolerance of its precision (``QUANTIZED_TOLERANCES``) and refused
with the usual table when it misses. Only the samples: a quantized graph is accurate on data like
its calibration data, and random inputs at the profile edges are not (the float export, and for
torch quantization the export of the quantized module, are checked at the edges too); the
``QuantizationRecord`` (what ModelOpt did, the graph's Q/DQ/Cast counts, the check) goes to the
manifest. An option that cannot be honoured is a ``UserError``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from aitune_triton.errors import ModelError, UserError
from aitune_triton.export.onnx import OnnxArtifact, export_onnx
from aitune_triton.export.onnx_check import check_onnx
from aitune_triton.numerics import Tolerance, ToleranceOverride
from aitune_triton.spec import IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.tensorrt import quantization
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
    quantization_to_dict,
)
from aitune_triton.profile_set import ProfileSet
from aitune_triton.tensorrt.section import QuantizationRecord, QuantMethod
from aitune_triton.tensorrt.settings import precision_flags

log = logging.getLogger(__name__)

# Tolerance of a quantized graph against eager float32, per precision: (atol as a fraction of the
# output's peak |eager| value over the samples, rtol). Quantization error scales with the range a
# tensor spans, so a fixed atol would be too tight for large outputs and meaningless for small
# ones. fp16/bf16 keep ~3/2 significant digits; int8/fp8 steps are 1/127 and 1/16 of a tensor's
# range, and a few layers compound them; int4 is weight-only with 1/7 steps.
QUANTIZED_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp16": (0.01, 0.01),
    "bf16": (0.05, 0.05),
    "int8": (0.10, 0.10),
    "fp8": (0.15, 0.10),
    "int4": (0.25, 0.10),
}
_LOW_PRECISION = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN,
                  onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class StagedOnnx:
    """The ONNX to build the plan from, and what quantization made it (None: not quantized)."""

    artifact: OnnxArtifact
    quantization: QuantizationRecord | None


def check_applicable(backends: Sequence[str], trt_config: TensorRTBackendConfig) -> None:
    """Refuse, before any work, a quantization config that nothing would apply."""
    q = trt_config.quantization_config
    if q is None:
        return
    if "tensorrt" not in backends:
        raise UserError("quantization_config (%s) applies to the TensorRT backend only, but the backends are %s; "
                        "add 'tensorrt' (--backend tensorrt) or drop quantization_config"
                        % (type(q).__name__, ", ".join(backends)))
    if importlib.util.find_spec("modelopt") is None:
        raise UserError("nvidia-modelopt is required for %s: %s" % (type(q).__name__, quantization.INSTALL_HINT))


def quantized_tolerances(spec: IOSpec, outputs: Sequence[object], precision: str) -> dict[str, Tolerance]:
    """Per float output: ``Tolerance(fraction * peak |eager|, rtol)`` (see ``QUANTIZED_TOLERANCES``).
    Integer and bool outputs are not listed, so they keep their exact comparison."""
    fraction, rtol = QUANTIZED_TOLERANCES[precision]
    peaks: dict[str, float] = {}
    for out in outputs:
        for name, t in flatten_outputs(out):
            if t.is_floating_point():
                peak = float(t.detach().abs().max()) if t.numel() else 0.0
                peaks[name] = max(peaks.get(name, 0.0), peak)
    floats = {t.name for t in spec.outputs if t.dtype in ("float32", "float16", "bfloat16")}
    return {name: Tolerance(fraction * peak if peak > 0 else fraction, rtol)
            for name, peak in peaks.items() if name in floats}


def tolerance_rule(precision: str) -> str:
    fraction, rtol = QUANTIZED_TOLERANCES[precision]
    return "%s: atol = %g x peak |eager output| over the samples, rtol = %g" % (precision, fraction, rtol)


def calibration_feeds(spec: IOSpec, samples: Sequence[Sample]) -> list[dict[str, np.ndarray]]:
    """The samples as ONNX Runtime feeds (numpy has no bfloat16: such inputs go in as float32)."""
    feeds = []
    for sample in samples:
        feed = {}
        for name, value in sample_feed(spec, sample).items():
            value = value.detach().cpu()
            feed[name] = (value.float() if value.dtype is torch.bfloat16 else value).contiguous().numpy()
        feeds.append(feed)
    return feeds


def graph_summary(path: Path) -> dict[str, int]:
    """Counts that show what quantization did: Q/DQ and Cast nodes, low-precision initializers."""
    proto = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    low = sum(1 for t in proto.graph.initializer if t.data_type in _LOW_PRECISION)
    return {"nodes": len(proto.graph.node), "QuantizeLinear": ops["QuantizeLinear"],
            "DequantizeLinear": ops["DequantizeLinear"], "Cast": ops["Cast"], "low_precision_initializers": low}


def _opset(path: Path) -> int:
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _tool_version() -> str:
    try:
        return "nvidia-modelopt %s" % importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return "nvidia-modelopt (version unknown)"


def expand_excluded(path: Path, qconfig: ONNXQuantizationConfig | ONNXAutoCastConfig) -> tuple[str, ...]:
    """The node names ``nodes_to_exclude`` selects (``re.match``, as ModelOpt does). A pattern that
    selects nothing is an error: ModelOpt would quantize the node the user meant to keep."""
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    matched: list[str] = []
    for pattern in qconfig.nodes_to_exclude:
        hits = [n for n in names if re.match(pattern, n)]
        if not hits:
            raise UserError("%s.nodes_to_exclude pattern %r matches no node of the exported ONNX (its nodes are "
                            "named like %s)" % (type(qconfig).__name__, pattern, ", ".join(names[:4]) or "nothing"))
        matched += hits
    return tuple(dict.fromkeys(matched))


def _require_applied(qconfig: object, precision: str, graph: dict[str, int], names: str) -> None:
    """ModelOpt skips ops it cannot quantize at this precision without failing; a graph it left
    unchanged is an option that could not be honoured."""
    if isinstance(qconfig, ONNXAutoCastConfig) or precision == "fp16":
        if not graph["Cast"] and not graph["low_precision_initializers"]:
            raise UserError("%s kept every node of this model in float32 (no Cast, no %s initializer); raise "
                            "data_max or drop the quantization_config" % (type(qconfig).__name__, precision))
        return
    if not graph["QuantizeLinear"] and not graph["DequantizeLinear"]:
        other = "use int8, or " if precision != "int8" else "use "
        raise UserError("%s(precision=%r) quantized no node of this model: ModelOpt quantizes none of its ops (%s) "
                        "at %s (it skips layers too small to gain); %sONNXAutoCastConfig for fp16/bf16, or drop "
                        "quantization_config" % (type(qconfig).__name__, precision, names, precision, other))


def _check(model: torch.nn.Module, spec: IOSpec, path: Path, samples: Sequence[Sample], profiles: ProfileSet,
           outputs: Sequence[object], qconfig: object, precision: str) -> dict:
    """ONNX Runtime CPU vs the unquantized eager model with the precision's tolerance; the table on a miss."""
    try:
        check = check_onnx(model, spec, path, samples, profiles, quantized_tolerances(spec, outputs, precision),
                           profile_edges=False)
    except ModelError as exc:
        if not str(exc).startswith("ONNX Runtime CPU"):
            raise
        unrunnable: str | None = str(exc).split(": ", 1)[-1].rsplit("; ", 1)[0] or type(exc).__name__
    else:
        unrunnable = check.skipped
    if unrunnable:
        # the check is what makes a quantized graph trustworthy: one that cannot be run is refused
        raise UserError("%s(precision=%r): ONNX Runtime CPU cannot run the graph ModelOpt produced (%s), so it cannot "
                        "be checked against eager; use int8, or ONNXAutoCastConfig for fp16/bf16"
                        % (type(qconfig).__name__, precision, unrunnable))
    if not check.ok:
        raise ModelError("the %s-quantized ONNX (%s) does not match eager PyTorch within the %s tolerance (%s):\n%s\n"
                         "exclude the sensitive nodes (nodes_to_exclude), calibrate with more representative samples, "
                         "or use a wider precision" % (precision, type(qconfig).__name__, precision, check.runtime,
                                                       check.table()))
    return check.to_dict()


def _move_into(src_dir: Path, path: Path) -> None:
    """Data files first, the model last: a reader never sees a model whose data is missing."""
    for f in sorted(src_dir.iterdir(), key=lambda f: f.name == path.name):
        os.replace(f, path.parent / f.name)


def _onnx_quantized(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], outputs: Sequence[object],
                    profiles: ProfileSet, path: Path, trt_config: TensorRTBackendConfig,
                    tolerance: ToleranceOverride | None, progress: Progress) -> StagedOnnx:
    q = trt_config.quantization_config
    assert isinstance(q, (ONNXQuantizationConfig, ONNXAutoCastConfig))
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    try:
        progress("exporting ONNX and checking it with ONNX Runtime")
        plain = export_onnx(model, spec, samples, profiles, work / "float32" / path.name,
                            use_dynamo=trt_config.use_dynamo, opset_version=trt_config.opset_version,
                            tolerance=tolerance)
        excluded = expand_excluded(plain.path, q)
        feeds = calibration_feeds(spec, samples)
        progress("applying %s(precision=%s) with ModelOpt on %d calibration samples"
                 % (type(q).__name__, q.precision, len(feeds)))
        quantized = quantization.apply_onnx_quantization(plain.path, work / "quantized" / path.name, q, feeds)
        graph = graph_summary(quantized)
        ops = sorted({n.op_type for n in onnx.load(str(plain.path), load_external_data=False).graph.node})
        _require_applied(q, q.precision, graph, ", ".join(ops))
        progress("checking the %s ONNX against eager PyTorch with ONNX Runtime" % q.precision)
        check = _check(model, spec, quantized, samples, profiles, outputs, q, q.precision)
        if isinstance(q, ONNXAutoCastConfig):
            method, calibration = QuantMethod.ONNX_AUTOCAST, None
        elif q.precision == "fp16":
            method, calibration = QuantMethod.ONNX_FP16, None
        else:
            method, calibration = QuantMethod.ONNX_PTQ, quantization.ptq_calibration_method(q)
        opset = _opset(quantized)
        _move_into(quantized.parent, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = ("unquantized ops run in %s (ModelOpt's high_precision_dtype)" % quantization.HIGH_PRECISION_DTYPE,) \
        if method is QuantMethod.ONNX_PTQ else ()
    record = QuantizationRecord(
        method=method, config=quantization_to_dict(q) or {}, precision=q.precision, tool=_tool_version(),
        calibration_samples=len(feeds) if method is not QuantMethod.ONNX_FP16 else 0, calibration_method=calibration,
        excluded_nodes=excluded, graph=graph, exporter=plain.exporter, strongly_typed=trt_config.strongly_typed,
        build_flags=_build_flags(trt_config), tolerance_rule=tolerance_rule(q.precision), check=check, notes=notes)
    artifact = OnnxArtifact(path, opset, plain.exporter, plain.input_names, plain.output_names, plain.check)
    return StagedOnnx(artifact, record)


def _reject_custom_ops(qconfig: TorchQuantizationConfig) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        proto = onnx.load(str(path), load_external_data=False)
        custom = sorted({"%s::%s" % (n.domain, n.op_type) for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
        if custom:
            raise UserError("TorchQuantizationConfig(%r) exports TensorRT-only operators (%s) that ONNX Runtime cannot "
                            "run, so the export cannot be checked against eager; use INT8_DEFAULT_CFG, or "
                            "ONNXQuantizationConfig(precision='fp8')"
                            % (qconfig.quantization_config, ", ".join(custom)))
    return check


def _torch_quantized(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], outputs: Sequence[object],
                     profiles: ProfileSet, path: Path, trt_config: TensorRTBackendConfig,
                     progress: Progress) -> StagedOnnx:
    q = trt_config.quantization_config
    assert isinstance(q, TorchQuantizationConfig)
    precision = trt_config.effective_precision
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(module: torch.nn.Module, sample: Sample) -> object:
        return call_with_feed(module, spec, {k: v.to(device) for k, v in sample_feed(spec, sample).items()})

    progress("quantizing a copy of the module with ModelOpt (%s, %d calibration steps)"
             % (q.quantization_config, q.calibration_steps))
    quantized = quantization.apply_torch_quantization(
        copy.deepcopy(model), q, quantization.forward_loop_over(list(samples), run, q.calibration_steps))
    tolerances = quantized_tolerances(spec, outputs, precision)
    notes = []
    if trt_config.use_dynamo:
        notes.append("exported with the TorchScript exporter: ModelOpt's quantizers export as Q/DQ only through it")
        log.info("TorchQuantizationConfig: %s", notes[-1])
    progress("exporting the quantized module to ONNX and checking it with ONNX Runtime")
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    try:
        # the export check compares with the fake-quantized module; _check then with the real eager model
        exported = export_onnx(quantized, spec, samples, profiles, work / path.name, use_dynamo=False,
                               opset_version=trt_config.opset_version, tolerance=tolerances,
                               postprocess=_reject_custom_ops(q))
        graph = graph_summary(exported.path)
        _require_applied(q, precision, graph, "the module's layers")
        check = _check(model, spec, exported.path, samples, profiles, outputs, q, precision)
        _move_into(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = QuantizationRecord(
        method=QuantMethod.TORCH_PTQ, config=quantization_to_dict(q) or {}, precision=precision, tool=_tool_version(),
        calibration_samples=min(len(samples), q.calibration_steps), calibration_method=q.quantization_config,
        excluded_nodes=(), graph=graph, exporter=exported.exporter, strongly_typed=trt_config.strongly_typed,
        build_flags=_build_flags(trt_config), tolerance_rule=tolerance_rule(precision), check=check, notes=tuple(notes))
    artifact = OnnxArtifact(path, exported.opset, exported.exporter, exported.input_names, exported.output_names,
                            exported.check)
    return StagedOnnx(artifact, record)


def _build_flags(trt_config: TensorRTBackendConfig) -> tuple[str, ...]:
    """The trtexec flags that carry the precision (the same dict ``create_config`` uses)."""
    flags = [flag for flag, on in precision_flags(trt_config).items() if on]
    return (("--stronglyTyped",) if trt_config.strongly_typed else ()) + tuple("--%s" % f for f in flags)


def stage_onnx(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], outputs: Sequence[object],
               profiles: ProfileSet, path: Path | str, trt_config: TensorRTBackendConfig,
               tolerance: ToleranceOverride | None = None, progress: Progress = lambda msg: None) -> StagedOnnx:
    """Write the ONNX the plan is built from to ``path``, quantized as ``trt_config`` asks, checked.

    ``outputs`` are the eager outputs of ``samples`` (they scale the quantized tolerances). Nothing
    appears at ``path`` unless every step and check passed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    q = trt_config.quantization_config
    if q is None:
        progress("exporting ONNX and checking it with ONNX Runtime")
        return StagedOnnx(export_onnx(model, spec, samples, profiles, path, use_dynamo=trt_config.use_dynamo,
                                      opset_version=trt_config.opset_version, tolerance=tolerance), None)
    if isinstance(q, TorchQuantizationConfig):
        return _torch_quantized(model, spec, samples, outputs, profiles, path, trt_config, progress)
    return _onnx_quantized(model, spec, samples, outputs, profiles, path, trt_config, tolerance, progress)
