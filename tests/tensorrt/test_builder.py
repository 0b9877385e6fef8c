"""TensorRT builder settings, the trtexec line, the build script and the child-process build.

TensorRT itself is not installed where these tests usually run: the settings are checked as data
(``create_config_kwargs``), the TensorRT-facing code against small fakes that follow the
TensorRT 10 Python API, and the real build only under ``@pytest.mark.tensorrt``.
"""

import enum
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from polygraphy.backend.trt import CreateConfig
from torch import nn

from aitune_triton.errors import ModelError, UserError
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.tensorrt import build_child, builder, plan, settings, trtexec
from aitune_triton.tensorrt.availability import TensorRTUnavailable, import_tensorrt, tensorrt_status
from aitune_triton.tensorrt.builder import build_plan
from aitune_triton.tensorrt.plan import EngineIO, PlanArtifact, PlanStamp, deserialize, engine_io_of
from aitune_triton.tensorrt.settings import TrtSymbol, create_config, create_config_kwargs, resolve_symbols
from aitune_triton.tensorrt.trtexec import render_build_script, trtexec_command
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
)
from aitune_triton.tensorrt.profiles import ProfileMode, derive_profiles


def _plain(profiles):
    """Polygraphy profiles as comparable data (ShapeTuple has no __eq__)."""
    return [{name: tuple(tuple(s) for s in shapes) for name, shapes in p.items()} for p in profiles]


def _trt_import_error():
    try:
        import tensorrt
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    if getattr(tensorrt, "__file__", None) is None:  # a namespace package: only tensorrt-stubs
        return "only the TensorRT type stubs are installed"
    return None


TRT_MISSING = _trt_import_error()
needs_no_trt = pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is installed here")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, image, scale):
        return self.head(self.conv(image).mean((2, 3)) * scale)


@pytest.fixture(scope="module")
def recorded():
    torch.manual_seed(0)
    model = Net().eval()
    raw = [(torch.randn(b, 3, 16, 16), torch.rand(b, 1)) for b in (1, 4, 8)]
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outs = [model(*s.args) for s in samples]
    return model, record_spec(model, samples, outs), samples


@pytest.fixture(scope="module")
def single(recorded):
    _, spec, samples = recorded
    return derive_profiles(spec, samples, ProfileMode.SINGLE)


@pytest.fixture(scope="module")
def multi(recorded):
    _, spec, samples = recorded
    return derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)


# ---------------------------------------------------------------------------------------------
# create_config_kwargs, option by option
# ---------------------------------------------------------------------------------------------

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


@needs_no_trt
def test_create_config_with_enums_says_tensorrt_is_missing(single):
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        create_config(TensorRTBackendConfig(workspace_size=1 << 30), single)


def _fake_trt(version="10.9.0", same_cc=True, builder_class=True):
    """A stand-in for the tensorrt module with the enums the config needs (TensorRT 10 names)."""
    levels = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if same_cc else [])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    mod.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", levels)
    mod.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    mod.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8",
                                          "FP8", "INT4", "FP4"])
    if builder_class:
        mod.Builder = type("Builder", (), {})
    return mod


def test_create_config_resolves_enums(single, monkeypatch):
    fake = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    loader = create_config(TensorRTBackendConfig(workspace_size=3 << 29, compatibility_level="ampere_plus"), single)
    assert loader.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 3 << 29}
    assert loader.hardware_compatibility_level is fake.HardwareCompatibilityLevel.AMPERE_PLUS


