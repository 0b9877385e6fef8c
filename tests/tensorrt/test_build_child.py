"""The build child's pipeline (Polygraphy loaders and tensorrt faked) and its plan replacement."""

import sys

import pytest
from polygraphy.backend.trt import CreateConfig

from aitune_triton.errors import ModelError
from aitune_triton.tensorrt import build_child
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    TensorRTBackendConfig,
)


@pytest.fixture
def fake_pipeline(monkeypatch, fake_trt, fake_engine):
    """``fake_pipeline(outputs)``: fake tensorrt + Polygraphy loaders that record what build_in_process
    hands them; returns (the fake tensorrt module, what was seen)."""
    return lambda outputs=(("output_0", "FLOAT", (-1, 5)),): _install(monkeypatch, fake_trt, fake_engine, outputs)


def _install(monkeypatch, fake_trt, fake_engine, outputs):
    import polygraphy.backend.trt as ptrt

    fake = fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    seen = {}

    def network_from_onnx_path(path, strongly_typed=None):
        seen["network"] = (path, strongly_typed)
        return lambda: "parsed network"

    def engine_bytes_from_network(network, config, save_timing_cache=None):
        seen["engine"] = (network, config, save_timing_cache)
        return lambda: b"PLAN-BYTES"

    def engine_from_bytes(data):
        seen["plan_bytes"] = data
        tensors = {"image": ("INPUT", "FLOAT", (-1, 3, 16, 16)), "scale": ("INPUT", "FLOAT", (-1, 1))}
        tensors.update({name: ("OUTPUT", dtype, shape) for name, dtype, shape in outputs})
        prof = {"image": [(1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16)], "scale": [(1, 1), (1, 1), (8, 1)]}
        engine = fake_engine(fake, tensors, [prof])
        engine.hardware_compatibility_level = fake.HardwareCompatibilityLevel.AMPERE_PLUS
        return lambda: engine

    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", network_from_onnx_path)
    monkeypatch.setattr(ptrt, "EngineBytesFromNetwork", engine_bytes_from_network)
    monkeypatch.setattr(ptrt, "EngineFromBytes", engine_from_bytes)
    monkeypatch.setattr(build_child, "gpu_facts", lambda: {"gpu_name": "Fake GPU", "compute_capability": "8.6",
                                                        "cuda_driver_version": "12.8", "cuda_runtime_version": "12.8"})
    return fake, seen


def test_build_in_process_pipeline(fake_pipeline, single, tmp_path):
    fake, seen = fake_pipeline()
    cache = tmp_path / "caches" / "tc.bin"
    cfg = TensorRTBackendConfig(quantization_config=ONNXAutoCastConfig(), workspace_size=1 << 30,
                                compatibility_level="ampere_plus", timing_cache=cache)
    plan = tmp_path / "1" / "model.plan"
    art = build_child.build_in_process(tmp_path / "model.onnx", plan, cfg, single)
    assert seen["network"] == (str(tmp_path / "model.onnx"), True)
    network, config, save_cache = seen["engine"]
    assert network == "parsed network" and save_cache == str(cache) and cache.parent.is_dir()
    assert isinstance(config, CreateConfig) and config.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 1 << 30}
    assert config.hardware_compatibility_level is fake.HardwareCompatibilityLevel.AMPERE_PLUS and not config.fp16
    assert plan.read_bytes() == b"PLAN-BYTES" == seen["plan_bytes"] and list(plan.parent.iterdir()) == [plan]
    assert [t.name for t in art.engine_io.outputs] == ["output_0"] and art.engine_io.num_profiles == 1
    stamp = art.stamp
    assert (stamp.tensorrt_version, stamp.gpu_name, stamp.compute_capability) == ("10.9.0", "Fake GPU", "8.6")
    assert art.stamp.hardware_compatibility_level == "ampere_plus" and art.stamp.strongly_typed
    assert art.config_key == cfg.key()


def test_build_in_process_keeps_the_old_plan_when_the_new_one_is_unservable(fake_pipeline, single, tmp_path):
    fake_pipeline(outputs=(("output_0", "FP8", (-1, 5)),))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"OLD")
    with pytest.raises(ModelError, match="FP8"):
        build_child.build_in_process(tmp_path / "model.onnx", plan, TensorRTBackendConfig(), single)
    assert plan.read_bytes() == b"OLD" and list(tmp_path.iterdir()) == [plan]


def test_build_turns_tensorrts_own_failure_into_one_line(fake_pipeline, monkeypatch, single, tmp_path, capsys):
    import polygraphy.backend.trt as ptrt

    fake_pipeline()

    def network_from_onnx_path(path, strongly_typed=None):
        raise RuntimeError("Invalid Engine.\nsecond line")

    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", network_from_onnx_path)
    request = build_child.BuildRequest(tmp_path / "model.onnx", tmp_path / "model.plan", TensorRTBackendConfig(),
                                       single)
    with pytest.raises(ModelError, match=r"^TensorRT parse stage failed: Invalid Engine\.$"):
        build_child.build(request)
    assert "RuntimeError: Invalid Engine." in capsys.readouterr().err  # the traceback goes to the build log
