"""``aitune_triton.numerics``: the one rule deciding whether an output matches its reference."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from aitune_triton.numerics import DEFAULT_TOLERANCES, EXACT, Comparison, Tolerance, compare, to_numpy, tolerance_for

TOL = Tolerance(atol=1e-3, rtol=1e-2)


def test_rule_is_atol_plus_rtol_times_expected():
    expected = np.array([0.0, 10.0, -10.0], np.float32)
    limit = TOL.atol + TOL.rtol * np.abs(expected)  # 0.001, 0.101, 0.101
    assert compare(expected + limit * 0.99, expected, TOL).ok
    outside = compare(expected + np.array([0.0, 0.11, 0.0], np.float32), expected, TOL)
    assert not outside.ok and outside.bad == 1 and outside.total == 3
    assert outside.max_abs == pytest.approx(0.11, rel=1e-5)
    assert outside.max_rel == pytest.approx(0.011, rel=1e-4)
    assert outside.bad_fraction == pytest.approx(1 / 3)


def test_max_rel_floors_expected_at_atol_so_zeros_do_not_blow_it_up():
    c = compare(np.array([5e-4]), np.array([0.0]), TOL)
    assert c.ok and c.max_rel == pytest.approx(0.5)


def test_nan_equals_nan_but_not_a_number():
    nan = np.array([1.0, np.nan], np.float32)
    assert compare(nan, nan.copy(), TOL).ok
    c = compare(np.array([1.0, 2.0], np.float32), nan, TOL)
    assert not c.ok and c.bad == 1 and math.isinf(c.max_abs)
    assert "1/2 elements outside atol=0.001 rtol=0.01" in c.reason and "at [1]" in c.reason


def test_integers_and_bools_are_exact_whatever_the_tolerance():
    big = Tolerance(10.0, 10.0)
    c = compare(np.array([1, 2, 4], np.int64), np.array([1, 2, 3], np.int64), big)
    assert not c.ok and c.bad == 1
    assert c.reason == "1/3 values differ (exact dtype int64), first at [2] (got 4, expected 3)"
    assert not compare(np.array([True]), np.array([False]), big).ok
    assert compare(np.array([7], np.int32), np.array([7], np.int32), EXACT).ok


def test_shape_difference_fails_and_reshape_lets_batch_by_1_meet_batch():
    served, eager = np.zeros((4, 1), np.float32), np.zeros(4, np.float32)
    c = compare(served, eager, TOL)
    assert not c.ok and c.reason == "shape [4, 1], expected [4]"
    assert compare(served, eager, TOL, reshape_same_size=True).ok
    assert not compare(np.zeros((4, 2)), np.zeros(4), TOL, reshape_same_size=True).ok  # sizes differ


def test_strict_dtype():
    a, e = np.ones(3, np.float16), np.ones(3, np.float32)
    assert compare(a, e, TOL).ok
    c = compare(a, e, TOL, strict_dtype=True)
    assert not c.ok and c.reason == "dtype float16, expected float32"


def test_empty_outputs_match():
    c = compare(np.zeros((0, 3)), np.zeros((0, 3)), TOL)
    assert c == Comparison(True, 0.0, 0.0, 0, 0, TOL)


def test_bf16_tensors_compare_as_exact_float32():
    t = torch.tensor([1.5, -2.25, 3.0e5], dtype=torch.bfloat16)
    arr = to_numpy(t)
    assert arr.dtype == np.float32 and arr.tolist() == t.float().tolist()
    assert compare(t, t.float() + 1e-3, DEFAULT_TOLERANCES["bfloat16"]).ok
    assert not compare(t, t.float() * 1.2, DEFAULT_TOLERANCES["bfloat16"]).ok


def test_to_numpy_copies_tensors_contiguously_and_passes_arrays():
    t = torch.arange(6.0, requires_grad=True).reshape(2, 3).t()
    arr = to_numpy(t)
    assert arr.flags["C_CONTIGUOUS"] and arr.tolist() == t.detach().tolist()
    given = np.arange(3)
    assert to_numpy(given) is given or np.shares_memory(to_numpy(given), given)


def test_a_scalar_stays_a_scalar_and_matches_a_scalar():
    """np.ascontiguousarray made eager's () a (1,), failing ONNX's () as a shape mismatch."""
    assert to_numpy(torch.tensor(1.5)).shape == ()
    assert compare(np.float32(1.5), torch.tensor(1.5), TOL).ok
    assert not compare(np.ones(1, np.float32), torch.tensor(1.0), TOL).ok  # the shape the model returns, exactly


def test_reason_names_the_worst_element():
    expected = np.zeros((2, 3), np.float32)
    actual = expected.copy()
    actual[0, 1], actual[1, 2] = 0.5, 2.0
    c = compare(actual, expected, TOL)
    assert c.reason == ("2/6 elements outside atol=0.001 rtol=0.01, max |diff| 2 at [1, 2] (got 2.0, expected 0.0)")


def test_tolerance_per_dtype_and_override_for_floats_only():
    assert tolerance_for("float32") == DEFAULT_TOLERANCES["float32"] == Tolerance(1e-4, 1e-3)
    assert tolerance_for("int64") == EXACT and tolerance_for("bool") == EXACT
    assert tolerance_for("float16", TOL) == TOL and tolerance_for("int32", TOL) == EXACT
    assert Tolerance(1e-4, 1e-3).to_dict() == {"atol": 1e-4, "rtol": 1e-3}


def test_module_imports_numpy_only():
    code = "import sys, aitune_triton.numerics; print(sorted(m for m in ('torch', 'polygraphy') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
