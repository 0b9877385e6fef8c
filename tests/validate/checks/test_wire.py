"""Requests and responses: protocol dtypes, request shapes, the output comparison validate reports, request sizes."""

from __future__ import annotations

import numpy as np

from aitune_triton.numerics import Tolerance
from aitune_triton.validate.checks import wire


def why(got, expected, atol: float, rtol: float) -> str | None:
    """The failure message validate reports for an output, None when it matches."""
    return wire.compare_output(np.asarray(got), expected, Tolerance(atol, rtol)).reason


def test_compare_within_and_outside_tolerance():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    assert why(ref + 1e-5, ref, 1e-4, 1e-3) is None
    reason = why(ref + np.array([[0, 0], [0, 0.5]], np.float32), ref, 1e-4, 1e-3)
    assert reason.startswith("1/4 elements outside atol=0.0001 rtol=0.001, max |diff| 0.5 at [1, 1]")
    assert why(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), 0, 0) is None
    assert "outside" in why(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), 1, 1)
    # no tolerance in the manifest: exact
    assert not wire.compare_output(ref + 1e-5, ref, None).ok


def test_compare_ints_exact_and_shapes():
    assert why(np.array([1, 2, 3]), np.array([1, 2, 3]), 0, 0) is None
    assert why(np.array([1, 2, 4]), np.array([1, 2, 3]), 0.5, 0.5).startswith("1/3 values differ")
    assert why(np.array([True, False]), np.array([True, False]), 0, 0) is None
    # a reshape'd output comes back as [batch, 1]
    assert why(np.array([[1], [2]]), np.array([1, 2]), 0, 0) is None
    assert why(np.zeros((2, 3)), np.zeros((2, 4)), 0, 0) == "shape [2, 3], expected [2, 4]"
    # the worst |diff| of a match is what the accuracy check reports
    assert wire.compare_output(np.array([1.0, 2.5]), np.array([1.0, 2.0]), Tolerance(1.0, 0.0)).max_abs == 0.5


def test_wire_dtypes():
    assert wire.wire_dtype("TYPE_FP32") == "FP32"
    assert wire.wire_dtype("TYPE_STRING") == "BYTES"
    assert wire.wire_dtype(wire.model_config_pb2.TYPE_BF16) == "BF16"


def test_request_arrays_follow_config_dims_and_dtypes(affine):
    case = affine.reference[1]
    arrays = wire.request_arrays(affine, case.inputs, 0, 2)
    assert arrays["x"].shape == (2, 2, 4) and arrays["x"].dtype == np.float32
    assert arrays["ids"].shape == (2, 5) and arrays["ids"].dtype == np.int64


def test_batch_only_tensor_is_sent_as_batch_by_one():
    cfg = wire.model_config_pb2.ModelInput(name="c", data_type=wire.model_config_pb2.TYPE_INT32, dims=[1])
    cfg.reshape.SetInParent()
    assert wire.to_request(np.arange(3), cfg, batching=True).shape == (3, 1)
    plain = wire.model_config_pb2.ModelInput(name="c", data_type=wire.model_config_pb2.TYPE_INT32, dims=[-1])
    assert wire.to_request(np.arange(3).reshape(1, 3), plain, batching=True).shape == (1, 3)
