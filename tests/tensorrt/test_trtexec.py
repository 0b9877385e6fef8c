"""The trtexec line renders the same settings as ``create_config``, and ``build_plan.sh`` runs it."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from aitune_triton.tensorrt import trtexec
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
)
from aitune_triton.tensorrt.settings import TrtSymbol, create_config_kwargs
from aitune_triton.tensorrt.trtexec import render_build_script, trtexec_command


def _plain(profiles):
    """Polygraphy profiles as comparable data (ShapeTuple has no __eq__)."""
    return [{name: tuple(tuple(s) for s in shapes) for name, shapes in p.items()} for p in profiles]



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


