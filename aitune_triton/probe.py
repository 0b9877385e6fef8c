"""Probe the model with mixed and perturbed inputs before trusting what the samples suggest.

The samples say which axis is the batch and how large each output is, but only for the values
they happen to hold. Two claims the generated config makes need more than that:

* **rows are independent**: Triton's dynamic batcher merges requests into one batch, which is
  only correct when each row's outputs do not depend on the other rows. A model with
  ``if x.sum() > 0:`` takes one branch per batch: every sample batch may agree with itself while
  a merged batch answers some requests from the wrong branch. So a batch is built from rows of
  different samples plus negated and scaled rows (so rows take different branches), and each
  row's output inside the batch is compared with the same row run alone, within the recorded
  tolerances. A model that fails keeps its ``max_batch_size`` (a client's own batch is what the
  model saw in its samples) but gets no dynamic batching.
* **output sizes are fixed**: an output axis whose size changes with the values (detections: the
  number of boxes) must be ``-1`` even when every sample produced 50 boxes. Every probe run's
  output sizes are compared with the samples'; ``GenerateConfig.output_dims`` declares dims
  where probing cannot tell.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from aitune_triton.errors import UserError
from aitune_triton.numerics import ToleranceOverride, compare, tolerance_for
from aitune_triton.spec import (AxisKind, AxisSpec, IOSpec, Sample, TensorSpec, call_with_feed, flatten_outputs,
                                sample_feed)
from aitune_triton.probe_section import BatchingProbe, ChecksSection

log = logging.getLogger(__name__)

Feed = dict[str, torch.Tensor]
MAX_PROBE_ROWS = 8


@dataclass(frozen=True)
class ProbeResult:
    """The spec with what probing found applied, and what to tell the user about it."""

    spec: IOSpec
    notes: tuple[str, ...]
    checks: ChecksSection  # for the manifest: the batching verdict and the output axes changed (no notes yet)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[0][:200] if text else "")


def _run(model: torch.nn.Module, spec: IOSpec, feed: Feed) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {n: t.detach() for n, t in flatten_outputs(call_with_feed(model, spec, feed))}


def _perturbations(feed: Feed, spec: IOSpec) -> list[tuple[str, Feed]]:
    """Variants of ``feed`` that keep every value legal where possible: floats negated and scaled
    (a sign or magnitude test flips), integer and bool inputs untouched (token ids, lengths and
    masks must stay valid)."""
    floats = [t.name for t in spec.inputs if feed[t.name].is_floating_point()]
    if not floats:
        return []
    return [(label, {k: (v * factor if k in floats else v.clone()) for k, v in feed.items()})
            for label, factor in (("negated", -1.0), ("scaled x2", 2.0))]


def _row(feed: Feed, i: int) -> Feed:
    return {k: v[i:i + 1].clone() for k, v in feed.items()}  # a copy: a forward that writes in place keeps the samples


def _probe_rows(spec: IOSpec, feeds: Sequence[Feed], limit: int = MAX_PROBE_ROWS) -> list[tuple[str, Feed]]:
    """Rows (batch 1 feeds) from the samples sharing the most common non-batch shapes, taken
    round-robin over samples, each followed by a perturbed copy of itself."""
    groups: dict[tuple, list[int]] = {}
    for i, feed in enumerate(feeds):
        key = tuple((n, tuple(v.shape[1:])) for n, v in feed.items())
        groups.setdefault(key, []).append(i)
    members = max(groups.values(), key=lambda idx: sum(next(iter(feeds[i].values())).shape[0] for i in idx))
    queues = [[(i, r) for r in range(next(iter(feeds[i].values())).shape[0])] for i in members]
    rows: list[tuple[str, Feed]] = []
    turn = 0
    while len(rows) < limit and any(queues):
        queue = queues[turn % len(queues)]
        turn += 1
        if not queue:
            continue
        i, r = queue.pop(0)
        row = _row(feeds[i], r)
        rows.append(("sample %d row %d" % (i, r), row))
        variants = _perturbations(row, spec)
        if variants:
            label, variant = variants[(len(rows) // 2) % len(variants)]
            rows.append(("sample %d row %d %s" % (i, r, label), variant))
    if len(rows) == 1:
        rows.append((rows[0][0] + " again", rows[0][1]))
    return rows[:limit]


def _cat(rows: Sequence[Feed]) -> Feed:
    return {k: torch.cat([r[k] for r in rows], 0) for k in rows[0]}


def check_rows(model: torch.nn.Module, spec: IOSpec, rows: Sequence[tuple[str, Feed]],
               tolerance: ToleranceOverride | None, observed: dict[str, list[tuple[int, ...]]]) -> str | None:
    """None when each row's outputs inside mixed batches equal the row run alone, else why not.
    Every output shape seen is added to ``observed`` (for the output-size probe)."""
    alone = []
    for label, feed in rows:
        try:
            out = _run(model, spec, feed)
        except Exception as exc:  # noqa: BLE001 - the model itself fails on one row
            return "%s alone (batch 1) raised %s" % (label, _first_line(exc))
        alone.append(out)
        for n, tensor in out.items():
            observed.setdefault(n, []).append(tuple(tensor.shape))
    orders = [list(range(len(rows))), list(reversed(range(len(rows))))]
    for order in orders:
        batch = _cat([rows[i][1] for i in order])
        try:
            out = _run(model, spec, batch)
        except Exception as exc:  # noqa: BLE001 - a merged batch the model cannot take
            return "a batch of %d rows mixing samples raised %s" % (len(order), _first_line(exc))
        for n, tensor in out.items():
            observed.setdefault(n, []).append(tuple(tensor.shape))
        for t in spec.outputs:
            got = out.get(t.name)
            if got is None or any(t.name not in a for a in alone):
                return "output %r is not returned for every batch (the outputs depend on the values)" % t.name
            if got.dim() == 0 or got.shape[0] != len(order):
                return "output %r has %s rows for a batch of %d" % (t.name, list(got.shape[:1]), len(order))
            for pos, i in enumerate(order):
                same = compare(got[pos:pos + 1], alone[i][t.name], tolerance_for(t.dtype, tolerance),
                               strict_dtype=True)
                if not same.ok:
                    return ("output %r of %s differs inside a batch of %d mixed rows from the row run alone (%s)"
                            % (t.name, rows[i][0], len(order), same.reason))
    return None


def _with_axes(t: TensorSpec, axes: Sequence[AxisSpec]) -> TensorSpec:
    return dataclasses.replace(t, axes=tuple(axes))


def _widen(t: TensorSpec, shapes: Sequence[tuple[int, ...]]) -> tuple[TensorSpec, list[int]]:
    """Static axes whose size differs across ``shapes`` become dynamic; returns the axes changed."""
    axes, changed = list(t.axes), []
    for i, a in enumerate(t.axes):
        if a.kind is not AxisKind.STATIC:
            continue
        sizes = {s[i] for s in shapes if len(s) == t.rank} | {a.max}
        if len(sizes) > 1:
            axes[i] = AxisSpec(AxisKind.DYNAMIC, min(sizes), max(sizes), a.common)
            changed.append(i)
    return _with_axes(t, axes), changed


def apply_output_dims(spec: IOSpec, declared: Mapping[str, Sequence[int]]) -> IOSpec:
    """``GenerateConfig.output_dims``: Triton dims per output (no batch axis, ``-1`` for a size
    that varies). A fixed size must be the size the samples produced."""
    known = {t.name: t for t in spec.outputs}
    unknown = sorted(set(declared) - set(known))
    if unknown:
        raise UserError("output_dims names unknown output(s) %s; the outputs are %s" % (unknown, sorted(known)))
    outs = []
    for t in spec.outputs:
        if t.name not in declared:
            outs.append(t)
            continue
        dims = tuple(declared[t.name])
        lead = 1 if t.has_batch else 0
        if len(dims) != t.rank - lead:
            raise UserError("output_dims[%r] has %d dims but the output has %d (without the batch axis): %s"
                            % (t.name, len(dims), t.rank - lead, list(t.triton_dims())))
        axes = list(t.axes)
        for j, d in enumerate(dims):
            a = axes[lead + j]
            if d == -1:
                axes[lead + j] = AxisSpec(AxisKind.DYNAMIC, a.min, a.max, a.common)
            elif a.kind is not AxisKind.STATIC or a.max != d:
                raise UserError("output_dims[%r] declares axis %d as %d but the model returned sizes %d..%d; "
                                "declare -1 for a size that varies" % (t.name, lead + j, d, a.min, a.max))
        outs.append(_with_axes(t, axes))
    return dataclasses.replace(spec, outputs=tuple(outs))


def probe(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], tolerance: ToleranceOverride | None = None,
          output_dims: Mapping[str, Sequence[int]] | None = None) -> ProbeResult:
    """Run the probes, apply ``output_dims`` and return the updated spec with notes for the user."""
    feeds = [sample_feed(spec, s) for s in samples]
    observed: dict[str, list[tuple[int, ...]]] = {}
    notes: list[str] = []
    batching = None
    if spec.batching:
        rows = _probe_rows(spec, feeds)
        why = check_rows(model, spec, rows, tolerance, observed)
        spec = dataclasses.replace(spec, rows_independent=why is None, row_dependence=why or "")
        batching = BatchingProbe(why is None, tuple(label for label, _ in rows),
                                 why or "each of %d mixed and perturbed rows matched the row run alone" % len(rows))
        if why:
            notes.append("dynamic batching is off: rows are not independent (%s); max_batch_size stays, so a "
                         "client's own batch is served as sent, but requests are never merged" % why)
    else:
        for i, feed in enumerate(feeds[:3]):
            for label, variant in _perturbations(feed, spec):
                try:
                    out = _run(model, spec, variant)
                except Exception as exc:  # noqa: BLE001 - only sizes are wanted; an illegal variant tells nothing
                    log.info("output-size probe (sample %d %s) raised %s", i, label, _first_line(exc))
                    continue
                for n, tensor in out.items():
                    observed.setdefault(n, []).append(tuple(tensor.shape))
    outs: list[TensorSpec] = []
    widened: dict[str, tuple[int, ...]] = {}
    for t in spec.outputs:
        new, changed = _widen(t, observed.get(t.name, ()))
        outs.append(new)
        if changed:
            widened[t.name] = tuple(changed)
            notes.append("output %r: axis %s changes size with the input values (%s), so it is declared -1; "
                         "get_config() can pin it with output_dims" % (
                             t.name, ", ".join(map(str, changed)),
                             ", ".join("%d..%d" % (new.axes[i].min, new.axes[i].max) for i in changed)))
    spec = dataclasses.replace(spec, outputs=tuple(outs))
    declared = None
    if output_dims:
        spec = apply_output_dims(spec, output_dims)
        declared = {k: tuple(v) for k, v in output_dims.items()}
    return ProbeResult(spec, tuple(notes), ChecksSection(batching, widened, declared))
