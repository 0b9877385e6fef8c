"""What perf_analyzer sends to a served model: ``--input-data`` from the reference cases and
``--shape`` for every dynamic dim. One home for validate's perf check and tune's search, so both
load a model with the same requests and a fix to one is a fix to both.

Reference cases, not random data: random ids or masks can be out of range for the model. The
requests are built as the checks build theirs (``request_arrays``: request shape, config dtype;
a raw-data pipeline gets its raw rows as BYTES). Three limits of perf_analyzer's JSON shape this:

* it refuses entries whose shape differs from ``--shape``, and the batcher would not merge them
  anyway, so only cases of the first case's shapes are used (at most ``MAX_CASES``);
* it has no BF16 (``reference.npz`` holds BF16 as float32, which it would read as the wrong
  size), so a model with a BF16 input gets random data, at the recorded shapes;
* without reference cases, dynamic dims get the manifest's most common recorded size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aitune_triton.triton.perf import write_input_data_json
from aitune_triton.validate.checks import raw_pipeline
from aitune_triton.validate.checks.target import ModelTarget
from aitune_triton.validate.checks.wire import request_arrays, wire_dtype

MAX_CASES = 16


def perf_input_options(target: ModelTarget, workdir: Path) -> tuple[Path | None, dict[str, tuple[int, ...]]]:
    """(the ``--input-data`` JSON written under ``workdir`` or None for random data, ``--shape``
    per dynamic input) for ``target``; one batch item per request (``-b`` replicates it)."""
    samples: list[dict[str, np.ndarray]] = []
    for case in target.reference:
        sample = raw_pipeline.raw_request([case.inputs[raw_pipeline.RAW].tobytes()]) if target.kind == "pipeline" \
            else request_arrays(target, case.inputs, 0, 1)  # (a non-batching case is taken whole)
        sample_shapes = {n: np.asarray(a).shape for n, a in sample.items()}
        if not samples or sample_shapes == {n: np.asarray(a).shape for n, a in samples[0].items()}:
            samples.append(sample)
    samples = samples[:MAX_CASES]
    dynamic = [name for name, tensor in target.inputs.items() if any(d < 0 for d in tensor.dims)]
    shapes: dict[str, tuple[int, ...]] = {}
    if samples:
        for name in dynamic:
            shape = np.asarray(samples[0][name]).shape
            shapes[name] = tuple(shape[1:] if target.batching else shape)
    elif target.kind == "model":
        for t in target.manifest.spec.inputs:
            if t.name in dynamic:
                shapes[t.name] = tuple(a.common for a in (t.axes[1:] if t.has_batch else t.axes))
    if not samples or any(wire_dtype(t.data_type) == "BF16" for t in target.inputs.values()):
        return None, shapes
    Path(workdir).mkdir(parents=True, exist_ok=True)
    path = Path(workdir) / ("%s_input.json" % target.name)
    return write_input_data_json(samples, path, has_batch_dim=target.batching), shapes
