"""GenerateConfig validation of the fields probing and validate read (output_dims, input_ranges)."""
import pytest

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError


@pytest.mark.parametrize("field, value, match", [
    ("output_dims", {"boxes": (0, 4)}, "sizes >= 1 or -1"),
    ("output_dims", [(-1, 4)], "must be a dict"),
    ("input_ranges", {"lengths": (5, 1)}, "low <= high"),
    ("input_ranges", {"lengths": 3}, r"give \(low, high\)"),
])
def test_config_fields_are_validated(field, value, match):
    with pytest.raises(UserError, match=match):
        GenerateConfig(**{field: value})


def test_config_fields_round_trip():
    cfg = GenerateConfig(output_dims={"boxes": [-1, 4]}, input_ranges={"lengths": (1, 16)})
    assert cfg.output_dims == {"boxes": (-1, 4)} and cfg.input_ranges == {"lengths": (1.0, 16.0)}
    assert GenerateConfig.from_dict(cfg.to_dict()) == cfg


def test_replace_sets_none_and_skips_not_given():
    import copy
    import pickle

    from aitune_triton.not_given import NOT_GIVEN, NotGiven

    cfg = GenerateConfig(max_batch_size=8, max_queue_delay_us=100, strategy="min-latency")
    assert cfg.replace(max_batch_size=None).max_batch_size is None  # None is a value: derive from the samples
    assert cfg.replace(max_queue_delay_us=None).queue_delay_us == 500  # back to the default delay
    kept = cfg.replace(max_batch_size=NOT_GIVEN, strategy=NOT_GIVEN, instances=3)
    assert (kept.max_batch_size, kept.strategy, kept.instances) == (8, "min-latency", 3)
    assert repr(NOT_GIVEN) == "NOT_GIVEN" and not NOT_GIVEN and NotGiven() is NOT_GIVEN
    assert pickle.loads(pickle.dumps(NOT_GIVEN)) is NOT_GIVEN and copy.deepcopy(NOT_GIVEN) is NOT_GIVEN


@pytest.mark.parametrize("field, value, match", [
    ("backends", None, r"unknown backend\(s\) \(none\)"),
    ("tensorrt", None, "tensorrt must be a TensorRTBackendConfig"),
])
def test_none_where_a_value_is_required_is_a_user_error(field, value, match):
    with pytest.raises(UserError, match=match):
        GenerateConfig().replace(**{field: value})


def test_a_partial_tolerance_override_fills_the_missing_fields_from_each_dtypes_own_default():
    """Before: the half left out was float32's, so ``--atol 0.05`` alone judged a float16 output
    at rtol 1e-3 instead of its own 1e-2 (tightening half precision)."""
    from aitune_triton.numerics import DEFAULT_TOLERANCES, Tolerance, ToleranceOverride, tolerance_for

    assert GenerateConfig().tolerance_override is None
    assert GenerateConfig(atol=0.5).tolerance_override == ToleranceOverride(0.5, None, None)
    fp16, fp32 = DEFAULT_TOLERANCES["float16"], DEFAULT_TOLERANCES["float32"]
    assert tolerance_for("float16", GenerateConfig(atol=0.5).tolerance_override) == Tolerance(0.5, fp16.rtol,
                                                                                              fp16.rel_l2)
    assert tolerance_for("float32", GenerateConfig(atol=0.5).tolerance_override) == Tolerance(0.5, fp32.rtol)
    assert tolerance_for("float16", GenerateConfig(rtol=0.5).tolerance_override) == Tolerance(fp16.atol, 0.5,
                                                                                              fp16.rel_l2)
    assert tolerance_for("bfloat16", GenerateConfig(rel_l2=0.1).tolerance_override) == Tolerance(
        DEFAULT_TOLERANCES["bfloat16"].atol, DEFAULT_TOLERANCES["bfloat16"].rtol, 0.1)
    assert tolerance_for("int64", GenerateConfig(atol=0.5).tolerance_override).atol == 0.0


def test_axis_ranges_are_checked_and_round_trip_through_the_manifest_dict():
    cfg = GenerateConfig(axis_ranges={"input_ids": {1: (1, 512)}})
    assert cfg.axis_ranges == {"input_ids": {1: (1, 512)}}
    d = cfg.to_dict()
    assert d["axis_ranges"] == {"input_ids": {"1": [1, 512]}}  # JSON keys are strings
    assert GenerateConfig.from_dict(d).axis_ranges == {"input_ids": {1: (1, 512)}}
    for bad in ({"input_ids": {1: (0, 4)}}, {"input_ids": {1: (8, 4)}}, {"input_ids": {-1: (1, 4)}},
                {"input_ids": {1: (1.5, 4)}}, {"input_ids": (1, 4)}):
        with pytest.raises(UserError, match=r"axis_ranges\[.*give"):
            GenerateConfig(axis_ranges=bad)
    with pytest.raises(UserError, match=r"axis_ranges must be a dict of input name -> \{axis: \(min, max\)\}"):
        GenerateConfig(axis_ranges=[("input_ids", 1, 512)])


def test_portable_is_a_bool_and_excludes_a_forced_aoti():
    from aitune_triton import defaults

    assert GenerateConfig().portable is defaults.PORTABLE is False
    assert GenerateConfig(portable=True, fallback_format="export").portable
    with pytest.raises(UserError, match="portable must be True or False, got 'yes'"):
        GenerateConfig(portable="yes")
    with pytest.raises(UserError, match="portable and fallback_format 'aoti' contradict: an AOTInductor package is "
                                        "machine code for the host that compiles it"):
        GenerateConfig(portable=True, fallback_format="aoti")


def test_the_tensorrt_config_replace_skips_not_given_and_names_the_fields_of_an_unknown_one():
    """TensorRTBackendConfig.replace stored NOT_GIVEN (falsy: CUDA graphs off; an opset of
    NOT_GIVEN a TypeError) and an unknown field was dataclasses' TypeError."""
    from aitune_triton.not_given import NOT_GIVEN
    from aitune_triton.tensorrt.config import TensorRTBackendConfig

    trt = TensorRTBackendConfig(use_cuda_graphs=True, opset_version=17)
    kept = trt.replace(use_cuda_graphs=NOT_GIVEN, opset_version=NOT_GIVEN, precision="fp16")
    assert (kept.use_cuda_graphs, kept.opset_version, kept.precision) == (True, 17, "fp16")
    assert trt.replace(opset_version=None).opset_version is None
    with pytest.raises(UserError, match="unknown TensorRTBackendConfig field.s. bogus in the changes; the fields are: "
                                        ".*opset_version"):
        trt.replace(bogus=1)
    with pytest.raises(UserError, match="unknown GenerateConfig field.s. bogus in the changes; the fields are: name, "):
        GenerateConfig().replace(bogus=1)


@pytest.mark.parametrize("budget", [-1, 0, 0.0, float("nan"), float("inf"), "5", True])
def test_a_budget_is_a_finite_positive_latency_whatever_the_strategy(budget):
    """--budget-ms -1 was accepted without --strategy latency-budget (the batch measurement then
    stopped at "batch 1 takes 0.3 ms > --budget-ms -1 ms"), and 0 was taken as not given."""
    with pytest.raises(UserError, match="budget_ms .--budget-ms. must be a finite number of milliseconds > 0"):
        GenerateConfig(budget_ms=budget)
    assert GenerateConfig(budget_ms=2.5).budget_ms == 2.5 and GenerateConfig(budget_ms=3).budget_ms == 3
    with pytest.raises(UserError, match="strategy latency-budget needs budget_ms > 0"):
        GenerateConfig(strategy="latency-budget")
