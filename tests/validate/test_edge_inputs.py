"""Edge-shape inputs built by the model's own ``make_inputs``: made at generate time, stored, used by validate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.validate import edge_inputs as ei


class Lengths(torch.nn.Module):
    def forward(self, tokens, lengths):
        return tokens.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)  # fails on a length past the sequence


def _spec_profiles():
    samples = [normalize_sample((torch.randint(1, 9, (b, s)), torch.full((b,), s)), i)
               for i, (b, s) in enumerate(((1, 3), (2, 7)))]
    model = Lengths()
    spec = record_spec(model, samples, [model(*s.args) for s in samples])
    return spec, derive_profiles(spec, samples, ProfileMode.SINGLE)


def make_inputs(shapes):
    batch, seq = shapes["tokens"]
    return {"tokens": torch.arange(batch * seq).reshape(batch, seq) % 9 + 1,
            "lengths": torch.full(shapes["lengths"], seq, dtype=torch.int64)}


def test_inputs_are_made_for_every_edge_shape_and_found_again(tmp_path):
    spec, profiles = _spec_profiles()
    path = tmp_path / ei.EDGE_INPUTS
    corners = ei.edge_shapes_for(spec, profiles, profiles.max_batch_size)
    assert ei.save_edge_inputs(path, make_inputs, spec, profiles, profiles.max_batch_size) == len(corners) == 4
    stored = ei.load_edge_inputs(path)
    for _, shapes in corners:
        case = ei.stored_for(stored, shapes)
        assert case["tokens"].shape == shapes["tokens"] and (case["lengths"] == shapes["tokens"][1]).all()
        Lengths()(torch.from_numpy(case["tokens"]), torch.from_numpy(case["lengths"]))
    assert ei.stored_for(stored, {"tokens": (3, 5), "lengths": (3,)}) is None
    assert ei.load_edge_inputs(tmp_path / "absent.npz") == []


@pytest.mark.parametrize("fn, match", [
    (lambda shapes: [torch.zeros(1)], "returned a list"),
    (lambda shapes: {"tokens": torch.zeros(shapes["tokens"], dtype=torch.int64)}, r"returned no \['lengths'\]"),
    (lambda shapes: {**make_inputs(shapes), "lengths": torch.zeros(9, dtype=torch.int64)},
     "input 'lengths' is \\[9\\] torch.int64 but \\[1\\] torch.int64 was asked for"),
    (lambda shapes: 1 / 0, "raised for profile 0 min batch 1"),
])
def test_a_bad_function_is_a_one_line_user_error(tmp_path, fn, match):
    spec, profiles = _spec_profiles()
    with pytest.raises(UserError, match=match):
        ei.save_edge_inputs(tmp_path / ei.EDGE_INPUTS, fn, spec, profiles, profiles.max_batch_size)


def test_config_records_the_function_by_name():
    cfg = GenerateConfig(make_inputs=make_inputs)
    assert cfg.to_dict()["make_inputs"] == "make_inputs"
    assert GenerateConfig.from_dict(cfg.to_dict()).make_inputs is None  # a manifest keeps the name only
    with pytest.raises(UserError, match="make_inputs must be a function"):
        GenerateConfig(make_inputs=3)
    np.testing.assert_array_equal(make_inputs({"tokens": (1, 2), "lengths": (1,)})["lengths"], [2])
