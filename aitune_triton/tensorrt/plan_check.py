"""The built plan run on the recorded samples and compared with the eager outputs.

Runs in the build child, right after the plan is read back: a crash inside TensorRT's runtime ends
that process, not the CLI. ``PlanRunner`` is a Polygraphy runner over TensorRT's name-based
execution API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); Polygraphy's
``Comparator.run`` feeds it the samples of ``reference.npz``, and every output is compared with
the eager output by ``numerics.compare`` (the project's one rule for "matches") with the tolerance
of the plan's precision (``plan_tolerances``).

Each I/O buffer is a torch tensor placed where the engine says the tensor lives
(``ICudaEngine.get_tensor_location``): on the GPU for a real plan's execution tensors, in host
memory for a tensor the engine keeps on the host.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from aitune_triton.errors import ModelError
from aitune_triton.numerics import Comparison, Tolerance, ToleranceOverride, compare, tolerance_for
from aitune_triton.tensorrt.config import TensorRTBackendConfig

if TYPE_CHECKING:  # the type checker reads TensorRT's API from tensorrt-stubs; at run time it is imported lazily
    import tensorrt

log = logging.getLogger(__name__)

# TensorRT DataType member name -> torch dtype name (the buffers) and the numpy dtype of the feeds
# (numpy has no bfloat16: reference.npz stores bfloat16 as float32, see numerics.to_numpy)
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                 "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
_FEED_DTYPES = {**_TORCH_DTYPES, "BF16": "float32"}
# TF32 keeps float16's 10-bit mantissa: a TF32 plan is held to float16's rule
TF32_AS = "fp16"


@dataclass(frozen=True)
class PlanCheckRequest:
    """What the build child checks the plan against: the recorded samples and eager outputs
    (``reference.npz``) and the tolerance per output (outputs not listed are compared exactly)."""

    reference: Path
    tolerances: dict[str, Tolerance]
    rule: str


@dataclass(frozen=True)
class OutputCheck:
    """One output over every sample: the worst errors, and the first failure's reason."""

    name: str
    ok: bool
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    reason: str | None = None


@dataclass(frozen=True)
class PlanCheck:
    """The plan against eager PyTorch on the recorded samples (what the manifest records)."""

    ok: bool
    samples: int
    rule: str
    outputs: tuple[OutputCheck, ...]

    def summary(self) -> str:
        """``2 samples, 1 output within fp32 ...: worst error 0.013 of atol`` (one line)."""
        worst = max((o.max_abs_err / o.atol if o.atol else 0.0 for o in self.outputs), default=0.0)
        failed = [o for o in self.outputs if not o.ok]
        if failed:
            return "%d sample(s): %s outside %s (%s)" % (self.samples, ", ".join(o.name for o in failed), self.rule,
                                                          failed[0].reason)
        return "%d sample(s), %d output(s) within %s (worst error %.2g of atol)" % (
            self.samples, len(self.outputs), self.rule, worst)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "samples": self.samples, "rule": self.rule, "runner": "polygraphy Comparator.run + "
                "PlanRunner (TensorRT execute_async_v3)",
                "outputs": [dict(o.__dict__) for o in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict) -> "PlanCheck":
        return cls(bool(d["ok"]), int(d["samples"]), str(d["rule"]),
                   tuple(OutputCheck(**o) for o in d.get("outputs", ())))


def plan_tolerances(output_dtypes: Mapping[str, str], eager_outputs: Sequence[Mapping[str, np.ndarray]],
                    trt_config: TensorRTBackendConfig,
                    override: ToleranceOverride | None) -> tuple[dict[str, Tolerance], str]:
    """The tolerance per output for the plan's precision, and the rule in words.

    A user tolerance wins for float outputs. A reduced-precision plan (fp16/bf16/int8/fp8 flags or
    a quantization config, TF32 too) is held to the quantized-ONNX rule of its precision: atol a
    fraction of the output's peak |eager| value. A strict fp32 plan (TF32 off) keeps the per-dtype
    tolerances. Integer and bool outputs are compared exactly."""
    from aitune_triton.tensorrt.quantized_onnx import QUANTIZED_TOLERANCES

    floats = [name for name, dtype in output_dtypes.items() if dtype in ("float32", "float16", "bfloat16")]
    if override is not None:  # through tolerance_for: a float16/bfloat16 output keeps its relative L2 rule
        return {name: tolerance_for(output_dtypes[name], override) for name in floats}, \
            "the configured tolerance (%s)" % override.describe()
    precision = trt_config.effective_precision
    if precision not in QUANTIZED_TOLERANCES and (trt_config.enable_tf32 or precision == "tf32"):
        precision = TF32_AS
        label = "tf32 (as %s)" % TF32_AS
    else:
        label = precision
    if precision not in QUANTIZED_TOLERANCES:
        return ({name: tolerance_for(output_dtypes[name]) for name in floats},
                "%s: the per-dtype tolerances" % precision)
    fraction, rtol = QUANTIZED_TOLERANCES[precision]
    tolerances = {}
    for name in floats:
        peak = max((float(np.max(np.abs(out[name]))) if out[name].size else 0.0 for out in eager_outputs
                    if name in out), default=0.0)
        tolerances[name] = Tolerance(fraction * peak if peak > 0 else fraction, rtol)
    return tolerances, "%s: atol = %g x peak |eager output|, rtol = %g" % (label, fraction, rtol)


