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
    assert tolerance_for("float32", TOL) == TOL and tolerance_for("int32", TOL) == EXACT
    assert tolerance_for("float16", TOL) == Tolerance(TOL.atol, TOL.rtol, DEFAULT_TOLERANCES["float16"].rel_l2)
    assert Tolerance(1e-4, 1e-3).to_dict() == {"atol": 1e-4, "rtol": 1e-3}


def test_module_imports_numpy_only():
    code = "import sys, aitune_triton.numerics; print(sorted(m for m in ('torch', 'polygraphy') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- half precision, deep networks


class DeepResidualMLP(torch.nn.Module):
    """A deep pre-norm residual stack (a transformer's shape without attention) whose head scales its
    logits up, as a randomly initialised ResNet-50's are: float16 rounding accumulates over 32 blocks
    and the large logits put absolute errors of ~0.05 next to values near zero."""

    def __init__(self, depth: int = 32, width: int = 128, gain: float = 20.0):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                torch.nn.Linear(2 * width, width)) for _ in range(depth))
        self.head = torch.nn.Linear(width, 64)
        with torch.no_grad():
            self.head.weight.mul_(gain)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def deep_outputs():
    """(float32 reference, float16 run, bfloat16 run) of the same weights and inputs, on the CPU."""
    torch.manual_seed(0)
    model = DeepResidualMLP().eval()
    x = torch.randn(8, 128)
    with torch.inference_mode():
        reference = model(x)
        half = model.half()(x.half())
        bf16 = model.float().bfloat16()(x.bfloat16())
    return reference, half, bf16


@pytest.mark.parametrize("which, dtype", [(1, "float16"), (2, "bfloat16")])
def test_a_healthy_deep_half_precision_network_passes_on_its_relative_l2_error(deep_outputs, which, dtype):
    reference, run = deep_outputs[0], deep_outputs[which]
    tol = tolerance_for(dtype)
    per_element = compare(run, reference, Tolerance(tol.atol, tol.rtol))
    assert not per_element.ok and per_element.bad > 0  # the per-element rule alone refuses a healthy network
    c = compare(run, reference, tol)
    assert c.ok and c.reason is None and c.bad == per_element.bad
    assert 0 < c.rel_l2 < tol.rel_l2 / 2  # with a margin: ~1.5e-3 (float16), ~1e-2 (bfloat16)


@pytest.mark.parametrize("which, dtype", [(1, "float16"), (2, "bfloat16")])
def test_a_wrong_half_precision_export_is_still_caught(deep_outputs, which, dtype):
    reference, run = deep_outputs[0], deep_outputs[which]
    tol = tolerance_for(dtype)
    flipped = compare(-run, reference, tol)  # a sign flip in the one output
    assert not flipped.ok and flipped.rel_l2 == pytest.approx(2.0, rel=0.01)
    assert flipped.reason.startswith("relative L2 error 2 > %g and " % tol.rel_l2)
    swapped = run.clone()
    swapped[3] = run[4]  # one row of the batch answered with another sample's result
    assert not compare(swapped, reference, tol).ok
    shuffled = run.flatten()[torch.randperm(run.numel(), generator=torch.Generator().manual_seed(0))].view_as(run)
    assert not compare(shuffled, reference, tol).ok


def test_float32_keeps_the_per_element_rule_and_overrides_keep_the_half_precision_statistic():
    assert DEFAULT_TOLERANCES["float32"].rel_l2 is None
    e = np.linspace(-50, 50, 101)
    a = e + 0.05  # relative L2 error 1.7e-3: fine for float16, not for float32 per element
    assert not compare(a, e, tolerance_for("float32")).ok
    assert compare(a.astype(np.float16), e.astype(np.float16), tolerance_for("float16")).ok
    user = Tolerance(1e-3, 1e-3)
    assert tolerance_for("float16", user) == Tolerance(1e-3, 1e-3, DEFAULT_TOLERANCES["float16"].rel_l2)
    assert tolerance_for("float32", user) == user
    assert tolerance_for("float16", Tolerance(0.0, 0.0, 0.5)).rel_l2 == 0.5
    assert tolerance_for("int64", user) == EXACT
    assert Tolerance(0.01, 0.01, 0.02).to_dict() == {"atol": 0.01, "rtol": 0.01, "rel_l2": 0.02}
    assert Tolerance(0.01, 0.01).to_dict() == {"atol": 0.01, "rtol": 0.01}


def test_relative_l2_of_zeros_and_non_finite_values():
    zeros = np.zeros(4, np.float16)
    assert compare(zeros, zeros, tolerance_for("float16")).rel_l2 == 0.0
    c = compare(np.full(4, 0.5, np.float16), zeros, tolerance_for("float16"))
    assert not c.ok and math.isinf(c.rel_l2)  # nothing to be relative to: the per-element rule decides
    big = np.array([60000.0, -60000.0, 1.0], np.float16)  # squares overflow float16 (and nearly float32)
    assert compare(big, big.copy(), tolerance_for("float16")).rel_l2 == 0.0
    assert not compare(np.array([np.inf, 1.0], np.float16), np.array([1.0, 1.0], np.float16),
                       tolerance_for("float16")).ok
