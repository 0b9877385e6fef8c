"""ONNX Runtime CPU against eager PyTorch: the check every exported ONNX passes before it is used.

The ONNX file is what the TensorRT plan (and an ONNX Runtime model) is built from, so a silent
difference (a traced branch, a specialised axis) would surface only as wrong answers from the
server. The graph is run on every sample and on inputs cut from the samples at the profiles' min and
max shapes (``check_feeds``), and each output is compared with ``numerics.compare`` under its
dtype's tolerance, in the shape the model returns; the worst error per output goes into an
``OnnxCheck`` table.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch

from aitune_triton import numerics
from aitune_triton.errors import ModelError
from aitune_triton.numerics import Tolerance, ToleranceOverride, tolerance_for
from aitune_triton.sample_fit import fitted
from aitune_triton.spec import IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.profile_set import ProfileSet

log = logging.getLogger(__name__)

FALLBACK_ADVICE = "serve with the Python-backend fallback (backends=('python',))"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOW_PRECISION = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_MAX_PROTO_BYTES = 1_800_000_000


def hint(exporter: str) -> str:
    """What to try next: the other exporter, or no ONNX at all."""
    return "try use_dynamo=%s, or %s" % (exporter != "dynamo", FALLBACK_ADVICE)


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


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def root_first_line(exc: BaseException, limit: int = 300) -> str:
    """The root cause's first line: the exporters wrap it in generic 'step 1/3 failed' text."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    line = lines[0] if lines else "(no message)"
    return "%s: %s" % (type(root).__name__, line if len(line) <= limit else line[:limit] + "...")


def check_feeds(spec: IOSpec, samples: Sequence[Sample],
                profiles: ProfileSet) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Every sample, then inputs at each profile's min and max shapes cut from the samples
    (``sample_fit``: cropped or tiled, never drawn at random), so paired inputs stay valid: a
    causal decoder's attention mask keeps a token to attend to in every row, lengths fit their
    sequence, ids stay ids."""
    feeds = [sample_feed(spec, s) for s in samples]
    cases = [("sample %d" % i, feed) for i, feed in enumerate(feeds)]
    seen = set()
    for p, profile in enumerate(profiles.profiles):
        for k, which in ((0, "min"), (2, "max")):
            shapes = {t.name: tuple(profile.shapes(t.name)[k] if t.name in profile.names() else t.shape(which))
                      for t in spec.inputs}
            key = tuple(sorted(shapes.items()))
            if key in seen:
                continue
            seen.add(key)
            feed = fitted(feeds, shapes, 1 if spec.batching else 0)
            cases.append(("profile %d %s" % (p, which), {k: v.contiguous() for k, v in feed.items()}))
    return cases


def compare_outputs(spec: IOSpec, cases: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]],
                    runtime: str = "onnxruntime",
                    tolerance: "ToleranceOverride | Mapping[str, Tolerance] | None" = None,
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
        raise _NoKernel(root_first_line(missing) if missing else "a kernel of the graph is missing") from missing
    if proto.ByteSize() > _MAX_PROTO_BYTES:
        raise _NoKernel("the float32 copy of the float16/bfloat16 graph is too large to check in memory")
    if missing is not None:
        log.info("ONNX Runtime CPU cannot run %s as exported (%s); checking a float32 copy", path.name,
                 root_first_line(missing))
    try:
        session = _session(proto.SerializeToString())
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        raise _NoKernel(root_first_line(exc)) from exc
    return session, True, label + " (float32 copy of the float16/bfloat16 graph)"


def check_onnx(model: torch.nn.Module, spec: IOSpec, path: Path, samples: Sequence[Sample], profiles: ProfileSet,
               tolerance: "ToleranceOverride | Mapping[str, Tolerance] | None" = None,
               exporter: str | None = None, profile_edges: bool = True) -> OnnxCheck:
    """Run ``path`` on ORT CPU and ``model`` eagerly on the same inputs (see ``check_feeds``).

    A kernel ORT CPU lacks skips the check with the reason recorded (TensorRT may still build the
    graph); any other ORT failure is a ``ModelError``. ``profile_edges=False`` keeps to the samples:
    a quantized graph is accurate only on data like its calibration data, which random inputs at
    the profile edges are not."""
    feeds = check_feeds(spec, samples, profiles)
    if not profile_edges:
        feeds = feeds[:len(samples)]
    advice = hint(exporter) if exporter else FALLBACK_ADVICE
    try:
        session, as_float32, runtime = _open(Path(path), spec)
    except _NoKernel as exc:
        reason = "ONNX Runtime CPU cannot run the graph: %s" % exc
        log.warning("skipping the ONNX Runtime check of %s: %s", Path(path).name, reason)
        return OnnxCheck((), tuple(label for label, _ in feeds), "onnxruntime CPU", reason)
    except Exception as exc:
        raise ModelError("ONNX Runtime CPU cannot load the exported model: %s; %s"
                         % (root_first_line(exc), advice)) from exc
    device = model_device(model)
    cases = []
    for label, feed in feeds:
        shapes = ", ".join("%s%s" % (k, list(v.shape)) for k, v in feed.items())
        try:
            with torch.inference_mode():
                expected = [numerics.to_numpy(leaf) for _, leaf in flatten_outputs(
                    call_with_feed(model, spec, {k: v.to(device) for k, v in feed.items()}))]
        except Exception as exc:
            raise ModelError("eager PyTorch fails on %s (%s), shapes the profiles cover: %s; fix the model or narrow "
                             "the profiles (max_batch_size, batch_axis)"
                             % (label, shapes, root_first_line(exc))) from exc
        ort_feed = {k: numerics.to_numpy(v.float() if as_float32 and v.is_floating_point() else v)
                    for k, v in feed.items()}
        try:
            actual = session.run([t.name for t in spec.outputs], ort_feed)
        except Exception as exc:
            raise ModelError("ONNX Runtime CPU failed to run the exported model on %s (%s): %s; %s"
                             % (label, shapes, root_first_line(exc), advice)) from exc
        cases.append((label, expected, actual))
    return compare_outputs(spec, cases, runtime, tolerance, strict_dtypes=not as_float32)
