"""What the model takes and returns, recorded from its samples.

The ``IOSpec`` is the contract every later stage reads: ONNX export (names, dynamic axes),
TensorRT profiles (shape ranges), the Triton config (dims, dtypes, max batch) and the
fallback model (how request tensors map back onto ``forward``'s arguments).
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

import torch
from torch.utils import _pytree as pytree

from aitune_triton.errors import UserError

SUPPORTED_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
TORCH_DTYPES: dict[str, torch.dtype] = {v: k for k, v in SUPPORTED_DTYPES.items()}


class AxisKind(str, Enum):
    BATCH = "batch"
    DYNAMIC = "dynamic"
    STATIC = "static"


@dataclass(frozen=True)
class AxisSpec:
    """One axis of a tensor over all samples: its kind and the sizes seen."""

    kind: AxisKind
    min: int
    max: int
    common: int

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "min": self.min, "max": self.max, "common": self.common}

    @classmethod
    def from_dict(cls, d: dict) -> "AxisSpec":
        return cls(AxisKind(d["kind"]), int(d["min"]), int(d["max"]), int(d["common"]))


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output. ``binding`` tells how an input reaches ``forward``:
    ``"arg:<i>"`` for positional, ``"kwarg:<name>"`` for keyword; outputs use the pytree path."""

    name: str
    dtype: str
    axes: tuple[AxisSpec, ...]
    binding: str

    @property
    def rank(self) -> int:
        return len(self.axes)

    @property
    def has_batch(self) -> bool:
        return bool(self.axes) and self.axes[0].kind is AxisKind.BATCH

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    def triton_dims(self) -> tuple[int, ...]:
        """Dims as Triton declares them: no batch axis, ``-1`` for dynamic axes."""
        axes = self.axes[1:] if self.has_batch else self.axes
        return tuple(-1 if a.kind is not AxisKind.STATIC else a.max for a in axes)

    def shape(self, which: str, batch: int | None = None) -> tuple[int, ...]:
        """A concrete full shape at the ``min``/``max``/``common`` size of each axis."""
        dims = [getattr(a, which) for a in self.axes]
        if batch is not None and self.has_batch:
            dims[0] = batch
        return tuple(dims)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "binding": self.binding,
                "axes": [a.to_dict() for a in self.axes]}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(AxisSpec.from_dict(a) for a in d["axes"]), d["binding"])


@dataclass(frozen=True)
class IOSpec:
    """``rows_independent`` says whether each row's outputs were found not to depend on the other
    rows (``aitune_triton.probe``): only then may Triton's dynamic batcher merge requests. None:
    not probed (specs written before probing existed; treated as independent)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: bool
    batch_sizes: tuple[int, ...] = field(default=())
    rows_independent: bool | None = None
    row_dependence: str = ""

    @property
    def dynamic_batching_ok(self) -> bool:
        """A batch axis, and no probe found a row that depends on the others."""
        return self.batching and self.rows_independent is not False

    @property
    def max_sample_batch(self) -> int:
        return max(self.batch_sizes) if self.batch_sizes else 0

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "batching": self.batching, "batch_sizes": list(self.batch_sizes),
                "rows_independent": self.rows_independent, "row_dependence": self.row_dependence}

    @classmethod
    def from_dict(cls, d: dict) -> "IOSpec":
        return cls(tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   bool(d["batching"]), tuple(d.get("batch_sizes", ())),
                   d.get("rows_independent"), str(d.get("row_dependence", "")))


@dataclass(frozen=True)
class Sample:
    """One call of ``forward``: positional and keyword tensors."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]

    def flat(self) -> list[torch.Tensor]:
        return list(self.args) + list(self.kwargs.values())

    def structure(self) -> tuple:
        return (len(self.args), tuple(sorted(self.kwargs)))


