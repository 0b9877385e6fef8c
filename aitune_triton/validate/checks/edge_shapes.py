"""``edge_shapes``: requests at the min and max of every profile, at batch 1 and max batch, are
served with outputs of the declared shapes; ``envelope_bounds``: one shape just outside each bound
of the serving envelope is refused by the runtime, naming the range (not crashed, not hung).

Inputs are the model's own (``GenerateConfig.make_inputs``, stored in edge_inputs.npz) where
generate stored them, else cut from the recorded samples so paired inputs stay valid.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from aitune_triton.sample_fit import fit, fit_cost
from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import (
    MAX_REQUEST_BYTES,
    client_dtype,
    infer,
    request_arrays,
    request_bytes,
    short,
    to_request,
    wire_dtype,
)
from aitune_triton.validate.edge_inputs import EDGE_INPUTS, edge_shapes_for, load_edge_inputs, stored_for

Shapes = dict[str, tuple[int, ...]]
Ranges = dict[str, tuple[float, float]]


def sample_inputs(target: ModelTarget, shapes: Shapes, ranges: Ranges | None = None) -> dict[str, np.ndarray]:
    """Inputs of ``shapes`` (model shapes) cut from one recorded reference case, in request shape.

    Every axis is cropped or tiled, so the values are real ones and inputs that describe each
    other (tokens and their ``lengths``, ids and their mask) stay paired: drawing each input at
    random broke an LSTM whose lengths exceeded the drawn sequence. The case needing the fewest
    crops of non-batch axes is taken (tiling a sequence keeps its lengths valid, cropping may
    not). ``ranges`` (``GenerateConfig.input_ranges``) clip values the model declared valid.
    """
    lead = 1 if target.batching else 0
    case = min(target.reference, key=lambda c: fit_cost(c.inputs, shapes, lead))
    ranges = ranges or {}
    out = {}
    for name, tensor in target.inputs.items():
        arr = fit(np.asarray(case.inputs[name]), tuple(shapes[name]))
        if name in ranges:
            arr = np.clip(arr, *ranges[name]).astype(arr.dtype, copy=False)
        arr = to_request(arr, tensor, target.batching)
        dtype = wire_dtype(tensor.data_type)
        out[name] = arr if dtype == "BF16" else arr.astype(client_dtype(dtype), copy=False)
    return out


def edge_inputs(target: ModelTarget, shapes: Shapes, stored: Sequence[dict[str, np.ndarray]] = (),
                ranges: Ranges | None = None) -> dict[str, np.ndarray]:
    """Request inputs for ``shapes``: the model's own (``GenerateConfig.make_inputs``, stored by
    generate in edge_inputs.npz) where they exist, else cut from the recorded samples."""
    case = stored_for(stored, shapes)
    return request_arrays(target, case) if case is not None else sample_inputs(target, shapes, ranges)


def edge_shapes(target: ModelTarget) -> list[tuple[str, Shapes]]:
    """(label, model shapes) at the corners of the serving envelope (a TensorRT model: of every
    profile), at batch 1 and max batch; a shape several corners share is tried once, with all their
    names. The joint corner (max batch, every axis at its max) only where generate estimated it affordable."""
    envelope = target.manifest.envelope
    return edge_shapes_for(target.manifest.spec, target.manifest.profiles, target.max_batch_size,
                           from_profiles=target.manifest.backend == "tensorrt",
                           joint_corner=envelope.joint_corner_ok() if envelope else True)


def _output_shape_problem(target: ModelTarget, got: dict[str, np.ndarray], batch: int | None) -> str | None:
    for name, tensor in target.outputs.items():
        shape = list(got[name].shape)
        dims = [int(d) for d in tensor.dims]
        expected_rank = len(dims) + (1 if target.batching else 0)
        if len(shape) != expected_rank:
            return "output %r has shape %s, expected rank %d" % (name, shape, expected_rank)
        rest = shape[1:] if target.batching else shape
        if target.batching and batch is not None and shape[0] != batch:
            return "output %r has batch %d for a request of batch %d" % (name, shape[0], batch)
        if any(d > 0 and d != s for d, s in zip(dims, rest, strict=True)):
            return "output %r has shape %s but config.pbtxt declares dims %s" % (name, shape, dims)
    return None


def check_edge_shapes(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    ranges = target.manifest.config.get("input_ranges") or {}
    stored = load_edge_inputs(target.model_dir / EDGE_INPUTS)
    done = []
    for label, shapes in edge_shapes(target):
        batch = shapes[target.manifest.spec.inputs[0].name][0] if target.batching else None
        size = request_bytes(target, shapes)
        if size > MAX_REQUEST_BYTES:
            done.append("%s not sent (%.1f GiB, over the %d MiB cap)"
                        % (label, size / (1 << 30), MAX_REQUEST_BYTES >> 20))
            continue
        try:
            got = infer(session, target, edge_inputs(target, shapes, stored, ranges))
        except Exception as exc:  # noqa: BLE001 - the server's message is the result
            return finished("edge_shapes", CheckStatus.FAIL, "%s (%s) failed: %s"
                            % (label, ", ".join("%s %s" % (n, list(s)) for n, s in shapes.items()), short(exc)), t0)
        problem = _output_shape_problem(target, got, batch)
        if problem:
            return finished("edge_shapes", CheckStatus.FAIL, "%s: %s" % (label, problem), t0)
        done.append("%s (%s)" % (label, ", ".join("%s %s" % (n, "x".join(map(str, s))) for n, s in shapes.items())))
    return finished("edge_shapes", CheckStatus.PASS, "%d shapes served: %s" % (len(done), "; ".join(done)), t0)


def outside_shapes(target: ModelTarget) -> list[tuple[str, Shapes]]:
    """(label, model shapes) one size past each end of every enveloped axis, at batch 1, the other
    axes at their usual size; axes with the same range move together (ids and their mask)."""
    spec = target.manifest.spec
    base = {t.name: list(t.shape("common", batch=1 if target.batching else None)) for t in spec.inputs}
    ranges: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for t in spec.inputs:
        for axis, a in enumerate(t.axes):
            if a.kind.value == "dynamic" and not (axis == 0 and t.has_batch):
                ranges.setdefault((a.min, a.max), []).append((t.name, axis))
    out = []
    for (lo, hi), members in ranges.items():
        for size, side in ((hi + 1, "above"), (lo - 1, "below")):
            if size < 1:
                continue
            shapes = {k: list(v) for k, v in base.items()}
            for name, axis in members:
                shapes[name][axis] = size
            name, axis = members[0]
            out.append(("%s axis %d = %d (%s %d..%d)" % (name, axis, size, side, lo, hi),
                        {k: tuple(v) for k, v in shapes.items()}))
    return out


def check_envelope_bounds(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    if target.manifest.backend != "python":
        return finished("envelope_bounds", CheckStatus.SKIP, "the envelope is enforced by the Python-backend runtime; "
                        "a %s model takes what its engine takes" % target.manifest.backend, t0)
    cases = outside_shapes(target)
    if not cases:
        return finished("envelope_bounds", CheckStatus.SKIP, "no dynamic axis besides the batch", t0)
    ranges = target.manifest.config.get("input_ranges") or {}
    refused, problems = [], []
    for label, shapes in cases:
        if request_bytes(target, shapes) > MAX_REQUEST_BYTES:
            refused.append("%s not sent (over the %d MiB cap)" % (label, MAX_REQUEST_BYTES >> 20))
            continue
        try:
            infer(session, target, sample_inputs(target, shapes, ranges))
        except Exception as exc:  # noqa: BLE001 - the refusal is the expected outcome
            text = short(exc, 300)
            if "the model takes" in text:
                refused.append("%s: %s" % (label, text))
            else:
                problems.append("%s failed without the runtime's range message: %s" % (label, text))
            continue
        problems.append("%s was served; the envelope says it is refused" % label)
    if not problems:
        try:
            infer(session, target, request_arrays(target, target.reference[0].inputs, 0, 1))
        except Exception as exc:  # noqa: BLE001
            problems.append("a good request failed afterwards: %s" % short(exc))
    if problems:
        return finished("envelope_bounds", CheckStatus.FAIL, "; ".join(problems), t0)
    return finished("envelope_bounds", CheckStatus.PASS, "%d shapes outside the envelope refused: %s"
                    % (len(refused), " | ".join(refused)), t0)


register(Check("edge_shapes", 50, lambda ctx: check_edge_shapes(ctx.target, ctx.session)))
register(Check("envelope_bounds", 55, lambda ctx: check_envelope_bounds(ctx.target, ctx.session)))
