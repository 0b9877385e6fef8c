"""``torch.export`` of the model for the fallback: flat tensors in and out, symbolic batch and dynamic axes.

The program is traced from ``FlatIO(model)`` (``flat_io.py``) on an example with every symbolic axis
at 2 or more (torch.export specialises sizes 0 and 1), with one ``Dim`` per group of axes that always
agree. A guard the solver cannot prove is retried as a runtime assert, but only if the program then
runs across each axis's whole range; the ranges travel with the artifact so the served model can
refuse requests outside them.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch

from aitune_triton.export.flat_io import flat_inputs, flat_model
from aitune_triton.spec import AxisKind, IOSpec, Sample, sample_feed
from aitune_triton.profile_set import ProfileSet

log = logging.getLogger(__name__)

AxisRanges = dict[str, tuple[tuple[int, int | None], ...]]


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[0] if text else "")


def _export_reason(exc: BaseException) -> str:
    """torch.export's first line rarely says why ("Constraints violated (x)!"): keep the few lines
    after it too (the violated guard, the suggested fix), minus the boilerplate."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("For more information", "The error above occurred"))][:4]
    return ("%s: %s" % (type(exc).__name__, " | ".join(keep)))[:600]


def batch_of(feed: dict[str, torch.Tensor], spec: IOSpec) -> int:
    return next(feed[t.name].shape[0] for t in spec.inputs if t.has_batch)


def _axis_bounds(spec: IOSpec, profiles: ProfileSet | None, name: str, axis: int) -> tuple[int, int]:
    """The spec's range (the serving envelope), widened to any TensorRT profile reaching further."""
    t = spec.input(name)
    lo, hi = t.axes[axis].min, t.axes[axis].max
    shapes = [p.shapes(name) for p in (profiles.profiles if profiles else ()) if name in p.names()]
    if shapes:
        lo, hi = min(lo, *(s[0][axis] for s in shapes)), max(hi, *(s[2][axis] for s in shapes))
    return lo, hi


def _example(spec: IOSpec, samples: Sequence[Sample], max_batch: int) -> dict[str, torch.Tensor]:
    """A sample to trace with: every symbolic axis >= 2 where possible (torch.export specialises
    sizes 0 and 1), batch grown to 2 by repetition when all samples have batch 1."""
    feeds = [sample_feed(spec, s) for s in samples]

    def score(feed: dict[str, torch.Tensor]) -> tuple:
        sym = [feed[t.name].shape[i] for t in spec.inputs for i, a in enumerate(t.axes)
               if a.kind is not AxisKind.STATIC]
        return (min(sym, default=2) >= 2, batch_of(feed, spec) if spec.batching else 0)

    feed = max(feeds, key=score)
    if not spec.batching:
        return feed
    size = batch_of(feed, spec)
    want = max(min(size, max_batch), 2 if max_batch >= 2 else 1)
    return {k: resize_batch(v, want) if spec.input(k).has_batch else v for k, v in feed.items()}


