"""PyTorch -> ONNX, checked against eager PyTorch on ONNX Runtime CPU before anyone builds on it.

The ONNX file is what the TensorRT plan (and an ONNX Runtime model) is built from, so a silent
difference here (a traced branch, a specialised axis) would surface only as wrong answers from
the server. Every export is therefore run on ONNX Runtime CPU on every sample and on the
profiles' min and max shapes, and compared per output with the per-dtype tolerances.

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
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch

from aitune_triton import numerics
from aitune_triton.errors import ModelError
from aitune_triton.numerics import Tolerance, tolerance_for
from aitune_triton.spec import AxisKind, IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.tensorrt.profile_set import ProfileSet

log = logging.getLogger(__name__)

_FALLBACK = "serve with the Python-backend fallback (backends=('python',))"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOW_PRECISION = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_MAX_PROTO_BYTES = 1_800_000_000
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")


def hint(exporter: str) -> str:
    """What to try next: the other exporter, or no ONNX at all."""
    return "try use_dynamo=%s, or %s" % (exporter != "dynamo", _FALLBACK)


@dataclass(frozen=True)
class OutputCheck:
    """One output's worst error over all checked cases; ``worst_case`` says where it occurred."""

    name: str
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    ok: bool
    worst_case: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err,
                "atol": self.atol, "rtol": self.rtol, "ok": self.ok, "worst_case": self.worst_case, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> "OutputCheck":
        return cls(d["name"], float(d["max_abs_err"]), float(d["max_rel_err"]), float(d["atol"]), float(d["rtol"]),
                   bool(d["ok"]), d.get("worst_case", ""), d.get("note", ""))


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime vs eager over ``cases``. ``skipped`` holds the reason when ORT CPU could not run
    the graph at all (a kernel it lacks); the TensorRT build is then the first real check."""

    outputs: tuple[OutputCheck, ...]
    cases: tuple[str, ...]
    runtime: str
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def table(self) -> str:
        rows = [("output", "max_abs", "max_rel", "atol", "rtol", "worst case", "")]
        rows += [(o.name, "%.3g" % o.max_abs_err, "%.3g" % o.max_rel_err, "%g" % o.atol, "%g" % o.rtol,
                  o.worst_case or "-", ("ok" if o.ok else "FAIL") + (" (%s)" % o.note if o.note else ""))
                 for o in self.outputs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    def to_dict(self) -> dict:
        return {"outputs": [o.to_dict() for o in self.outputs], "cases": list(self.cases), "runtime": self.runtime,
                "skipped": self.skipped}

    @classmethod
    def from_dict(cls, d: dict) -> "OnnxCheck":
        return cls(tuple(OutputCheck.from_dict(o) for o in d["outputs"]), tuple(d["cases"]), d["runtime"],
                   d.get("skipped"))


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


def _device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


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


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The root cause's first line: the exporters wrap it in generic 'step 1/3 failed' text."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    line = lines[0] if lines else "(no message)"
    return "%s: %s" % (type(root).__name__, line if len(line) <= limit else line[:limit] + "...")


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
                tolerance: "Tolerance | Mapping[str, Tolerance] | None" = None,
                postprocess: Callable[[Path], None] | None = None) -> OnnxArtifact:
    """Export ``model`` to ``path`` and check it against eager on ONNX Runtime CPU.

    The file appears at ``path`` only once it has exported, passed ``onnx.checker`` and matched eager:
    later stages never see a half-written or wrong model. Raises ``ModelError`` otherwise.
    ``postprocess(staged_path)`` may rewrite the exported file before it is checked (ModelOpt's
    quantized exports need that, see ``tensorrt/quantized_onnx.py``)."""
    path = Path(path)
    exporter = "dynamo" if use_dynamo else "torchscript"
    device = _device(model)
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

            cause = plain_cause(failure) or _first_line(failure)
            raise ModelError("ONNX export failed (%s): %s; %s" % (exporter, cause, hint(exporter)),
                             details=out.getvalue()) from failure
        log.debug("%s exporter output:\n%s", exporter, out.getvalue())
        log.info("exported %s with the %s exporter in %.1f s", path.name, exporter, time.monotonic() - start)
        if postprocess is not None:
            postprocess(target)
        try:
            onnx.checker.check_model(str(target))
        except onnx.checker.ValidationError as exc:
            raise ModelError("ONNX export (%s) fails onnx.checker: %s; %s"
                             % (exporter, _first_line(exc), hint(exporter))) from exc
        proto = onnx.load(str(target), load_external_data=False)
        _check_graph(proto, spec, groups, exporter)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        check = check_onnx(model, spec, target, samples, profiles, tolerance, exporter)
        if not check.ok:
            raise ModelError("ONNX export (%s) does not match eager PyTorch (%s):\n%s\nraise atol/rtol if this is "
                             "numerical noise; otherwise %s" % (exporter, check.runtime, check.table(), hint(exporter)))
        for f in sorted(staging.iterdir(), key=lambda f: f.name == path.name):  # data files first, model last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OnnxArtifact(path, opset, exporter, tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs),
                        check)


def _value_ranges(spec: IOSpec, samples: Sequence[Sample]) -> dict[str, tuple[float, float]]:
    ranges = {}
    for t in spec.inputs:
        values = [sample_feed(spec, s)[t.name] for s in samples]
        values = [v for v in values if v.numel()]
        lo = min((float(v.min()) for v in values), default=0.0)
        hi = max((float(v.max()) for v in values), default=1.0)
        ranges[t.name] = (lo, hi)
    return ranges


def check_feeds(spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet,
                seed: int = 0) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Every sample, then random inputs at each profile's min and max shapes: values drawn from the
    range the samples hold (token ids stay valid ids, masks stay 0/1), bools at random."""
    cases = [("sample %d" % i, sample_feed(spec, s)) for i, s in enumerate(samples)]
    ranges = _value_ranges(spec, samples)
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for p, profile in enumerate(profiles.profiles):
        for k, which in ((0, "min"), (2, "max")):
            shapes = {t.name: profile.shapes(t.name)[k] if t.name in profile.names() else t.shape(which)
                      for t in spec.inputs}
            key = tuple(sorted(shapes.items()))
            if key in seen:
                continue
            seen.add(key)
            feed = {}
            for t in spec.inputs:
                lo, hi = ranges[t.name]
                shape = shapes[t.name]
                if t.torch_dtype is torch.bool:
                    feed[t.name] = torch.rand(shape, generator=gen) < 0.5
                elif t.torch_dtype.is_floating_point:
                    feed[t.name] = (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(t.torch_dtype)
                else:
                    feed[t.name] = torch.randint(int(lo), int(hi) + 1, shape, generator=gen).to(t.torch_dtype)
            cases.append(("profile %d %s" % (p, which), feed))
    return cases


def compare_outputs(spec: IOSpec, cases: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]],
                    runtime: str = "onnxruntime", tolerance: "Tolerance | Mapping[str, Tolerance] | None" = None,
                    strict_dtypes: bool = True) -> OnnxCheck:
    """Per output, the worst error over ``cases`` of ``(label, eager outputs, onnx outputs)`` in spec order.
    A shape (or, with ``strict_dtypes``, dtype) difference fails the output outright. ``tolerance``
    overrides the dtype tolerances for every float output, or per output name when it is a mapping
    (a quantized graph's tolerance scales with each output's magnitude)."""
    rows = []
    for k, t in enumerate(spec.outputs):
        if isinstance(tolerance, Mapping):
            tol = tolerance.get(t.name) or tolerance_for(t.dtype)
        else:
            tol = tolerance_for(t.dtype, tolerance)
        worst, abs_max, rel_max, ok, note = "", 0.0, 0.0, True, ""
        for label, expected, actual in cases:
            e, a = np.asarray(expected[k]), np.asarray(actual[k])
            comparison = numerics.compare(a, e, tol)
            case_abs, case_rel, case_ok = comparison.max_abs, comparison.max_rel, comparison.ok
            if e.shape != a.shape:
                note = note or "shape %s vs eager %s" % (a.shape, e.shape)
            elif strict_dtypes and a.dtype != e.dtype:  # the errors are still measured, as values
                case_ok, note = False, note or "dtype %s vs eager %s" % (a.dtype, e.dtype)
            if case_abs > abs_max or (not case_ok and ok):
                worst = label
            abs_max, rel_max, ok = max(abs_max, case_abs), max(rel_max, case_rel), ok and case_ok
        rows.append(OutputCheck(t.name, abs_max, rel_max, tol.atol, tol.rtol, ok, worst, note))
    return OnnxCheck(tuple(rows), tuple(label for label, _, _ in cases), runtime)