def test_same_compute_capability_needs_tensorrt_10_9(single, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.8.0", same_cc=False))
    with pytest.raises(ModelError, match=r"needs TensorRT >= 10\.9"):
        create_config(TensorRTBackendConfig(compatibility_level="same_compute_capability"), single)


def test_resolve_symbols():
    fake = _fake_trt()
    value = {"pools": {TrtSymbol("MemoryPoolType", "WORKSPACE"): 5}, "list": [TrtSymbol("TensorIOMode", "INPUT")],
             "plain": 3}
    assert resolve_symbols(value, fake) == {"pools": {fake.MemoryPoolType.WORKSPACE: 5},
                                            "list": [fake.TensorIOMode.INPUT], "plain": 3}
    with pytest.raises(ModelError, match="has no MemoryPoolType.NOPE"):
        resolve_symbols(TrtSymbol("MemoryPoolType", "NOPE"), fake)


@pytest.mark.parametrize("fake, available, words", [
    (_fake_trt("10.3.0"), True, "10.3.0"),
    (_fake_trt("8.6.1"), False, "too old"),
    (_fake_trt("10.3.0", builder_class=False), False, "no Builder"),
])
def test_tensorrt_status_with_fakes(monkeypatch, fake, available, words):
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    status = tensorrt_status()
    assert status.available is available and status.version == fake.__version__ and words in status.reason


@needs_no_trt
def test_tensorrt_status_unavailable_here():
    status = tensorrt_status()
    assert not status.available and status.version is None
    assert "TensorRT is not installed" in status.reason and "aitune-triton[tensorrt]" in status.reason


# ---------------------------------------------------------------------------------------------
# trtexec: the same settings as create_config
# ---------------------------------------------------------------------------------------------

def _parse_trtexec(args):
    """trtexec's own reading of the line (samples/common/sampleOptions.cpp, TensorRT 10.x)."""
    assert args[0] == "trtexec"
    flags = [a.split("=", 1) + [None] * ("=" not in a) for a in args[1:]]
    keys = [k for k, _ in flags]
    out = {"profiles": [], "tf32": "--noTF32" not in keys, "strongly_typed": "--stronglyTyped" in keys}
    for flag in ("fp16", "bf16", "int8", "fp8"):
        out[flag] = "--" + flag in keys

    def shapes(spec):
        return {name: tuple(int(d) for d in dims.split("x")) for name, dims in (s.split(":") for s in spec.split(","))}

    def group(at):
        # each --profile is followed directly by its min/opt/max (trtexec reads the next positions)
        got = dict(flags[at:at + 3])
        assert set(got) == {"--minShapes", "--optShapes", "--maxShapes"}, flags[at:at + 3]
        mins, opts, maxs = (shapes(got[k]) for k in ("--minShapes", "--optShapes", "--maxShapes"))
        return {n: (mins[n], opts[n], maxs[n]) for n in mins}

    if "--profile" in keys:
        for i, (k, v) in enumerate(flags):
            if k == "--profile":
                assert int(v) == len(out["profiles"])
                out["profiles"].append(group(i + 1))
        assert keys.count("--minShapes") == len(out["profiles"])
    else:
        assert keys.count("--minShapes") == 1
        out["profiles"].append(group(keys.index("--minShapes")))
    for k, v in flags:
        if k == "--memPoolSize":
            pool, size = v.split(":")
            assert pool == "workspace" and size[-1].isdigit()  # MiB, no unit suffix
            out["workspace"] = round(float(size) * (1 << 20))
        elif k == "--builderOptimizationLevel":
            out["builder_optimization_level"] = int(v)
        elif k == "--hardwareCompatibilityLevel":
            out["hardware"] = v
        elif k in ("--versionCompatible", "--vc"):
            out["version_compatible"] = True
        elif k == "--timingCacheFile":
            out["timing_cache"] = v
        elif k == "--onnx":
            out["onnx"] = v
        elif k == "--saveEngine":
            out["plan"] = v
    assert "--skipInference" in keys
    assert not (out["int8"] and out["fp8"])  # trtexec rejects both
    return out


def _expected(cfg, profile_set, onnx, plan):
    kw = create_config_kwargs(cfg, profile_set)
    exp = {"profiles": _plain(kw["profiles"]),
           "tf32": kw["tf32"], "strongly_typed": cfg.strongly_typed, "onnx": str(onnx), "plan": str(plan)}
    exp.update({f: kw[f] for f in ("fp16", "bf16", "int8", "fp8")})
    if "memory_pool_limits" in kw:
        exp["workspace"] = kw["memory_pool_limits"][TrtSymbol("MemoryPoolType", "WORKSPACE")]
    if "builder_optimization_level" in kw:
        exp["builder_optimization_level"] = kw["builder_optimization_level"]
    if "hardware_compatibility_level" in kw:
        exp["hardware"] = {"AMPERE_PLUS": "ampere+", "SAME_COMPUTE_CAPABILITY": "sameComputeCapability"}[
            kw["hardware_compatibility_level"].member]
    if kw.get("version_compatible"):
        exp["version_compatible"] = True
    if cfg.timing_cache is not None:
        exp["timing_cache"] = str(cfg.timing_cache)
    return exp


CONFIGS = [
    TensorRTBackendConfig(),
    TensorRTBackendConfig(precision="fp16", enable_tf32=False, workspace_size=1 << 30),
    TensorRTBackendConfig(precision="bf16", optimization_level=5, compatibility_level="ampere_plus"),
    TensorRTBackendConfig(precision="int8", version_compatible=True, timing_cache=Path("/caches/tc.bin")),
    TensorRTBackendConfig(compatibility_level="same_compute_capability", workspace_size=(1 << 20) + 512),
    TensorRTBackendConfig(quantization_config=ONNXAutoCastConfig(), optimization_level=1),
    TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig(precision="fp8"), enable_tf32=False),
    TensorRTBackendConfig(quantization_config=TorchQuantizationConfig("FP8_DEFAULT_CFG")),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe() or "defaults")
