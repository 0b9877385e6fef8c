"""Render the Triton ``model.py`` that serves a ``FallbackArtifact`` (``templates/python_model.py.j2``).

The generated file is self-contained (torch and ``triton_python_backend_utils`` only): the
serving environment need not have aitune-triton installed, so the spec it needs (names, dtypes,
how inputs bind to ``forward``, accepted axis ranges) is written into it as Python literals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aitune_triton import __version__
from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, IOSpec
from aitune_triton.templating import render

if TYPE_CHECKING:
    from aitune_triton.export.torch_export import FallbackArtifact

log = logging.getLogger(__name__)

TEMPLATE = "python_model.py.j2"
FILE_ROLES = {"aoti": ("aoti",), "export": ("export",), "eager": ("source", "state_dict")}
DEFAULT_MAX_GRAPHS = 32


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself: with padding, any batch
    the dynamic batcher forms lands on one of these, so few CUDA graphs cover the whole range."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch_size] if max_batch_size > 0 else []


def _ranges(spec: IOSpec, artifact: "FallbackArtifact", max_batch_size: int) -> dict[str, tuple]:
    out = {}
    for t in spec.inputs:
        given = artifact.axis_ranges.get(t.name)
        if given and len(given) == t.rank:
            ranges = [tuple(r) for r in given]
        else:
            ranges = [(a.max, a.max) if a.kind is AxisKind.STATIC else (1, None) for a in t.axes]
        if t.has_batch and max_batch_size > 0:
            ranges[0] = (1, max_batch_size)
        out[t.name] = tuple(ranges)
    return out


def render_python_model(spec: IOSpec, artifact: "FallbackArtifact", max_batch_size: int, *,
                        pad_to_buckets: bool | None = None, cuda_graphs: bool = True,
                        graph_batches: list[int] | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS) -> str:
    """The model.py text. ``pad_to_buckets`` None pads on CUDA instances only, and only when the
    artifact's rows were found independent; ``cuda_graphs`` applies to GPU instances only."""
    if spec.batching and max_batch_size < 0:
        raise UserError("max_batch_size must be >= 0, got %d" % max_batch_size)
    batches = sorted(set(graph_batches)) if graph_batches else graph_batch_sizes(max_batch_size)
    if any(not 1 <= b <= max(max_batch_size, 1) for b in batches):
        raise UserError("graph batch sizes %s must lie in 1..max_batch_size (%d)" % (batches, max_batch_size))
    if pad_to_buckets is None and not artifact.row_independent:
        pad_to_buckets = False
    elif pad_to_buckets and not artifact.row_independent:
        log.warning("padding batches for %s although its rows were not found independent: outputs may differ",
                    artifact.format)
    batched = spec.batching and max_batch_size > 0
    ranges = _ranges(spec, artifact, max_batch_size if batched else 0)
    inputs = []
    for t in spec.inputs:
        kind, _, key = t.binding.partition(":")
        inputs.append((t.name, t.dtype, kind, int(key) if kind == "arg" else key, batched and t.has_batch,
                       ranges[t.name]))
    return render(
        TEMPLATE,
        version=__version__,
        fmt=artifact.format,
        artifact_device=artifact.device,
        files=dict(zip(FILE_ROLES[artifact.format], artifact.files)),
        max_batch_size=max_batch_size if batched else 0,
        inputs=inputs,
        outputs=[(t.name, t.dtype) for t in spec.outputs],
        pad_to_buckets=pad_to_buckets,
        cuda_graphs=bool(cuda_graphs),
        graph_batches=batches if batched else [],
        max_graphs=int(max_graphs),
    )
