"""The plan check's tolerance per precision, its record, and its runner on the fake tensorrt's engine."""

import numpy as np
import pytest

from aitune_triton.errors import ModelError
from aitune_triton.numerics import Tolerance, ToleranceOverride
from aitune_triton.tensorrt.config import ONNXQuantizationConfig, TensorRTBackendConfig
from aitune_triton.tensorrt.plan_check import OutputCheck, PlanCheck, PlanRunner, plan_tolerances

DTYPES = {"logits": "float32", "index": "int64"}
EAGER = [{"logits": np.array([[-4.0, 2.0]], np.float32), "index": np.array([1])},
         {"logits": np.array([[1.0, 0.5]], np.float32), "index": np.array([0])}]


@pytest.mark.parametrize("config, rule, atol, rtol", [
    (TensorRTBackendConfig(enable_tf32=False), "fp32: the per-dtype tolerances", 1e-4, 1e-3),
    (TensorRTBackendConfig(), "tf32 (as fp16): atol = 0.01 x peak |eager output|, rtol = 0.01", 0.04, 0.01),
    (TensorRTBackendConfig(precision="bf16"), "bf16: atol = 0.05 x peak |eager output|, rtol = 0.05", 0.2, 0.05),
    (TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig()),
     "int8: atol = 0.1 x peak |eager output|, rtol = 0.1", 0.4, 0.1),
])
def test_plan_tolerances_follow_the_plans_precision(config, rule, atol, rtol):
    tolerances, said = plan_tolerances(DTYPES, EAGER, config, None)
    assert said == rule and list(tolerances) == ["logits"]  # int64 is compared exactly
    assert tolerances["logits"].atol == pytest.approx(atol) and tolerances["logits"].rtol == rtol


def test_a_configured_tolerance_wins():
    override = ToleranceOverride(0.5, 0.0)
    tolerances, said = plan_tolerances(DTYPES, EAGER, TensorRTBackendConfig(precision="fp16"), override)
    assert tolerances == {"logits": Tolerance(0.5, 0.0)}
    assert said == "the configured tolerance (atol=0.5, rtol=0, rel_l2 per dtype)"


def test_the_check_record_round_trips_and_reads_as_one_line():
    check = PlanCheck(False, 2, "fp16: ...", (OutputCheck("a", True, 0.001, 0.01, 0.01, 0.01),
                                               OutputCheck("b", False, 0.5, 1.0, 0.01, 0.01, "2/4 elements outside")))
    assert PlanCheck.from_dict(check.to_dict()) == check
    assert check.summary() == "2 sample(s): b outside fp16: ... (2/4 elements outside)"
    ok = PlanCheck(True, 2, "fp32", check.outputs[:1])
    assert ok.summary() == "2 sample(s), 1 output(s) within fp32 (worst error 0.1 of atol)"


def _fake_engine(fake_tensorrt_installed, tmp_path, profiles):
    """A plan the fake builds from a two-input ONNX graph (x + y), deserialized by TensorRT's runtime API."""
    import onnx
    from onnx import TensorProto, helper

    import tensorrt as trt

    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 2]) for n in ("x", "y")],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 2])])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    config = builder.create_builder_config()
    for lo, hi in profiles:
        profile = builder.create_optimization_profile()
        for name in ("x", "y"):
            profile.set_shape(name, (lo, 2), (lo, 2), (hi, 2))
        config.add_optimization_profile(profile)
    return trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))


def test_the_runner_picks_the_profile_that_holds_the_shapes(fake_tensorrt_installed, tmp_path):
    engine = _fake_engine(fake_tensorrt_installed, tmp_path, [(1, 2), (3, 8)])
    x, y = np.ones((5, 2), np.float32), np.arange(10, dtype=np.float32).reshape(5, 2)
    with PlanRunner(engine) as runner:
        assert runner._profile_for({"x": x, "y": y}) == 1
        out = runner.infer({"x": x, "y": y})
        assert np.array_equal(out["z"], x + y) and runner.context.active_optimization_profile == 1
        with pytest.raises(ModelError, match=r"fit none of the plan's 2 optimization profile\(s\)"):
            runner.infer({"x": np.ones((9, 2), np.float32), "y": np.ones((9, 2), np.float32)})