@pytest.mark.parametrize("profiles", ["single", "multi"])
def test_trtexec_line_matches_create_config(cfg, profiles, request):
    profile_set = request.getfixturevalue(profiles)
    args = trtexec_command(Path("/m/model.onnx"), Path("/m/1/model.plan"), cfg, profile_set)
    assert _parse_trtexec(args) == _expected(cfg, profile_set, "/m/model.onnx", "/m/1/model.plan")
    assert ("--profile=0" in args) is (len(profile_set.profiles) > 1)


def test_trtexec_shapes_spelling(single):
    args = trtexec_command("model.onnx", "model.plan", TensorRTBackendConfig(workspace_size=1536 << 20), single)
    assert "--minShapes=image:1x3x16x16,scale:1x1" in args
    assert "--maxShapes=image:8x3x16x16,scale:8x1" in args
    assert "--memPoolSize=workspace:1536" in args
    assert args[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert trtexec._mib((1 << 20) + (1 << 19)) == "1.5" and trtexec._dims(()) == "scalar"


# ---------------------------------------------------------------------------------------------
# build_plan.sh
# ---------------------------------------------------------------------------------------------

def _fake_trtexec(directory: Path) -> Path:
    """Records its arguments one per line (NUL-safe enough for the values used here)."""
    exe = directory / "fake-trtexec"
    exe.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > \"$RECORD\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _script(tmp_path, cfg, profile_set, onnx="model.onnx", plan="model.plan", name="net_trt"):
    text = render_build_script(onnx_path=Path(onnx), plan_path=Path(plan), trt_config=cfg, profile_set=profile_set,
                               model_name=name)
    path = tmp_path / "build_plan.sh"
    path.write_text(text)
    path.chmod(0o755)
    return path, text


@pytest.mark.parametrize("cfg", CONFIGS[:5], ids=lambda c: c.describe() or "defaults")
def test_build_script_parses_and_runs_the_trtexec_line(tmp_path, multi, cfg):
    script, text = _script(tmp_path, cfg, multi)
    assert text.startswith("#!/usr/bin/env bash\n") and "aitune-triton build-plan REPO --model net_trt" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    record = tmp_path / "args.txt"
    env = dict(os.environ, TRTEXEC=str(_fake_trtexec(tmp_path)), RECORD=str(record))
    subprocess.run(["bash", str(script)], check=True, env=env, cwd="/", capture_output=True)
    expected_cfg = cfg if cfg.timing_cache is None else cfg.replace(timing_cache=Path(cfg.timing_cache.name))
    assert record.read_text().splitlines() == trtexec_command("model.onnx", "model.plan", expected_cfg, multi)[1:]


def test_build_script_quotes_awkward_values(tmp_path, single):
    name = "net'\n$(touch pwned)`x`"
    script, text = _script(tmp_path, TensorRTBackendConfig(), single, onnx="my model's.onnx", plan="out dir/m.plan",
                           name=name)
    subprocess.run(["bash", "-n", str(script)], check=True)
    (tmp_path / "my model's.onnx").write_bytes(b"onnx")
    record = tmp_path / "args.txt"
    env = dict(os.environ, TRTEXEC=str(_fake_trtexec(tmp_path)), RECORD=str(record))
    done = subprocess.run(["bash", str(script)], env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = record.read_text().splitlines()
    assert args[:2] == ["--onnx=my model's.onnx", "--saveEngine=out dir/m.plan"]
    assert (tmp_path / "out dir").is_dir() and not (tmp_path / "pwned").exists()


def test_build_script_without_trtexec_or_onnx(tmp_path, single):
    script, _ = _script(tmp_path, TensorRTBackendConfig(), single)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if shutil.which("trtexec", path=env["PATH"]) or Path("/usr/src/tensorrt/bin/trtexec").exists():
        pytest.skip("a real trtexec is installed here")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 127 and "aitune-triton build-plan REPO --model net_trt" in done.stderr
    done = subprocess.run(["bash", str(script)], env=dict(env, TRTEXEC="/bin/true"), capture_output=True, text=True)
    assert done.returncode == 2 and "model.onnx not found" in done.stderr


# ---------------------------------------------------------------------------------------------
# Engine I/O read-back (against a fake engine with the TensorRT 10 API)
# ---------------------------------------------------------------------------------------------

class FakeEngine:
    def __init__(self, trt, tensors, profiles):
        self._trt, self._tensors, self._profiles = trt, tensors, profiles
        self.num_io_tensors = len(tensors)
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, index):
        return list(self._tensors)[index]

    def get_tensor_mode(self, name):
        return self._trt.TensorIOMode[self._tensors[name][0]]

    def get_tensor_dtype(self, name):
        return self._trt.DataType[self._tensors[name][1]]

    def get_tensor_shape(self, name):
        return list(self._tensors[name][2])  # trt.Dims is a sequence

    def get_tensor_profile_shape(self, name, profile_index):
        return [list(s) for s in self._profiles[profile_index][name]]

    def is_shape_inference_io(self, name):
        return False


def test_engine_io_reads_tensors_and_profiles():
    trt = _fake_trt()
    engine = FakeEngine(trt, {"image": ("INPUT", "HALF", (-1, 3, 16, 16)), "ids": ("INPUT", "INT64", (-1, -1)),
                              "logits": ("OUTPUT", "FLOAT", (-1, 5)), "flag": ("OUTPUT", "BOOL", (-1,))},
                        [{"image": [(1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)], "ids": [(1, 1), (4, 7), (8, 9)]},
                         {"image": [(1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16)], "ids": [(1, 1), (8, 9), (8, 9)]}])
    io = engine_io_of(engine, trt)
    assert io.num_profiles == 2 and [t.name for t in io.inputs] == ["image", "ids"]
    assert [t.name for t in io.outputs] == ["logits", "flag"]
    image = io.tensor("image")
    assert image.dtype == "float16" and image.shape == (-1, 3, 16, 16)
    assert image.profile_shapes[1] == ((1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))
    assert io.tensor("ids").dtype == "int64" and io.tensor("flag").dtype == "bool"
    assert io.tensor("logits").profile_shapes == ()
    assert EngineIO.from_dict(json.loads(json.dumps(io.to_dict()))) == io


def test_engine_io_refuses_io_triton_cannot_serve():
    trt = _fake_trt()
    engine = FakeEngine(trt, {"x": ("INPUT", "FP8", (-1, 4))}, [{"x": [(1, 4), (1, 4), (1, 4)]}])
    with pytest.raises(ModelError, match="'x' has TensorRT type FP8"):
        engine_io_of(engine, trt)


def test_gpu_facts_never_raise():
    facts = plan.gpu_facts()
    assert set(facts) == {"gpu_name", "compute_capability", "cuda_driver_version", "cuda_runtime_version"}


def test_plan_artifact_round_trip(tmp_path):
    io = EngineIO((plan.EngineTensor("x", "input", "float32", (-1, 4), (((1, 4), (2, 4), (8, 4)),)),), 1)
    stamp = PlanStamp("10.9.0.34", "12.8", "12.8", "NVIDIA H100", "9.0", "ampere_plus", True, True, 12.5)
    art = PlanArtifact(tmp_path / "model.plan", io, stamp, "abc")
    assert PlanArtifact.from_dict(json.loads(json.dumps(art.to_dict()))) == art
    assert art.stamp_dict()["compute_capability"] == "9.0" and art.engine_io.tensor("x").dtype == "float32"


def _fake_pipeline(monkeypatch, outputs=(("output_0", "FLOAT", (-1, 5)),)):
    """Fake tensorrt + Polygraphy loaders that record what build_in_process hands them."""
    import polygraphy.backend.trt as ptrt

    fake = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    seen = {}

    def network_from_onnx_path(path, strongly_typed=None):
        seen["network"] = (path, strongly_typed)
        return "network-loader"

    def engine_bytes_from_network(network, config, save_timing_cache=None):
        seen["engine"] = (network, config, save_timing_cache)
        return lambda: b"PLAN-BYTES"

    def engine_from_bytes(data):
        seen["plan_bytes"] = data
        tensors = {"image": ("INPUT", "FLOAT", (-1, 3, 16, 16)), "scale": ("INPUT", "FLOAT", (-1, 1))}
        tensors.update({name: ("OUTPUT", dtype, shape) for name, dtype, shape in outputs})
        prof = {"image": [(1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16)], "scale": [(1, 1), (1, 1), (8, 1)]}
        engine = FakeEngine(fake, tensors, [prof])
        engine.hardware_compatibility_level = fake.HardwareCompatibilityLevel.AMPERE_PLUS
        return lambda: engine

    monkeypatch.setattr(ptrt, "NetworkFromOnnxPath", network_from_onnx_path)
    monkeypatch.setattr(ptrt, "EngineBytesFromNetwork", engine_bytes_from_network)
    monkeypatch.setattr(ptrt, "EngineFromBytes", engine_from_bytes)
    monkeypatch.setattr(build_child, "gpu_facts", lambda: {"gpu_name": "Fake GPU", "compute_capability": "8.6",
                                                        "cuda_driver_version": "12.8", "cuda_runtime_version": "12.8"})
    return fake, seen


def test_build_in_process_pipeline(monkeypatch, single, tmp_path):
    fake, seen = _fake_pipeline(monkeypatch)
    cache = tmp_path / "caches" / "tc.bin"
    cfg = TensorRTBackendConfig(quantization_config=ONNXAutoCastConfig(), workspace_size=1 << 30,
                                compatibility_level="ampere_plus", timing_cache=cache)
    plan = tmp_path / "1" / "model.plan"
    art = build_child.build_in_process(tmp_path / "model.onnx", plan, cfg, single)
    assert seen["network"] == (str(tmp_path / "model.onnx"), True)
    network, config, save_cache = seen["engine"]
    assert network == "network-loader" and save_cache == str(cache) and cache.parent.is_dir()
    assert isinstance(config, CreateConfig) and config.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 1 << 30}
    assert config.hardware_compatibility_level is fake.HardwareCompatibilityLevel.AMPERE_PLUS and not config.fp16
    assert plan.read_bytes() == b"PLAN-BYTES" == seen["plan_bytes"] and list(plan.parent.iterdir()) == [plan]
    assert [t.name for t in art.engine_io.outputs] == ["output_0"] and art.engine_io.num_profiles == 1
    stamp = art.stamp
    assert (stamp.tensorrt_version, stamp.gpu_name, stamp.compute_capability) == ("10.9.0", "Fake GPU", "8.6")
    assert art.stamp.hardware_compatibility_level == "ampere_plus" and art.stamp.strongly_typed
    assert art.config_key == cfg.key()


