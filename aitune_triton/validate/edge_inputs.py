"""The edge shapes ``validate`` sends, and inputs for them built by the model's own function.

Edge shapes are the min and max of every profile at batch 1 and at ``max_batch_size``. By
default ``validate`` cuts their inputs from the recorded samples (``checks.sample_inputs``). A
model whose valid inputs cannot be cut from samples (a sequence longer than any sample with
lengths that must match it, ids that must stay sorted) declares
``GenerateConfig(make_inputs=fn)``: ``fn({input name: full shape}) -> {input name: tensor}``.
``validate`` runs without the user's model.py, so ``generate`` calls the function for every edge
shape and stores the inputs in ``edge_inputs.npz`` next to ``reference.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from aitune_triton.errors import UserError
from aitune_triton.spec import IOSpec
from aitune_triton.reference_data import check_npz_size
from aitune_triton.profile_set import ProfileSet

EDGE_INPUTS = "edge_inputs.npz"
Shapes = dict[str, tuple[int, ...]]


def edge_shapes_for(spec: IOSpec, profiles: ProfileSet, max_batch_size: int, from_profiles: bool = True,
                    joint_corner: bool = True) -> list[tuple[str, Shapes]]:
    """(label, model shapes) at the min and max of every profile (``from_profiles``: a TensorRT
    model takes what its profiles take), else of the serving envelope (the spec's ranges), at batch 1
    and max batch; ``joint_corner`` False leaves out max batch with every axis at its max (too slow to
    run, see ``Envelope.corner_ms``). A shape several corners share is tried once, with all their names."""
    batching = max_batch_size > 0
    batches = sorted({1, max_batch_size}) if batching else [None]
    found: dict[tuple, tuple[list[str], dict]] = {}
    sources = list(enumerate(profiles.profiles)) if from_profiles and profiles.profiles else [(None, None)]
    for p, profile in sources:
        for which, idx in (("min", 0), ("max", 2)):
            for batch in batches:
                if which == "max" and batch == max_batch_size and batch != 1 and not joint_corner:
                    continue
                shapes = {}
                for t in spec.inputs:
                    shape = list(profile.shapes(t.name)[idx]) if profile and t.name in profile.names() \
                        else list(t.shape(which))
                    if batch is not None and t.has_batch:
                        shape[0] = batch
                    shapes[t.name] = tuple(shape)
                label = "%s %s%s" % ("envelope" if p is None else "profile %d" % p, which,
                                     "" if batch is None else " batch %d" % batch)
                found.setdefault(tuple(sorted(shapes.items())), ([], shapes))[0].append(label)
    return [(" = ".join(labels), shapes) for labels, shapes in found.values()]


def _checked(spec: IOSpec, shapes: Shapes, made: Any, name: str) -> dict[str, np.ndarray]:
    if not isinstance(made, dict):
        raise UserError("make_inputs (%s) returned a %s for shapes %s; return a dict of input name -> tensor"
                        % (name, type(made).__name__, shapes))
    missing = sorted(set(shapes) - set(made))
    if missing:
        raise UserError("make_inputs (%s) returned no %s for shapes %s" % (name, missing, shapes))
    out = {}
    for t in spec.inputs:
        value = made[t.name]
        if not isinstance(value, torch.Tensor):
            raise UserError("make_inputs (%s): input %r is a %s, not a tensor" % (name, t.name, type(value).__name__))
        if tuple(value.shape) != tuple(shapes[t.name]) or value.dtype != t.torch_dtype:
            raise UserError("make_inputs (%s): input %r is %s %s but %s %s was asked for"
                            % (name, t.name, list(value.shape), value.dtype, list(shapes[t.name]), t.torch_dtype))
        value = value.detach().cpu()
        out[t.name] = (value.float() if value.dtype == torch.bfloat16 else value).contiguous().numpy()
    return out


def save_edge_inputs(path: Path, make_inputs: Callable[[Shapes], Any], spec: IOSpec, profiles: ProfileSet,
                     max_batch_size: int, joint_corner: bool = True) -> int:
    """Call ``make_inputs`` for every edge shape (the profiles' and the envelope's) and store the
    inputs; returns how many shapes."""
    name = getattr(make_inputs, "__qualname__", repr(make_inputs))
    arrays = {}
    corners = edge_shapes_for(spec, profiles, max_batch_size, True, joint_corner)
    corners += [c for c in edge_shapes_for(spec, profiles, max_batch_size, False, joint_corner)
                if c[1] not in [k[1] for k in corners]]
    for i, (label, shapes) in enumerate(corners):
        try:
            made = make_inputs(dict(shapes))
        except UserError:
            raise
        except Exception as exc:
            raise UserError("make_inputs (%s) raised for %s %s: %s: %s"
                            % (name, label, shapes, type(exc).__name__, exc)) from exc
        for k, v in _checked(spec, shapes, made, name).items():
            arrays["%d/%s" % (i, k)] = v
    np.savez_compressed(path, **arrays)
    return len(corners)


def load_edge_inputs(path: Path) -> list[dict[str, np.ndarray]]:
    """The stored inputs, one dict per edge shape (empty when the model declared no function)."""
    if not Path(path).exists():
        return []
    cases: dict[int, dict[str, np.ndarray]] = {}
    check_npz_size(path)
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            idx, name = key.split("/", 1)
            cases.setdefault(int(idx), {})[name] = data[key]
    return [cases[i] for i in sorted(cases)]


def stored_for(stored: Sequence[dict[str, np.ndarray]], shapes: Shapes) -> dict[str, np.ndarray] | None:
    """The stored inputs of exactly ``shapes``, if any."""
    for case in stored:
        if all(name in case and tuple(case[name].shape) == tuple(shape) for name, shape in shapes.items()):
            return case
    return None
