"""PyTorch -> ONNX, checked against eager PyTorch on ONNX Runtime CPU before anyone builds on it.

The file appears at its path only once it has exported, passed ``onnx.checker`` and matched eager
(``onnx_check.check_onnx``): later stages never see a half-written or wrong model.

The model is wrapped so the exporter sees one flat positional signature in spec order
(positional, keyword-only and dict inputs alike, routed back through the spec bindings) and
returns the flattened outputs in spec order: names and dynamic shapes then line up by position.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import onnx
import torch

from aitune_triton.errors import ModelError
from aitune_triton.export.onnx_check import OnnxCheck, check_onnx, hint, model_device, root_first_line
from aitune_triton.numerics import LOOSEN_HINT, Tolerance, ToleranceOverride
from aitune_triton.spec import AxisKind, IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.profile_set import ProfileSet

log = logging.getLogger(__name__)

_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    opset: int
    exporter: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    check: OnnxCheck

    def to_dict(self) -> dict:
        return {"path": str(self.path), "opset": self.opset, "exporter": self.exporter,
                "input_names": list(self.input_names), "output_names": list(self.output_names),
                "check": self.check.to_dict()}


class _FlatModule(torch.nn.Module):
    """``forward(*inputs)`` in spec order -> flat tuple of outputs in spec order."""

    def __init__(self, model: torch.nn.Module, spec: IOSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.training = model.training

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = dict(zip([t.name for t in self.spec.inputs], inputs, strict=True))
        return tuple(leaf for _, leaf in flatten_outputs(call_with_feed(self.model, self.spec, feed)))


def _example(spec: IOSpec, samples: Sequence[Sample]) -> Sample:
    """The sample with the most dynamic axes of size >= 2 (then the largest): torch.export
    specialises sizes 0 and 1, and the ONNX exporter's size-oblivious workaround is best not relied on."""
    dynamic = [(j, i) for j, t in enumerate(spec.inputs) for i, a in enumerate(t.axes) if a.kind is not AxisKind.STATIC]

    def score(s: Sample) -> tuple[int, int]:
        flat = s.flat()
        return sum(flat[j].shape[i] >= 2 for j, i in dynamic), sum(t.numel() for t in flat)

    return max(samples, key=score)


def axis_groups(spec: IOSpec, samples: Sequence[Sample],
                profiles: ProfileSet) -> dict[tuple[int, int], tuple[str, int, int]]:
    """``(input index, axis) -> (dim name, min, max)`` for every batch or dynamic input axis.

    Batch axes share ``batch`` (1..max batch). Dynamic axes whose sizes agree in every sample share
    one name, ``<first input>_<axis>`` (ids and mask share one sequence length): torch.export rejects
    separate dims that the model forces equal. Ranges span the spec and every profile, so the
    exported guards admit every shape TensorRT builds for."""
    flats = [s.flat() for s in samples]
    names: dict[tuple[int, int], str] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for j, t in enumerate(spec.inputs):
        for i, a in enumerate(t.axes):
            if a.kind is AxisKind.STATIC:
                continue
            bounds = [a.min, a.max] + [d for p in profiles.profiles if t.name in p.names()
                                       for d in (p.shapes(t.name)[0][i], p.shapes(t.name)[2][i])]
            if a.kind is AxisKind.BATCH:
                name, bounds = "batch", bounds + [1, profiles.max_batch_size]
            else:
                sizes = tuple(f[j].shape[i] for f in flats)
                name = next((n for (jj, ii), n in names.items() if n != "batch"
                             and tuple(f[jj].shape[ii] for f in flats) == sizes), "%s_%d" % (t.name, i))
            names[(j, i)] = name
            lo, hi = ranges.get(name, (min(bounds), max(bounds)))
            ranges[name] = (min(lo, *bounds), max(hi, *bounds))
    return {k: (n, ranges[n][0], max(ranges[n][1], ranges[n][0] + 1)) for k, n in names.items()}


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """Everything the exporters print (Python and C++ streams, their loggers) goes into the buffer,
    which is complete once the block exits: kept for error messages, off the user's console."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    propagate = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    caught: list = []
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                yield buf
        finally:
            for w in caught:
                buf.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)
            for fd, dup in zip((1, 2), saved, strict=True):
                os.dup2(dup, fd)
                os.close(dup)
            for lg, prop in zip(loggers, propagate, strict=True):
                lg.removeHandler(handler)
                lg.propagate = prop
            native.seek(0)
            buf.write(native.read().decode(errors="replace"))


def _export(wrapper: _FlatModule, spec: IOSpec, example: tuple[torch.Tensor, ...], groups: dict,
            target: Path, use_dynamo: bool, opset_version: int | None) -> None:
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    if use_dynamo:
        dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, lo, hi in set(groups.values())}
        shapes = tuple({i: dims[groups[(j, i)][0]] for i in range(t.rank) if (j, i) in groups} or None
                       for j, t in enumerate(spec.inputs))
        program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=(shapes,), input_names=in_names,
                                    output_names=out_names, opset_version=opset_version)
        if program is None:  # only the TorchScript exporter returns nothing
            raise ModelError("the dynamo ONNX exporter returned no program; %s" % hint("dynamo"))
        program.save(str(target))
        return
    axes: dict[str, dict[int, str]] = {}
    for j, t in enumerate(spec.inputs):
        axes[t.name] = {i: groups[(j, i)][0] for i in range(t.rank) if (j, i) in groups}
    for t in spec.outputs:
        axes[t.name] = {i: "batch" if a.kind is AxisKind.BATCH else "%s_%d" % (t.name, i)
                        for i, a in enumerate(t.axes) if a.kind is not AxisKind.STATIC}
    torch.onnx.export(wrapper, example, str(target), dynamo=False, input_names=in_names, output_names=out_names,
                      dynamic_axes={k: v for k, v in axes.items() if v}, opset_version=opset_version)


def _check_graph(proto: onnx.ModelProto, spec: IOSpec, groups: dict, exporter: str) -> None:
    """The graph must take and return exactly the spec's tensors, with every dynamic axis symbolic."""
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if got_in != want_in or got_out != want_out:
        raise ModelError("ONNX export (%s) has inputs %s and outputs %s but the model takes %s and returns %s "
                         "(an input forward() ignores is dropped by the exporter); %s"
                         % (exporter, got_in, got_out, want_in, want_out, hint(exporter)))
    for j, inp in enumerate(proto.graph.input):
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if (j, i) in groups and d.HasField("dim_value"):
                _, lo, hi = groups[(j, i)]
                raise ModelError("ONNX export (%s) fixed axis %d of input %r to %d but it must take %d..%d (the "
                                 "model's code specialises it); %s"
                                 % (exporter, i, inp.name, d.dim_value, lo, hi, hint(exporter)))


