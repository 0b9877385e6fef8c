"""Malformed requests a correct server must reject, and what building them may allocate."""

from __future__ import annotations

import numpy as np

from aitune_triton.validate.checks import bad_requests as br
from aitune_triton.validate.checks import wire
from aitune_triton.validate.checks.target import ModelTarget


def test_bad_requests_cases(affine, tokens):
    labels = [label for label, _, _ in br.bad_requests(affine)]
    assert labels[0] == "wrong dtype (INT32 for FP32 'x')"
    assert labels[1].startswith("wrong rank")
    assert any(label.startswith("dim outside the config ('x' axis 2 = 5, fixed at 4)") for label in labels)
    assert "batch %d > max_batch_size %d" % (affine.max_batch_size + 1, affine.max_batch_size) in labels
    assert labels[-1] == "missing input 'ids'"
    cases = {label: (arrays, types) for label, arrays, types in br.bad_requests(affine)}
    arrays, types = cases["wrong dtype (INT32 for FP32 'x')"]
    assert types == {"x": "INT32"} and arrays["x"].dtype == np.int32
    assert set(cases["missing input 'ids'"][0]) == {"x"}
    # every non-batch dim of the token model is -1: the python backend accepts any size there
    token_labels = [label for label, _, _ in br.bad_requests(tokens)]
    assert not any("dim outside" in label for label in token_labels)
    assert token_labels[0] == "wrong dtype (FP32 for INT64 'ids')"


def test_huge_max_batch_size_caps_what_the_checks_allocate(affine):
    huge = affine.config.__class__()
    huge.CopyFrom(affine.config)
    huge.max_batch_size = 2147483647
    target = ModelTarget(affine.name, affine.model_dir, affine.manifest, huge, affine.reference)
    labels = [label for label, _, _ in br.bad_requests(target)]
    assert labels and not any("max_batch_size" in label for label in labels)  # the 2**31 batch is not built
    shapes = {n: (2147483647,) + tuple(max(d, 1) for d in t.dims) for n, t in target.inputs.items()}
    assert wire.request_bytes(target, shapes) > wire.MAX_REQUEST_BYTES
    small = {n: (1,) + tuple(max(d, 1) for d in t.dims) for n, t in target.inputs.items()}
    assert 0 < wire.request_bytes(target, small) < wire.MAX_REQUEST_BYTES