def test_build_in_process_keeps_the_old_plan_when_the_new_one_is_unservable(monkeypatch, single, tmp_path):
    _fake_pipeline(monkeypatch, outputs=(("output_0", "FP8", (-1, 5)),))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"OLD")
    with pytest.raises(ModelError, match="FP8"):
        build_child.build_in_process(tmp_path / "model.onnx", plan, TensorRTBackendConfig(), single)
    assert plan.read_bytes() == b"OLD" and list(tmp_path.iterdir()) == [plan]


# ---------------------------------------------------------------------------------------------
# build_plan: the child process and what the parent reports
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_file(recorded, tmp_path_factory):
    model, _, samples = recorded
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(model, samples[1].args, str(path), dynamo=False, opset_version=17,
                      input_names=["image", "scale"], output_names=["output_0"],
                      dynamic_axes={"image": {0: "batch"}, "scale": {0: "batch"}, "output_0": {0: "batch"}})
    return path


@needs_no_trt
def test_build_plan_reports_missing_tensorrt(onnx_file, single, tmp_path):
    plan = tmp_path / "1" / "model.plan"
    seen = []
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed") as info:
        build_plan(onnx_file, plan, TensorRTBackendConfig(), single, progress=seen.append)
    message = str(info.value)
    assert "\n" not in message and "TensorRT is not installed" in message and "build_plan.sh" in message
    assert not plan.exists() and seen and "building TensorRT plan model.plan" in seen[0]


