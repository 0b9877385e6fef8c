"""build_plan: the child process and what the parent reports, and real builds where TensorRT and a GPU exist."""

import json
import shutil
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from aitune_triton.errors import ModelError, UserError
from aitune_triton.tensorrt import builder, plan
from aitune_triton.tensorrt.availability import TensorRTUnavailable, import_tensorrt
from aitune_triton.tensorrt.builder import build_plan
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    TensorRTBackendConfig,
)
from aitune_triton.tensorrt.plan import EngineIO, PlanArtifact, PlanStamp, deserialize, engine_io_of


@pytest.fixture(scope="module")
def onnx_file(recorded, tmp_path_factory):
    model, _, samples = recorded
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(model, samples[1].args, str(path), dynamo=False, opset_version=17,
                      input_names=["image", "scale"], output_names=["output_0"],
                      dynamic_axes={"image": {0: "batch"}, "scale": {0: "batch"}, "output_0": {0: "batch"}})
    return path


@pytest.mark.usefixtures("no_tensorrt")
def test_build_plan_reports_missing_tensorrt(onnx_file, single, tmp_path):
    plan = tmp_path / "1" / "model.plan"
    seen = []
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed") as info:
        build_plan(onnx_file, plan, TensorRTBackendConfig(), single, progress=seen.append)
    message = str(info.value)
    assert "\n" not in message and "TensorRT is not installed" in message and "build_plan.sh" in message
    assert not plan.exists() and seen and "building the TensorRT plan of %s" % tmp_path.name in seen[0]


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
@pytest.mark.usefixtures("real_tensorrt")
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
@pytest.mark.usefixtures("real_tensorrt")
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
