"""``edge_shapes``: requests at the min and max of every profile, at batch 1 and max batch, are
served with outputs of the declared shapes.

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
    """(label, model shapes) at the min and max of every profile, at batch 1 and max batch;
    a shape several corners share is tried once, with all their names."""
    return edge_shapes_for(target.manifest.spec, target.manifest.profiles, target.max_batch_size)


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


register(Check("edge_shapes", 50, lambda ctx: check_edge_shapes(ctx.target, ctx.session)))