def _float32_graph(graph: onnx.GraphProto) -> int:
    """float16/bfloat16 -> float32 in place (types, initializers, constants, casts, subgraphs); how many changed."""
    changed = 0

    def tensor(t: onnx.TensorProto) -> int:
        if t.data_type not in _LOW_PRECISION:
            return 0
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), t.name))
        return 1

    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type in _LOW_PRECISION:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            changed += 1
    changed += sum(tensor(t) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                changed += tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                changed += _float32_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                changed += sum(_float32_graph(g) for g in attr.graphs)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in _LOW_PRECISION:
                attr.i = onnx.TensorProto.FLOAT
                changed += 1
    return changed


class _NoKernel(Exception):
    """ONNX Runtime CPU lacks a kernel the graph needs: nothing to compare, not a model error."""


def _session(model: "str | bytes"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its errors reach the ModelError instead
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _open(path: Path, spec: IOSpec) -> tuple[Any, bool, str]:
    """An ORT session, whether it runs a float32 copy, and the runtime label.

    ORT's Python API cannot feed or fetch bfloat16 and its CPU kernels for float16/bfloat16 are
    sparse, so such graphs run as a float32 copy, compared with the low-precision tolerances."""
    import onnxruntime as ort

    label = "onnxruntime %s CPU" % ort.__version__
    missing = None
    if "bfloat16" not in {t.dtype for t in spec.inputs + spec.outputs}:
        try:
            return _session(str(path)), False, label
        except Exception as exc:
            if "NOT_IMPLEMENTED" not in str(exc):
                raise
            missing = exc
    proto = onnx.load(str(path))
    if not _float32_graph(proto.graph):
        raise _NoKernel(_first_line(missing) if missing else "a kernel of the graph is missing") from missing
    if proto.ByteSize() > _MAX_PROTO_BYTES:
        raise _NoKernel("the float32 copy of the float16/bfloat16 graph is too large to check in memory")
    if missing is not None:
        log.info("ONNX Runtime CPU cannot run %s as exported (%s); checking a float32 copy", path.name,
                 _first_line(missing))
    try:
        session = _session(proto.SerializeToString())
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        raise _NoKernel(_first_line(exc)) from exc
    return session, True, label + " (float32 copy of the float16/bfloat16 graph)"


def check_onnx(model: torch.nn.Module, spec: IOSpec, path: Path, samples: Sequence[Sample], profiles: ProfileSet,
               tolerance: "Tolerance | Mapping[str, Tolerance] | None" = None,
               exporter: str | None = None, profile_edges: bool = True) -> OnnxCheck:
    """Run ``path`` on ORT CPU and ``model`` eagerly on the same inputs (see ``check_feeds``).

    A kernel ORT CPU lacks skips the check with the reason recorded (TensorRT may still build the
    graph); any other ORT failure is a ``ModelError``. ``profile_edges=False`` keeps to the samples:
    a quantized graph is accurate only on data like its calibration data, which random inputs at
    the profile edges are not."""
    feeds = check_feeds(spec, samples, profiles)
    if not profile_edges:
        feeds = feeds[:len(samples)]
    advice = hint(exporter) if exporter else _FALLBACK
    try:
        session, as_float32, runtime = _open(Path(path), spec)
    except _NoKernel as exc:
        reason = "ONNX Runtime CPU cannot run the graph: %s" % exc
        log.warning("skipping the ONNX Runtime check of %s: %s", Path(path).name, reason)
        return OnnxCheck((), tuple(label for label, _ in feeds), "onnxruntime CPU", reason)
    except Exception as exc:
        raise ModelError("ONNX Runtime CPU cannot load the exported model: %s; %s"
                         % (_first_line(exc), advice)) from exc
    device = _device(model)
    cases = []
    for label, feed in feeds:
        shapes = ", ".join("%s%s" % (k, list(v.shape)) for k, v in feed.items())
        try:
            with torch.inference_mode():
                expected = [numerics.to_numpy(leaf) for _, leaf in flatten_outputs(
                    call_with_feed(model, spec, {k: v.to(device) for k, v in feed.items()}))]
        except Exception as exc:
            raise ModelError("eager PyTorch fails on %s (%s), shapes the profiles cover: %s; fix the model or narrow "
                             "the profiles (max_batch_size, batch_axis)" % (label, shapes, _first_line(exc))) from exc
        ort_feed = {k: numerics.to_numpy(v.float() if as_float32 and v.is_floating_point() else v)
                    for k, v in feed.items()}
        try:
            actual = session.run([t.name for t in spec.outputs], ort_feed)
        except Exception as exc:
            raise ModelError("ONNX Runtime CPU failed to run the exported model on %s (%s): %s; %s"
                             % (label, shapes, _first_line(exc), advice)) from exc
        cases.append((label, expected, actual))
    return compare_outputs(spec, cases, runtime, tolerance, strict_dtypes=not as_float32)