def _fake_child(monkeypatch, tmp_path, body):
    """Make the build child run ``build(request)`` with ``body`` instead of TensorRT."""
    module = "fake_build_child_%s" % uuid.uuid4().hex[:8]
    (tmp_path / (module + ".py")).write_text(
        "import json, os, signal, time\nfrom aitune_triton.errors import ModelError\n"
        "from aitune_triton.tensorrt.plan import PlanArtifact\n\n\ndef build(request):\n"
        + textwrap.indent(textwrap.dedent(body), "    "))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(builder, "BUILD_TARGET", module + ":build")


def test_build_plan_reports_a_crash(onnx_file, single, tmp_path, monkeypatch):
    _fake_child(monkeypatch, tmp_path, """
        print('[E] [TRT] tactic blew up', flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    """)
    with pytest.raises(ModelError, match="crashed with SIGSEGV") as info:
        build_plan(onnx_file, tmp_path / "m.plan", TensorRTBackendConfig(), single, progress=lambda m: None)
    message = str(info.value)
    assert "crashed with SIGSEGV" in message and "tactic blew up" in message and "\n" not in message
    log_path = Path(info.value.log_path)
    assert log_path.is_file()
    shutil.rmtree(log_path.parent)


def test_build_plan_reports_a_timeout(onnx_file, single, tmp_path, monkeypatch):
    _fake_child(monkeypatch, tmp_path, "time.sleep(120)")
    with pytest.raises(ModelError, match=r"timed out after 1 s") as info:
        build_plan(onnx_file, tmp_path / "m.plan", TensorRTBackendConfig(), single, timeout_s=1.0)
    shutil.rmtree(Path(info.value.log_path).parent)