def resize_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` rows: cut, or the rows repeated in order."""
    reps = -(-batch // t.shape[0])
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch] if reps > 1 else t[:batch]


def dynamic_dims(spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet | None, max_batch: int
                 ) -> tuple[dict[str, dict[int, Any]], AxisRanges]:
    """torch.export Dims per input axis, and the range each axis accepts.

    One ``batch`` Dim for all batched inputs. Dynamic axes whose sizes agree in every sample share a
    Dim (an attention mask's sequence axis is the ids' sequence axis); separate Dims would fail with
    "must always be equal". Ranges come from the spec (the serving envelope) and the profiles.
    """
    feeds = [sample_feed(spec, s) for s in samples]
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for t in spec.inputs:
        for i, a in enumerate(t.axes):
            if a.kind is AxisKind.DYNAMIC and not (i == 0 and t.has_batch):
                groups.setdefault(tuple(f[t.name].shape[i] for f in feeds), []).append((t.name, i))
    dims: dict[str, dict[int, Any]] = {t.name: {} for t in spec.inputs}
    ranges = {t.name: [(a.max, a.max) for a in t.axes] for t in spec.inputs}
    if spec.batching and max_batch >= 2:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        for t in spec.inputs:
            if t.has_batch:
                dims[t.name][0] = batch
    for t in spec.inputs:
        if t.has_batch:
            ranges[t.name][0] = (1, max(max_batch, 1))
    for members in groups.values():
        bounds = [_axis_bounds(spec, profiles, n, i) for n, i in members]
        lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
        if hi <= lo:
            continue
        dim = torch.export.Dim("%s_%d" % (members[0][0], members[0][1]), min=lo, max=hi)
        for n, i in members:
            dims[n][i] = dim
            ranges[n][i] = (lo, hi)
    return dims, {k: tuple(v) for k, v in ranges.items()}


def on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` itself when its parameters and buffers are on ``device`` already, else a copy there."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == device for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


def export_program(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet | None,
                   device: str = "cpu") -> tuple[torch.export.ExportedProgram, AxisRanges]:
    """``torch.export.export`` of ``FlatIO(model)`` (flat tensors in and out, in spec order: the
    artifact loads without the user's libraries) with symbolic batch / dynamic axes; returns
    (program, axis ranges)."""
    max_batch = profiles.max_batch_size if profiles else spec.max_sample_batch
    dims, ranges = dynamic_dims(spec, samples, profiles, max_batch)
    feed = {k: v.to(device) for k, v in _example(spec, samples, max_batch).items()}
    target = flat_model(on_device(model, device).eval(), spec)
    args = flat_inputs(spec, feed)
    shapes = {"inputs": tuple(dims[t.name] or None for t in spec.inputs)}
    try:
        program = torch.export.export(target, args, dynamic_shapes=shapes)
    except Exception as exc:
        if "Constraints violated" not in str(exc):
            raise
        # a guard that holds over the whole range but that the solver cannot prove (seen on CUDA:
        # "min(s, 2*s) == s" from attention) may be deferred to a runtime assert; a real
        # specialisation (s % 2 == 0) may not, so every axis is probed across its range
        log.info("torch.export: %s; retrying with runtime asserts instead of guards", _export_reason(exc))
        program = torch.export.export(target, args, dynamic_shapes=shapes,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        failure = _probe_ranges(program, spec, feed, dims)
        if failure:
            raise RuntimeError("%s; with runtime asserts %s" % (_export_reason(exc), failure)) from exc
    return program, ranges


def resize_axis(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``size`` entries along ``axis``: the tensor's own entries cut or repeated cyclically."""
    return t.index_select(axis, torch.arange(size, device=t.device) % t.shape[axis])


def _probe_ranges(program, spec: IOSpec, feed: dict[str, torch.Tensor], dims: dict[str, dict[int, Any]]) -> str | None:
    """Run the program (in this process: an ExportedProgram is plain PyTorch) at both ends and inside
    each symbolic axis's range; the first size whose runtime assert fails, else None."""
    module = program.module()
    groups: dict[int, tuple[Any, list[tuple[str, int]]]] = {}
    for name, per_axis in dims.items():
        for axis, dim in per_axis.items():
            groups.setdefault(id(dim), (dim, []))[1].append((name, axis))
    for dim, members in groups.values():
        lo, hi = dim.min, dim.max
        for size in sorted({lo, min(lo + 1, hi), (lo + hi) // 2, max(hi - 1, lo), hi}):
            probe = dict(feed)
            for name, axis in members:
                probe[name] = resize_axis(feed[name], axis, size)
            try:
                with torch.inference_mode():
                    module(*flat_inputs(spec, probe))
            except Exception as exc:
                return "size %d of %s fails: %s" % (size, dim.__name__, first_line(exc))
    return None