def normalize_sample(raw: Any, index: int) -> Sample:
    """Accept a tensor, a tuple/list of tensors, a dict of tensors, or ``(args, kwargs)``."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    if isinstance(raw, torch.Tensor):
        args, kwargs = (raw,), {}
    elif isinstance(raw, dict):
        args, kwargs = (), dict(raw)
    elif (isinstance(raw, (tuple, list)) and len(raw) == 2 and isinstance(raw[0], (tuple, list))
          and isinstance(raw[1], dict)):
        args, kwargs = tuple(raw[0]), dict(raw[1])
    elif isinstance(raw, (tuple, list)):
        args, kwargs = tuple(raw), {}
    else:
        raise UserError("sample %d is a %s; give a tensor, a tuple/list of tensors, a dict of tensors or "
                        "(args, kwargs)" % (index, type(raw).__name__))
    for where, value in [("argument %d" % i, v) for i, v in enumerate(args)] + \
                        [("input %r" % k, v) for k, v in kwargs.items()]:
        if not isinstance(value, torch.Tensor):
            raise UserError("sample %d: %s is a %s, not a tensor; samples must hold tensors only"
                            % (index, where, type(value).__name__))
        if value.dtype not in SUPPORTED_DTYPES:
            raise UserError("sample %d: %s has unsupported dtype %s; cast it to one of %s"
                            % (index, where, value.dtype, ", ".join(SUPPORTED_DTYPES.values())))
    return Sample(args, kwargs)


def input_names(forward: Any, sample: Sample) -> list[str]:
    """Names from ``forward``'s signature: parameter names, ``args_<i>`` for ``*args``, dict keys."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var = any(p.kind is p.VAR_POSITIONAL for p in params)
    names: list[str] = []
    for i in range(len(sample.args)):
        if i < len(positional):
            names.append(positional[i].name)
        elif has_var or not params:
            names.append("args_%d" % (i - len(positional) if has_var else i))
        else:
            raise UserError("samples pass %d positional tensors but forward() takes %d"
                            % (len(sample.args), len(positional)))
    names.extend(sample.kwargs)
    return [sanitize_name(n) for n in names]


