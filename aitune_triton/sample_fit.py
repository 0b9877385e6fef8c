"""Inputs of any shape cut from the recorded samples, so inputs that describe each other stay paired.

A check that needs inputs at shapes no sample has (the min and max of a TensorRT profile, an edge
shape served by Triton) crops or tiles one recorded sample axis by axis instead of drawing values
at random: random 0/1 attention masks leave a causal decoder rows with nothing to attend to, random
lengths exceed their sequence, random ids leave their vocabulary. Every check that builds inputs
(the ONNX Runtime check in ``export``, the edge shapes ``validate`` sends) goes through here.

Works on numpy arrays and torch tensors alike (duck-typed indexing; no torch import).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Shapes = Mapping[str, Sequence[int]]


def fit(arr: Any, shape: Sequence[int]) -> Any:
    """``arr`` (numpy or torch) cropped or tiled (its items repeated in order) to ``shape``, axis by axis."""
    for axis, size in enumerate(shape):
        have = arr.shape[axis]
        if have == size:
            continue
        if have == 0:
            return arr.new_zeros(tuple(shape)) if hasattr(arr, "new_zeros") else np.zeros(tuple(shape), arr.dtype)
        index = (slice(None),) * axis + (np.arange(size) % have,)
        arr = arr[index]
    return arr


def fit_cost(inputs: Mapping[str, Any], shapes: Shapes, lead: int) -> tuple[int, int, int]:
    """How badly the inputs of one sample fit ``shapes``: non-batch axes to crop (tiling a sequence
    keeps its lengths valid, cropping may not), total size difference, then fewer rows (more
    distinct rows make a more varied batch). ``lead`` is 1 when axis 0 is the batch, else 0."""
    crops = distance = 0
    for name, shape in shapes.items():
        have = tuple(inputs[name].shape)
        for axis in range(lead, min(len(have), len(shape))):
            crops += int(have[axis] > shape[axis])
            distance += abs(have[axis] - shape[axis])
    rows = max((v.shape[0] for v in inputs.values() if len(v.shape)), default=0) if lead else 0
    return crops, distance, -rows


def fitted(cases: Sequence[Mapping[str, Any]], shapes: Shapes, lead: int) -> dict[str, Any]:
    """Every input of the best fitting case (``fit_cost``) fitted to ``shapes``."""
    case = min(cases, key=lambda c: fit_cost(c, shapes, lead))
    return {name: fit(case[name], tuple(shape)) for name, shape in shapes.items()}