def test_build_plan_reports_the_builder_error(onnx_file, single, tmp_path, monkeypatch):
    _fake_child(monkeypatch, tmp_path, """
        print('[E] [TRT] IBuilder::buildSerializedNetwork: Error Code 4: Internal Error (no tactic)')
        raise ModelError('TensorRT could not build the plan: Invalid Engine.')
    """)
    with pytest.raises(ModelError, match="could not build the plan") as info:
        build_plan(onnx_file, tmp_path / "m.plan", TensorRTBackendConfig(), single, progress=lambda m: None)
    message = str(info.value)
    assert message.startswith("TensorRT could not build the plan: Invalid Engine. (TensorRT: [E] [TRT] IBuilder")
    shutil.rmtree(Path(info.value.log_path).parent)


def test_build_plan_reads_the_childs_result(onnx_file, single, tmp_path, monkeypatch):
    io = EngineIO((plan.EngineTensor("image", "input", "float32", (-1, 3, 16, 16)),), 1)
    stamp = PlanStamp("10.9.0.34", None, None, None, None, None, False, False, 1.0)
    payload = {"artifact": PlanArtifact(tmp_path / "m.plan", io, stamp, "k").to_dict()}
    _fake_child(monkeypatch, tmp_path, """
        assert request.trt_config.precision == 'fp16' and len(request.profile_set.profiles) == 1
        return PlanArtifact.from_dict(json.loads(%r))
    """ % json.dumps(payload["artifact"]))
    art = build_plan(onnx_file, tmp_path / "m.plan", TensorRTBackendConfig(precision="fp16"), single)
    assert art.engine_io == io and art.stamp == stamp