def _shape(dims: "tensorrt.Dims") -> tuple[int, ...]:
    """A ``trt.Dims`` as a tuple (its documented protocol: ``len`` and integer indexing)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class PlanRunner(BaseRunner):
    """A Polygraphy runner over a deserialized engine through TensorRT's name-based execution API.

    Each call picks the first optimization profile whose ranges hold the feed's shapes, sets the
    input shapes, places every I/O buffer where ``get_tensor_location`` says (GPU or host), runs
    ``execute_async_v3`` and returns the outputs as numpy arrays."""

    def __init__(self, engine: "tensorrt.ICudaEngine", name: str = "tensorrt") -> None:
        super().__init__(name=name)
        self.engine = engine
        self.context: "tensorrt.IExecutionContext | None" = None

    def _io(self) -> tuple[list[str], list[str]]:
        import tensorrt as trt

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        return inputs, outputs

    def _dtype_name(self, name: str) -> str:
        trt_dtype = self.engine.get_tensor_dtype(name)
        member = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
        if member not in _TORCH_DTYPES:
            raise ModelError("the plan's tensor %r has TensorRT type %s, which the check cannot feed or read"
                             % (name, member))
        return member

    def activate_impl(self) -> None:
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelError("TensorRT could not create an execution context for the plan (see the log)")

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name in self._io()[0]:
            meta.add(name, np.dtype(_FEED_DTYPES[self._dtype_name(name)]),
                     _shape(self.engine.get_tensor_shape(name)))
        return meta

    def _profile_for(self, feed: Mapping[str, np.ndarray]) -> int:
        for index in range(self.engine.num_optimization_profiles):
            fits = True
            for name, value in feed.items():
                lo, _, hi = (_shape(d) for d in self.engine.get_tensor_profile_shape(name, index))
                if len(lo) != value.ndim or any(not a <= s <= b for a, s, b in zip(lo, value.shape, hi, strict=True)):
                    fits = False
            if fits:
                return index
        raise ModelError("the sample shapes %s fit none of the plan's %d optimization profile(s)"
                         % ({k: list(v.shape) for k, v in feed.items()}, self.engine.num_optimization_profiles))

    def infer_impl(self, feed_dict: Mapping[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
        import tensorrt as trt
        import torch

        context = self.context
        assert context is not None, "activate() first"
        inputs, outputs = self._io()
        on_gpu = any(self.engine.get_tensor_location(n) == trt.TensorLocation.DEVICE for n in inputs + outputs)
        stream = torch.cuda.current_stream().cuda_stream if on_gpu else 0

        def device(name: str) -> str:
            return "cuda" if self.engine.get_tensor_location(name) == trt.TensorLocation.DEVICE else "cpu"

        start = time.perf_counter()
        if not context.set_optimization_profile_async(self._profile_for(feed_dict), stream):
            raise ModelError("TensorRT refused to select the optimization profile (see the log)")
        buffers = {}
        for name in inputs:
            value = torch.from_numpy(np.array(feed_dict[name], order="C"))  # a 0-d input stays 0-d
            buffers[name] = value.to(device=device(name), dtype=getattr(torch, _TORCH_DTYPES[self._dtype_name(name)]))
            if not context.set_input_shape(name, tuple(buffers[name].shape)):
                raise ModelError("TensorRT refused input %r of shape %s (see the log)"
                                 % (name, list(buffers[name].shape)))
        for name in outputs:
            shape = _shape(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError("the plan's output %r has a data-dependent shape %s, which the check cannot size"
                                 % (name, list(shape)))
            buffers[name] = torch.empty(shape, dtype=getattr(torch, _TORCH_DTYPES[self._dtype_name(name)]),
                                        device=device(name))
        for name, buffer in buffers.items():
            if not context.set_tensor_address(name, int(buffer.data_ptr())):
                raise ModelError("TensorRT refused the address of %r (see the log)" % name)
        if not context.execute_async_v3(stream):
            raise ModelError("TensorRT failed to run the plan on a sample (see the log)")
        if on_gpu:
            torch.cuda.current_stream().synchronize()
        self.inference_time = time.perf_counter() - start
        result: OrderedDict[str, np.ndarray] = OrderedDict()
        for name in outputs:
            value = buffers[name].cpu()
            result[name] = (value.float() if value.dtype is torch.bfloat16 else value).numpy()
        return result

    def deactivate_impl(self) -> None:
        self.context = None


def check_plan(engine: "tensorrt.ICudaEngine", request: PlanCheckRequest) -> PlanCheck:
    """Run the plan on every recorded sample through Polygraphy's ``Comparator.run`` and compare each
    output with its eager value. Raises nothing for a mismatch: the result says it."""
    from polygraphy.comparator import Comparator

    from aitune_triton.reference_data import load_reference

    cases = load_reference(request.reference)
    if not cases:
        raise ModelError("%s holds no samples to check the plan on" % request.reference)
    runner = PlanRunner(engine)
    results = Comparator.run([runner], data_loader=[case.inputs for case in cases])
    iterations = results[runner.name]
    worst: dict[str, OutputCheck] = {}
    for case, iteration in zip(cases, iterations, strict=True):
        for name, expected in case.outputs.items():
            tol = request.tolerances.get(name, tolerance_for(str(expected.dtype)))
            if name in iteration:
                c = compare(np.asarray(iteration[name]), expected, tol)
            else:
                c = Comparison(False, float("inf"), float("inf"), 1, 1, tol, "missing from the plan's outputs")
            before = worst.get(name)
            if before is None:
                before = OutputCheck(name, True, 0.0, 0.0, tol.atol, tol.rtol)
            worst[name] = OutputCheck(name, before.ok and c.ok, max(before.max_abs_err, c.max_abs),
                                      max(before.max_rel_err, c.max_rel), tol.atol, tol.rtol, before.reason or c.reason)
    outputs = tuple(worst.values())
    return PlanCheck(all(o.ok for o in outputs), len(cases), request.rule, outputs)
