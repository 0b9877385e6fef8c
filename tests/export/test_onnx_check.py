"""ONNX Runtime outputs against eager: per-output worst errors through ``numerics.compare``, as a table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aitune_triton.export.onnx_check import OnnxCheck, compare_outputs
from aitune_triton.spec import Sample, record_spec


def _spec_with(outputs):
    samples = [Sample((torch.zeros(2, 3),), {})]
    return record_spec(nn.Identity(), samples, [outputs])


def test_compare_outputs_reports_per_output_errors():
    spec = _spec_with({"score": torch.zeros(2, 3), "label": torch.zeros(2, dtype=torch.int64)})
    eager = [np.array([[1.0, 2.0, 0.0], [np.nan, 4.0, 5.0]], np.float32), np.array([3, 4])]
    same = [e.copy() for e in eager]
    tampered = [eager[0] + np.float32(0.5), np.array([3, 5])]
    check = compare_outputs(spec, [("sample 0", eager, same), ("profile 0 max", eager, tampered)])
    assert isinstance(check, OnnxCheck) and not check.ok
    score, label = check.outputs
    assert (score.name, label.name) == ("score", "label")
    assert score.max_abs_err == pytest.approx(0.5) and score.max_rel_err == pytest.approx(0.5 / 1e-4)
    assert not score.ok and score.worst_case == "profile 0 max" and (score.atol, score.rtol) == (1e-4, 1e-3)
    assert label.max_abs_err == 1.0 and label.max_rel_err == pytest.approx(0.25) and not label.ok
    table = check.table()
    assert table.splitlines()[1].split()[:3] == ["score", "0.5", "5e+03"] and table.count("FAIL") == 2
    assert OnnxCheck.from_dict(check.to_dict()) == check


def test_compare_outputs_nan_shape_and_dtype():
    spec = _spec_with(torch.zeros(2, 3))
    eager = [np.array([np.nan, 1.0], np.float32)]
    assert compare_outputs(spec, [("a", eager, [np.array([np.nan, 1.00001], np.float32)])]).ok
    nan_only_onnx = compare_outputs(spec, [("a", [np.ones(2, np.float32)], [np.array([np.nan, 1.0], np.float32)])])
    assert not nan_only_onnx.ok and nan_only_onnx.outputs[0].max_abs_err == np.inf
    shape = compare_outputs(spec, [("a", [np.ones(2, np.float32)], [np.ones(3, np.float32)])])
    assert not shape.ok and "shape" in shape.outputs[0].note
    dtype = compare_outputs(spec, [("a", [np.ones(2, np.float32)], [np.ones(2, np.float64)])])
    assert not dtype.ok and "dtype" in dtype.outputs[0].note
    assert compare_outputs(spec, [("a", [np.ones(2, np.float32)], [np.ones(2, np.float64)])],
                           strict_dtypes=False).ok