def export_onnx(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet, path: Path,
                use_dynamo: bool = True, opset_version: int | None = None,
                tolerance: "ToleranceOverride | Mapping[str, Tolerance] | None" = None,
                postprocess: Callable[[Path], None] | None = None) -> OnnxArtifact:
    """Export ``model`` to ``path`` and check it against eager on ONNX Runtime CPU.

    The file appears at ``path`` only once it has exported, passed ``onnx.checker`` and matched eager:
    later stages never see a half-written or wrong model. Raises ``ModelError`` otherwise.
    ``postprocess(staged_path)`` may rewrite the exported file before it is checked (ModelOpt's
    quantized exports need that, see ``tensorrt/quantized_onnx.py``)."""
    path = Path(path)
    exporter = "dynamo" if use_dynamo else "torchscript"
    device = model_device(model)
    example = tuple(t.to(device) for t in sample_feed(spec, _example(spec, samples)).values())
    groups = axis_groups(spec, samples, profiles)
    wrapper = _FlatModule(model, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=path.parent))
    target = staging / path.name
    try:
        start = time.monotonic()
        failure = None
        with _captured() as out:
            try:
                _export(wrapper, spec, example, groups, target, use_dynamo, opset_version)
            except Exception as exc:
                failure = exc
        if failure is not None:
            log.debug("%s exporter output:\n%s", exporter, out.getvalue())
            from aitune_triton.export.diagnostics import plain_cause  # e.g. control flow on values, with the line

            cause = plain_cause(failure) or root_first_line(failure)
            advice = hint(exporter)
            if "torch.ao quantized" in cause:  # neither exporter has an ONNX form for packed int8 weights
                advice = ("for TensorRT, give the float model and let TensorRT quantize it (--precision int8 or "
                          "TensorRTBackendConfig(quantization_config=...)); the Python backend serves this one")
            raise ModelError("ONNX export failed (%s): %s; %s" % (exporter, cause, advice),
                             details=out.getvalue()) from failure
        log.debug("%s exporter output:\n%s", exporter, out.getvalue())
        log.info("exported %s with the %s exporter in %.1f s", path.name, exporter, time.monotonic() - start)
        if postprocess is not None:
            postprocess(target)
        try:
            onnx.checker.check_model(str(target))
        except onnx.checker.ValidationError as exc:
            raise ModelError("ONNX export (%s) fails onnx.checker: %s; %s"
                             % (exporter, root_first_line(exc), hint(exporter))) from exc
        proto = onnx.load(str(target), load_external_data=False)
        _check_graph(proto, spec, groups, exporter)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        check = check_onnx(model, spec, target, samples, profiles, tolerance, exporter)
        if not check.ok:
            raise ModelError("ONNX export (%s) does not match eager PyTorch (%s):\n%s\n%s; otherwise %s"
                             % (exporter, check.runtime, check.table(), LOOSEN_HINT, hint(exporter)))
        for f in sorted(staging.iterdir(), key=lambda f: f.name == path.name):  # data files first, model last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OnnxArtifact(path, opset, exporter, tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs),
                        check)