def test_build_plan_input_errors(single, tmp_path, onnx_file):
    with pytest.raises(UserError, match="no ONNX model"):
        build_plan(tmp_path / "missing.onnx", tmp_path / "m.plan", TensorRTBackendConfig(), single)
    with pytest.raises(UserError, match="need a GPU"):
        build_plan(onnx_file, tmp_path / "m.plan", TensorRTBackendConfig(device="cpu"), single)


def test_child_env_maps_the_device(monkeypatch):
    monkeypatch.setenv("POLYGRAPHY_AUTOINSTALL_DEPS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = builder._child_env("cuda:1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "POLYGRAPHY_AUTOINSTALL_DEPS" not in env
    assert "CUDA_VISIBLE_DEVICES" not in builder._child_env("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert builder._child_env("cuda:1")["CUDA_VISIBLE_DEVICES"] == "6"
    with pytest.raises(UserError, match="has only 2 device"):
        builder._child_env("cuda:2")
    with pytest.raises(UserError, match="must be 'cuda' or 'cuda:<index>'"):
        builder._child_env("gpu0")


# ---------------------------------------------------------------------------------------------
# Real builds (only where the full TensorRT builder and a GPU exist)
# ---------------------------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_MISSING is not None, reason="needs the full TensorRT builder (%s)" % TRT_MISSING)
@pytest.mark.parametrize("profiles", ["single", "multi"])
def test_real_build_matches_pytorch(recorded, onnx_file, profiles, request, tmp_path):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    model, spec, samples = recorded
    profile_set = request.getfixturevalue(profiles)
    cache = tmp_path / "cache" / "timing.cache"
    cfg = TensorRTBackendConfig(enable_tf32=False, workspace_size=1 << 28, optimization_level=1, timing_cache=cache)
    plan = tmp_path / "1" / "model.plan"
    art = build_plan(onnx_file, plan, cfg, profile_set, timeout_s=600)
    assert plan.is_file() and cache.is_file() and art.path == plan.resolve()
    read_back = engine_io_of(deserialize(plan), import_tensorrt())
    assert art.engine_io.num_profiles == len(profile_set.profiles) == read_back.num_profiles
    image = art.engine_io.tensor("image")
    assert image.dtype == "float32" and image.shape == (-1, 3, 16, 16)
    for i, p in enumerate(profile_set.profiles):
        assert image.profile_shapes[i] == p.shapes("image")
    assert art.stamp.tensorrt_version and art.stamp.build_seconds > 0 and not art.stamp.strongly_typed
    engine = EngineFromBytes(plan.read_bytes())
    for index in range(len(profile_set.profiles)):
        with TrtRunner(engine, optimization_profile=index) as runner:
            for sample in samples:
                feed = {"image": sample.args[0].numpy(), "scale": sample.args[1].numpy()}
                got = runner.infer(feed)["output_0"]
                with torch.no_grad():
                    want = model(*sample.args).numpy()
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_MISSING is not None, reason="needs the full TensorRT builder (%s)" % TRT_MISSING)
def test_real_strongly_typed_fp16_build(recorded, onnx_file, single, tmp_path):
    pytest.importorskip("modelopt.onnx.autocast")
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from aitune_triton.tensorrt.quantization import apply_onnx_quantization

    model, spec, samples = recorded
    q = ONNXAutoCastConfig()
    fp16_onnx = apply_onnx_quantization(onnx_file, tmp_path / "model.fp16.onnx", q,
                                        [{"image": s.args[0].numpy(), "scale": s.args[1].numpy()} for s in samples])
    art = build_plan(fp16_onnx, tmp_path / "model.plan", TensorRTBackendConfig(quantization_config=q), single)
    assert art.stamp.strongly_typed and art.engine_io.tensor("image").dtype == "float32"  # AutoCast keeps I/O types
    with TrtRunner(EngineFromBytes((tmp_path / "model.plan").read_bytes())) as runner:
        got = runner.infer({"image": samples[1].args[0].numpy(), "scale": samples[1].args[1].numpy()})["output_0"]
    with torch.no_grad():
        want = model(*samples[1].args).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