def sanitize_name(name: str) -> str:
    """Make a tensor name legal for Triton and ONNX (letters, digits, underscore)."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", str(name)).strip("_") or "tensor"
    if clean[0].isdigit():
        clean = "t_" + clean
    return clean[:64]


def _path_name(path: Sequence[Any]) -> str:
    parts = []
    for key in path:
        if isinstance(key, pytree.MappingKey):
            parts.append(str(key.key))
        elif isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    return "_".join(parts)


def flatten_outputs(out: Any) -> list[tuple[str, Any]]:
    """Outputs as ``(name, leaf)`` pairs: dict keys, ``output_<i>`` for sequences, ``output_0`` for a tensor."""
    if isinstance(out, torch.Tensor):
        return [("output_0", out)]
    leaves, _ = pytree.tree_flatten_with_path(out)
    named = []
    for path, leaf in leaves:
        name = _path_name(path)
        if isinstance(out, (tuple, list)):
            name = "output_" + name
        named.append((sanitize_name(name), leaf))
    return named


def _axes(shapes: list[tuple[int, ...]], batch: bool) -> tuple[AxisSpec, ...]:
    axes = []
    for i in range(len(shapes[0])):
        sizes = [s[i] for s in shapes]
        common = Counter(sizes).most_common(1)[0][0]
        if i == 0 and batch:
            kind = AxisKind.BATCH
        elif len(set(sizes)) > 1:
            kind = AxisKind.DYNAMIC
        else:
            kind = AxisKind.STATIC
        axes.append(AxisSpec(kind, min(sizes), max(sizes), common))
    return tuple(axes)


def _leading(t: torch.Tensor) -> int | None:
    return t.shape[0] if t.dim() > 0 else None


def infer_batching(inputs: list[list[torch.Tensor]], outputs: list[list[torch.Tensor]],
                   declared: bool | None) -> bool:
    """Axis 0 is the batch when every tensor of a sample shares one leading size and it varies
    across samples; ``declared`` (from the user's config) overrides the guess or confirms it."""
    leads = []
    consistent = True
    for ins, outs in zip(inputs, outputs, strict=True):
        sizes = {_leading(t) for t in ins + outs}
        if len(sizes) != 1 or None in sizes:
            consistent = False
            break
        leads.append(sizes.pop())
    if declared is False:
        return False
    if declared is True:
        if not consistent:
            raise UserError("batch_axis=True but the tensors of a sample do not share one leading size; "
                            "every input and output must have the batch on axis 0 (or set batch_axis=False)")
        return True
    return consistent and len(set(leads)) > 1


def _ordered(sample: Sample, like: Sample) -> list[torch.Tensor]:
    """The sample's tensors in the order of ``like`` (keyword order may differ between samples)."""
    return list(sample.args) + [sample.kwargs[k] for k in like.kwargs]


def record_spec(model: torch.nn.Module, samples: Sequence[Sample], outputs: Sequence[Any],
                batch_axis: bool | None = None) -> IOSpec:
    """Build the ``IOSpec`` from samples and the eager outputs they produced."""
    if not samples:
        raise UserError("get_samples() returned no samples; return at least one (several batch sizes are best)")
    first = samples[0]
    for i, s in enumerate(samples[1:], 1):
        if s.structure() != first.structure():
            raise UserError("sample %d has structure %s but sample 0 has %s; every sample must pass the same "
                            "arguments" % (i, s.structure(), first.structure()))
        for a, b in zip(_ordered(s, first), first.flat(), strict=True):
            if a.dim() != b.dim() or a.dtype != b.dtype:
                raise UserError("sample %d: a tensor has rank %d/%s but sample 0 has rank %d/%s; ranks and dtypes "
                                "must agree across samples" % (i, a.dim(), a.dtype, b.dim(), b.dtype))
    # a wrapper the generator puts around the model (aitune_eager.PaddedDetections) names no inputs itself
    names = input_names(getattr(model, "named_forward", None) or getattr(model, "forward", model), first)
    if len(set(names)) != len(names):
        raise UserError("input names %s are not unique after sanitising; rename forward()'s parameters" % names)
    flat_outs = [flatten_outputs(o) for o in outputs]
    out_names = [n for n, _ in flat_outs[0]]
    for i, fo in enumerate(flat_outs):
        for n, leaf in fo:
            if not isinstance(leaf, torch.Tensor):
                raise UserError("output %r of sample %d is a %s; forward() must return tensors (in a tensor, "
                                "tuple, list or dict)" % (n, i, type(leaf).__name__))
            if leaf.dtype not in SUPPORTED_DTYPES:
                raise UserError("output %r has unsupported dtype %s; cast it in forward()" % (n, leaf.dtype))
        if [n for n, _ in fo] != out_names:
            raise UserError("sample %d returns outputs %s but sample 0 returns %s; forward() must return the same "
                            "tensors for every sample (a tensor, or a tuple, list or dict of them, batched on axis 0), "
                            "or one dict of tensors per image with the same keys (detections: served padded to "
                            "GenerateConfig.max_detections with a count per image)"
                            % (i, [n for n, _ in fo], out_names))
    if len(set(out_names)) != len(out_names):
        raise UserError("output names %s are not unique; return a dict with distinct keys" % out_names)
    in_tensors = [_ordered(s, first) for s in samples]
    out_tensors = [[t for _, t in fo] for fo in flat_outs]
    batching = infer_batching(in_tensors, out_tensors, batch_axis)
    bindings = ["arg:%d" % i for i in range(len(first.args))] + ["kwarg:%s" % k for k in first.kwargs]
    inputs = tuple(
        TensorSpec(name, SUPPORTED_DTYPES[in_tensors[0][j].dtype],
                   _axes([tuple(ts[j].shape) for ts in in_tensors], batching), bindings[j])
        for j, name in enumerate(names))
    outs = tuple(
        TensorSpec(name, SUPPORTED_DTYPES[out_tensors[0][j].dtype],
                   _axes([tuple(ts[j].shape) for ts in out_tensors], batching), "output:%d" % j)
        for j, name in enumerate(out_names))
    overlap = set(names) & set(out_names)
    if overlap:
        raise UserError("names %s are used for both an input and an output; rename the output keys" % sorted(overlap))
    batch_sizes = tuple(sorted({t[0].shape[0] for t in in_tensors})) if batching else ()
    return IOSpec(inputs, outs, batching, batch_sizes)


def sample_feed(spec: IOSpec, sample: Sample) -> dict[str, torch.Tensor]:
    """The sample as named input tensors, in spec order, routed by each input's binding."""
    feed = {}
    for t in spec.inputs:
        kind, _, key = t.binding.partition(":")
        feed[t.name] = sample.args[int(key)] if kind == "arg" else sample.kwargs[key]
    return feed


def split_feed(spec: IOSpec, feed: dict[str, Any]) -> tuple[tuple, dict]:
    """Named values back to ``forward``'s positional and keyword arguments, by binding."""
    args, kwargs = [], {}
    for t in spec.inputs:
        kind, _, key = t.binding.partition(":")
        if kind == "arg":
            args.append(feed[t.name])
        else:
            kwargs[key] = feed[t.name]
    return tuple(args), kwargs


def call_with_feed(model: Any, spec: IOSpec, feed: dict[str, torch.Tensor]) -> Any:
    """Call ``model`` with named tensors routed by each input's binding."""
    args, kwargs = split_feed(spec, feed)
    return model(*args, **kwargs)

