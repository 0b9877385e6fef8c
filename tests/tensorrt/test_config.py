"""The seed API's TensorRTBackendConfig and quantization configs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
    quantization_from_dict,
    quantization_to_dict,
)
from aitune_triton.profile_set import ProfileMode, TensorRTProfile


def _custom_profiles():
    return [TensorRTProfile().add_input_shape("x", (1, 64), (4, 64), (32, 64)),
            TensorRTProfile().add_input_shape("x", (1, 64), (32, 64), (32, 64))
            .add_input_shape("mask", (1, 8), (32, 8), (32, 8))]


def test_defaults_match_the_seed():
    c = TensorRTBackendConfig()
    seed = dict(use_dynamo=True, workspace_size=None, opset_version=None, optimization_level=None,
                compatibility_level=None, timing_cache=None, profiles=ProfileMode.SINGLE, device="cuda",
                quantization_config=None, enable_tf32=True, use_cuda_graphs=False)
    assert {k: getattr(c, k) for k in seed} == seed
    # extensions beyond the seed keep the seed's behaviour by default
    assert (c.version_compatible, c.precision, c.build_timeout_s) == (False, "fp32", 3600.0)
    assert not c.strongly_typed and c.effective_precision == "fp32"


def test_describe_lists_only_changed_fields():
    assert TensorRTBackendConfig().describe() == ""
    desc = TensorRTBackendConfig(precision="bf16", use_cuda_graphs=True).describe()
    assert sorted(desc.split(",")) == ["precision=bf16", "use_cuda_graphs=True"]
    assert TensorRTBackendConfig(workspace_size=1 << 30).describe() == "workspace_size=1073741824"


@pytest.mark.parametrize("change", [
    {"use_dynamo": False}, {"workspace_size": 1 << 30}, {"opset_version": 17}, {"optimization_level": 5},
    {"compatibility_level": "ampere_plus"}, {"timing_cache": Path("/tmp/tc.bin")},
    {"profiles": ProfileMode.SAMPLES_USED}, {"device": "cuda:1"}, {"quantization_config": ONNXAutoCastConfig()},
    {"enable_tf32": False}, {"use_cuda_graphs": True}, {"version_compatible": True}, {"precision": "fp16"},
    {"build_timeout_s": 60.0},
])
def test_key_differs_when_a_field_changes(change):
    base = TensorRTBackendConfig()
    assert base.key() == TensorRTBackendConfig().key()
    assert base.replace(**change).key() != base.key()


def test_key_is_stable_across_processes():
    cfg = TensorRTBackendConfig(enable_tf32=False, profiles=_custom_profiles(),
                                quantization_config=ONNXQuantizationConfig(nodes_to_exclude=("a", "b")))
    code = ("import json, sys; from aitune_triton.tensorrt.config import TensorRTBackendConfig as C; "
            "print(C.from_dict(json.loads(sys.argv[1])).key())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict())], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == cfg.key()


@pytest.mark.parametrize("cfg", [
    TensorRTBackendConfig(),
    TensorRTBackendConfig(profiles=_custom_profiles(), workspace_size=1 << 30, timing_cache=Path("/x/tc.bin"),
                          compatibility_level="same_compute_capability", version_compatible=True),
    TensorRTBackendConfig(quantization_config=ONNXAutoCastConfig(precision="bf16", nodes_to_exclude=("n1",))),
    TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig(precision="fp8", calibration_method="entropy")),
    TensorRTBackendConfig(quantization_config=TorchQuantizationConfig("FP8_DEFAULT_CFG", calibration_steps=3)),
    TensorRTBackendConfig(profiles=ProfileMode.SAMPLES_USED, precision="int8", enable_tf32=False),
])
def test_to_dict_from_dict_round_trip(cfg):
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON
    back = TensorRTBackendConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and back.key() == cfg.key()


def test_to_json(tmp_path):
    cfg = TensorRTBackendConfig(profiles=_custom_profiles(), quantization_config=ONNXAutoCastConfig())
    cfg.to_json(tmp_path / "trt.json")
    assert TensorRTBackendConfig.from_dict(json.loads((tmp_path / "trt.json").read_text())) == cfg


def test_custom_profiles_survive_as_tensorrt_profiles():
    back = TensorRTBackendConfig.from_dict(TensorRTBackendConfig(profiles=_custom_profiles()).to_dict())
    assert isinstance(back.profiles, tuple) and all(isinstance(p, TensorRTProfile) for p in back.profiles)
    assert back.profiles[1].shapes("mask") == ((1, 8), (32, 8), (32, 8))


def test_string_and_list_coercion():
    cfg = TensorRTBackendConfig(profiles="samples_used", timing_cache="/tmp/tc.bin")
    assert cfg.profiles is ProfileMode.SAMPLES_USED and cfg.timing_cache == Path("/tmp/tc.bin")
    assert isinstance(TensorRTBackendConfig(profiles=_custom_profiles()).profiles, tuple)


@pytest.mark.parametrize("kwargs, words", [
    ({"workspace_size": 0}, "workspace_size"),
    ({"optimization_level": 6}, "optimization_level"),
    ({"compatibility_level": "ampere"}, "compatibility_level"),
    ({"opset_version": 8}, "opset_version"),
    ({"precision": "int4"}, "precision"),
    ({"profiles": [object()]}, "profiles"),
    ({"profiles": "all"}, "profiles must be 'single' or 'samples_used'"),
])
def test_invalid_values(kwargs, words):
    with pytest.raises(UserError, match=words):
        TensorRTBackendConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(UserError, match="unknown TensorRTBackendConfig field"):
        TensorRTBackendConfig.from_dict({"workspace": 1})


def test_quantization_configs():
    with pytest.raises(UserError, match="ONNXAutoCastConfig.precision must be 'fp16' or 'bf16', got 'int8'"):
        ONNXAutoCastConfig(precision="int8")
    with pytest.raises(UserError, match="ONNXQuantizationConfig.precision must be int8, fp8, fp16 or int4, got 'bf16'"):
        ONNXQuantizationConfig(precision="bf16")
    for q in (ONNXAutoCastConfig(), ONNXQuantizationConfig(nodes_to_exclude=("a",)), TorchQuantizationConfig()):
        assert quantization_from_dict(json.loads(json.dumps(quantization_to_dict(q)))) == q
    assert quantization_to_dict(None) is None and quantization_from_dict(None) is None
    with pytest.raises(UserError, match="unknown quantization config type"):
        quantization_from_dict({"type": "Nope"})


@pytest.mark.parametrize("q, strongly, precision", [
    (None, False, "fp32"),
    (ONNXAutoCastConfig(), True, "fp16"),
    (ONNXAutoCastConfig(precision="bf16"), True, "bf16"),
    (ONNXQuantizationConfig(), True, "int8"),
    (ONNXQuantizationConfig(precision="fp8"), True, "fp8"),
    (TorchQuantizationConfig(), False, "int8"),
    (TorchQuantizationConfig("FP8_DEFAULT_CFG"), False, "fp8"),
])
def test_strong_typing_and_effective_precision(q, strongly, precision):
    cfg = TensorRTBackendConfig(quantization_config=q)
    assert cfg.strongly_typed is strongly and cfg.effective_precision == precision
