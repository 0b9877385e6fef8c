"""TensorRT builder settings as data (``create_config_kwargs``, option by option) and Polygraphy's
``CreateConfig`` made from them, checked without TensorRT (enums against a fake module)."""

import sys

import pytest
from polygraphy.backend.trt import CreateConfig

from aitune_triton.errors import ModelError
from aitune_triton.tensorrt import settings
from aitune_triton.tensorrt.availability import TensorRTUnavailable
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
)
from aitune_triton.tensorrt.settings import TrtSymbol, create_config, create_config_kwargs, resolve_symbols


def _plain(profiles):
    """Polygraphy profiles as comparable data (ShapeTuple has no __eq__)."""
    return [{name: tuple(tuple(s) for s in shapes) for name, shapes in p.items()} for p in profiles]



def test_default_kwargs(single):
    kw = create_config_kwargs(TensorRTBackendConfig(), single)
    assert set(kw) == {"profiles", "tf32", "fp16", "bf16", "int8", "fp8"}
    assert kw["tf32"] is True and not any(kw[f] for f in ("fp16", "bf16", "int8", "fp8"))
    assert _plain(kw["profiles"]) == _plain(settings.polygraphy_profiles(single))


@pytest.mark.parametrize("cfg, expected", [
    (TensorRTBackendConfig(enable_tf32=False), {"tf32": False}),
    (TensorRTBackendConfig(enable_tf32=False, precision="tf32"), {}),  # precision tf32 keeps TF32 on
    (TensorRTBackendConfig(precision="fp16"), {"fp16": True}),
    (TensorRTBackendConfig(precision="bf16"), {"bf16": True}),
    (TensorRTBackendConfig(precision="int8"), {"int8": True}),
    (TensorRTBackendConfig(precision="fp8"), {"fp8": True}),
    (TensorRTBackendConfig(workspace_size=1 << 30),
     {"memory_pool_limits": {TrtSymbol("MemoryPoolType", "WORKSPACE"): 1 << 30}}),
    (TensorRTBackendConfig(optimization_level=5), {"builder_optimization_level": 5}),
    (TensorRTBackendConfig(optimization_level=0), {"builder_optimization_level": 0}),
    (TensorRTBackendConfig(compatibility_level="ampere_plus"),
     {"hardware_compatibility_level": TrtSymbol("HardwareCompatibilityLevel", "AMPERE_PLUS")}),
    (TensorRTBackendConfig(compatibility_level="same_compute_capability"),
     {"hardware_compatibility_level": TrtSymbol("HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY")}),
    (TensorRTBackendConfig(version_compatible=True), {"version_compatible": True}),
    # strongly typed: the graph carries the precision, no builder precision flag
    (TensorRTBackendConfig(quantization_config=ONNXAutoCastConfig()), {}),
    (TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig(precision="fp8")), {}),
    # weakly typed Q/DQ from torch quantization: the matching flag
    (TensorRTBackendConfig(quantization_config=TorchQuantizationConfig()), {"int8": True}),
    (TensorRTBackendConfig(quantization_config=TorchQuantizationConfig("FP8_DEFAULT_CFG")), {"fp8": True}),
])
def test_kwargs_per_option(single, cfg, expected):
    kw = create_config_kwargs(cfg, single)
    defaults = create_config_kwargs(TensorRTBackendConfig(), single)
    changed = {k: v for k, v in kw.items() if k != "profiles" and defaults.get(k, "absent") != v}
    assert changed == expected


def test_timing_cache_loaded_only_when_present(single, tmp_path):
    cache = tmp_path / "caches" / "tc.bin"
    cfg = TensorRTBackendConfig(timing_cache=cache)
    assert "load_timing_cache" not in create_config_kwargs(cfg, single)
    assert settings.timing_cache_save_path(cfg) == str(cache)
    cache.parent.mkdir()
    cache.write_bytes(b"cache")
    assert create_config_kwargs(cfg, single)["load_timing_cache"] == str(cache)
    assert settings.timing_cache_save_path(TensorRTBackendConfig()) is None


def test_kwargs_are_inspectable_without_tensorrt(single):
    kw = create_config_kwargs(TensorRTBackendConfig(workspace_size=1 << 20, compatibility_level="ampere_plus"),
                              single)
    assert str(kw["hardware_compatibility_level"]) == "trt.HardwareCompatibilityLevel.AMPERE_PLUS"
    assert settings._has_symbols(kw)
    assert not settings._has_symbols(create_config_kwargs(TensorRTBackendConfig(), single))


def test_create_config_without_enums_needs_no_tensorrt(single, tmp_path):
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"x")
    cfg = TensorRTBackendConfig(precision="bf16", optimization_level=2, version_compatible=True, timing_cache=cache)
    loader = create_config(cfg, single)
    assert isinstance(loader, CreateConfig)
    assert (loader.tf32, loader.bf16, loader.fp16, loader.int8, loader.fp8) == (True, True, False, False, False)
    assert loader.builder_optimization_level == 2 and loader.version_compatible is True
    assert loader.timing_cache_path == str(cache) and loader.memory_pool_limits is None
    assert _plain(loader.profiles) == _plain(settings.polygraphy_profiles(single))


@pytest.mark.usefixtures("no_tensorrt")
def test_create_config_with_enums_says_tensorrt_is_missing(single):
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        create_config(TensorRTBackendConfig(workspace_size=1 << 30), single)


def test_create_config_resolves_enums(single, monkeypatch, fake_trt):
    fake = fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    loader = create_config(TensorRTBackendConfig(workspace_size=3 << 29, compatibility_level="ampere_plus"), single)
    assert loader.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 3 << 29}
    assert loader.hardware_compatibility_level is fake.HardwareCompatibilityLevel.AMPERE_PLUS


def test_same_compute_capability_needs_tensorrt_10_9(single, monkeypatch, fake_trt):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("10.8.0", same_cc=False))
    with pytest.raises(ModelError, match=r"needs TensorRT >= 10\.9"):
        create_config(TensorRTBackendConfig(compatibility_level="same_compute_capability"), single)


def test_resolve_symbols(fake_trt):
    fake = fake_trt()
    value = {"pools": {TrtSymbol("MemoryPoolType", "WORKSPACE"): 5}, "list": [TrtSymbol("TensorIOMode", "INPUT")],
             "plain": 3}
    assert resolve_symbols(value, fake) == {"pools": {fake.MemoryPoolType.WORKSPACE: 5},
                                            "list": [fake.TensorIOMode.INPUT], "plain": 3}
    with pytest.raises(ModelError, match="has no MemoryPoolType.NOPE"):
        resolve_symbols(TrtSymbol("MemoryPoolType", "NOPE"), fake)


