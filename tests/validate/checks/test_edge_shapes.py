"""Edge shapes at the profile corners and the inputs built for them from the recorded samples."""

from __future__ import annotations

import numpy as np
import torch

from aitune_triton.validate.checks import edge_shapes as es


def test_edge_shapes_cover_profile_corners_and_batches(tokens, affine):
    shapes = dict(es.edge_shapes(tokens))
    mbs = tokens.max_batch_size
    assert sorted({s["ids"] for s in shapes.values()}) == sorted({(1, 6), (1, 10), (mbs, 6), (mbs, 10)})
    assert all(s["ids"] == s["mask"] for s in shapes.values())  # one profile corner for all inputs
    # static non-batch dims: min == max, so only the two batch sizes remain, each named once
    labels = [label for label, _ in es.edge_shapes(affine)]
    assert len(labels) == 2 and all(" = " in label for label in labels)


def test_edge_inputs_are_cut_from_the_samples_and_keep_lengths_valid(tagger, tagger_model):
    model = tagger_model
    recorded = {int(v) for c in tagger.reference for v in np.asarray(c.inputs["tokens"]).ravel()}
    seen = set()
    for label, shapes in es.edge_shapes(tagger):
        arrays = es.sample_inputs(tagger, shapes)
        tokens, lengths = arrays["tokens"], arrays["lengths"]
        assert tokens.shape == shapes["tokens"] and lengths.shape == shapes["lengths"] + (1,)  # dims [1] + reshape
        assert lengths.max() <= tokens.shape[1], label
        assert set(np.unique(tokens).tolist()) <= recorded
        model(torch.from_numpy(tokens), torch.from_numpy(lengths.reshape(-1)))  # the model accepts every one
        seen.add(shapes["tokens"])
    assert seen == {(1, 6), (1, 15), (tagger.max_batch_size, 6), (tagger.max_batch_size, 15)}


def test_edge_inputs_tile_rows_and_clip_to_declared_ranges(affine):
    arrays = es.sample_inputs(affine, {"x": (8, 2, 4), "ids": (8, 5)}, {"ids": (4, 6)})
    assert arrays["x"].shape == (8, 2, 4) and arrays["ids"].shape == (8, 5)
    case = next(c for c in affine.reference if np.asarray(c.inputs["x"]).shape[0] == 4)  # the closest case
    np.testing.assert_array_equal(arrays["x"][4:], case.inputs["x"])  # its rows, repeated in order
    assert arrays["ids"].min() >= 4 and arrays["ids"].max() <= 6
