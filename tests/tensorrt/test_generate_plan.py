"""generate's TensorRT path end to end, with the importable fake ``tensorrt`` standing in for TensorRT.

The package's real code runs unchanged: ``build_status`` creates a builder, the build child runs
Polygraphy's loaders on the fake's builder, the plan is read back and run on the samples through
``PlanRunner`` and Polygraphy's ``Comparator.run``, and the model directory is written as a real
one. The fake's switches simulate a machine without a GPU, a parse or build failure and a plan
that computes the wrong values.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.numerics import compare
from aitune_triton.reference_data import load_reference
from aitune_triton.tensorrt_model import ModelStatus, build_plans
from aitune_triton.tensorrt.section import PlanStatus
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.model_check import verify_model
from aitune_triton.triton.render import check_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

MODEL_PY = """
import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def get_model():
    torch.manual_seed(0)
    return Tiny().eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 4, generator=g) for b in (1, 3)]
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny" / "model.py"
    path.parent.mkdir()
    path.write_text(MODEL_PY)
    return path


def _generate(model_py, out, **overrides):
    return generate(model_py, out, {"fallback_format": "eager", **overrides})


def _manifest(model_dir):
    return json.loads((model_dir / "manifest.json").read_text())


def _check_served_config(model_dir, num_profiles=1):
    cfg = parse_config((model_dir / "config.pbtxt").read_text())
    check_config(cfg, num_profiles)  # Triton's schema and the rules render.py enforces
    return cfg


def test_cli_generate_builds_checks_and_serves_the_plan(fake_tensorrt_installed, tmp_path):
    """The "done when" command: the CLI in a child process with the fake on PYTHONPATH."""
    out = tmp_path / "R"
    proc = subprocess.run([sys.executable, "-m", "aitune_triton.cli", "generate", "examples/cnn/model.py", "--out",
                           str(out), "--fallback-format", "eager"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ[
                              "PYTHONPATH"]])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model_dir = out / "cnn_trt"
    assert (model_dir / "1" / "model.plan").read_bytes().startswith(b"FAKETRT1")  # the fake's plan format
    cfg = _check_served_config(model_dir)
    # the example's batch is measured (8 on an idle 2-core machine, 16 seen under load): the plan's config
    # serves exactly the batch the envelope measured and recorded, as the PyTorch model beside it does
    measured = _manifest(out / "cnn")["max_batch_size"]
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == measured == _manifest(model_dir)["max_batch_size"]
    assert measured >= 4  # never under the samples' batches
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    printed = proc.stdout + proc.stderr
    assert "cnn_trt (tensorrt, ready): TensorRT 10.9.0.34 plan, checked against eager PyTorch: 4 sample(s)" in printed
    assert "not installed" not in printed
    section = _manifest(model_dir)["tensorrt"]
    assert section["status"] == "built" and section["stamp"]["tensorrt_version"] == "10.9.0.34"
    assert section["check"]["ok"] and section["check"]["samples"] == 4
    assert [o["name"] for o in section["check"]["outputs"]] == ["output_0"]
    assert _manifest(out / "cnn")["tensorrt"]["status"] == "built"  # the staged ONNX stays for build-plan --force
    assert (out / "cnn" / "tensorrt" / "model.onnx").is_file()


def test_generate_records_the_settings_and_the_precision_tolerance(fake_tensorrt_installed, tiny, tmp_path):
    cache = tmp_path / "caches" / "timing.cache"
    result = _generate(tiny, tmp_path / "repo", tensorrt={
        "precision": "fp16", "timing_cache": cache, "optimization_level": 2, "version_compatible": True,
        "compatibility_level": "ampere_plus", "workspace_size": 1 << 28})
    trt = {m.backend: m for m in result.models}["tensorrt"]
    assert trt.status is ModelStatus.READY and trt.path == tmp_path / "repo" / "tiny_trt"
    section = _manifest(trt.path)["tensorrt"]
    assert section["stamp"]["version_compatible"] and section["stamp"]["hardware_compatibility_level"] == "ampere_plus"
    assert section["check"]["rule"].startswith("fp16: atol = 0.01 x peak")  # fp16 outputs are rounded by the fake
    assert section["settings"]["optimization_level"] == 2 and cache.is_file()  # the build saved its timing cache
    _check_served_config(trt.path)


def _assert_served_under_the_plan_check(model_dir, offset):
    """validate's accuracy and batching checks compare with the manifest's tolerances: they must be the
    ones the plan was accepted under, so the plan's answers (eager + the fake's offset) pass there too."""
    manifest = Manifest.load(model_dir)
    for check in manifest.tensorrt.check["outputs"]:
        served = manifest.tolerances[check["name"]]
        assert (served.atol, served.rtol) == (check["atol"], check["rtol"])
        for case in load_reference(model_dir / "reference.npz"):
            expected = case.outputs[check["name"]]
            assert compare(expected + offset, expected, served).ok


def test_the_served_manifest_carries_the_tolerance_the_plan_was_checked_with(fake_tensorrt_installed, tiny,
                                                                             tmp_path):
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_OUTPUT_OFFSET", "0.001")  # over float32's atol, within fp16's
    out = tmp_path / "repo"
    result = _generate(tiny, out, tensorrt={"precision": "fp16"})
    assert {m.backend: m.status for m in result.models}["tensorrt"] is ModelStatus.READY
    _assert_served_under_the_plan_check(out / "tiny_trt", 0.001)
    assert Manifest.load(out / "tiny_trt").tolerances["output_0"].atol > 1e-3
    assert Manifest.load(out / "tiny").tolerances["output_0"].atol == 1e-4  # the PyTorch model: eager's own

    built = build_plans(out, force=True)  # build-plan writes the same
    assert [(m.name, m.status) for m in built] == [("tiny_trt", ModelStatus.READY)]
    _assert_served_under_the_plan_check(out / "tiny_trt", 0.001)


def test_a_failed_build_keeps_the_staging_and_names_the_stage(fake_tensorrt_installed, tiny, tmp_path):
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_FAIL", "build")
    out = tmp_path / "repo"
    result = _generate(tiny, out)
    trt = {m.backend: m for m in result.models}["tensorrt"]
    assert trt.status is ModelStatus.PENDING and trt.detail == "plan not built (TensorRT build stage failed)"
    note = next(n for n in result.notes if n.startswith("TensorRT plan not built:"))
    assert "\n" not in note and "TensorRT build stage failed: Invalid Engine" in note
    assert "fake build failure" in note  # TensorRT's own [E] line
    log = Path(note.rsplit("; log: ", 1)[1])
    assert log == out / "tiny" / "logs" / "tensorrt_build.log" and "buildSerializedNetwork" in log.read_text()
    assert not (out / "tiny_trt").exists() and sorted(p.name for p in out.iterdir()) == ["tiny"]
    assert sorted(p.name for p in (out / "tiny" / "tensorrt").iterdir()) == ["build_plan.sh", "config.pbtxt",
                                                                          "model.onnx"]
    section = _manifest(out / "tiny")["tensorrt"]
    assert section["status"] == "pending" and section["reason"].startswith("TensorRT build stage failed")
    assert any("stay staged in %s" % (out / "tiny" / "tensorrt") in n and "build-plan" in n for n in result.notes)


def test_a_parse_failure_names_the_parse_stage(fake_tensorrt_installed, tiny, tmp_path):
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_FAIL", "parse")
    result = _generate(tiny, tmp_path / "repo")
    note = next(n for n in result.notes if n.startswith("TensorRT plan not built:"))
    assert note.startswith("TensorRT plan not built: TensorRT parse stage failed: Could not parse ONNX correctly")
    assert "fake parse failure" in note


def test_a_plan_that_misses_eager_is_not_served(fake_tensorrt_installed, tiny, tmp_path):
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_OUTPUT_OFFSET", "0.5")
    out = tmp_path / "repo"
    result = _generate(tiny, out)
    trt = {m.backend: m for m in result.models}["tensorrt"]
    assert trt.status is ModelStatus.PENDING and trt.detail == "plan not built (TensorRT check stage failed)"
    note = next(n for n in result.notes if n.startswith("TensorRT plan not built:"))
    assert "TensorRT check stage failed: the plan does not match eager PyTorch: 2 sample(s): output_0 outside" in note
    assert "max |diff| 0.5" in note and note.count("TensorRT check stage failed") == 1
    assert not (out / "tiny_trt").exists() and (out / "tiny" / "tensorrt" / "model.onnx").is_file()
    assert _manifest(out / "tiny")["tensorrt"]["status"] == "pending"


def test_installed_without_a_gpu_says_so_and_stages(fake_tensorrt_installed, tiny, tmp_path):
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_GPU", "0")
    out = tmp_path / "repo"
    result = _generate(tiny, out)
    trt = {m.backend: m for m in result.models}["tensorrt"]
    assert trt.status is ModelStatus.PENDING and trt.detail == "plan not built"
    assert not any("not installed" in n for n in result.notes)
    assert any(n.startswith("TensorRT 10.9.0.34 is installed but cannot create a builder here: no usable CUDA GPU? "
                            "(CUDA initialization failure") for n in result.notes)
    assert not (out / "tiny" / "logs" / "tensorrt_build.log").exists()  # nothing was tried

    # build-plan runs the same build + check once the GPU is there
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_GPU", "1")
    built = build_plans(out)
    assert [(m.name, m.status) for m in built] == [("tiny_trt", ModelStatus.READY)]
    assert "checked against eager PyTorch: 2 sample(s)" in built[0].detail
    assert _manifest(out / "tiny_trt")["tensorrt"]["check"]["ok"]
    _check_served_config(out / "tiny_trt")


def test_tensorrt_only_builds_into_the_model_itself(fake_tensorrt_installed, tiny, tmp_path):
    out = tmp_path / "repo"
    result = _generate(tiny, out, backends=("tensorrt",))
    assert [(m.name, m.status) for m in result.models] == [("tiny", ModelStatus.READY)]
    assert (out / "tiny" / "1" / "model.plan").is_file() and (out / "tiny" / "tensorrt" / "model.onnx").is_file()
    manifest = _manifest(out / "tiny")
    assert manifest["backend"] == "tensorrt" and manifest["tensorrt"]["status"] == PlanStatus.BUILT.value
    _check_served_config(out / "tiny")
    _assert_served_under_the_plan_check(out / "tiny", 0.0)  # TF32 (on by default): judged as fp16
    assert manifest["tolerances"]["output_0"]["atol"] > 1e-4


def test_build_plan_builds_a_tensorrt_only_model_in_place(fake_tensorrt_installed, tiny, tmp_path):
    """The command generate prints for a pending TensorRT-only model works: the model has no
    config.pbtxt yet (only tensorrt/ has one) and its TensorRT name is its own."""
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_GPU", "0")
    out = tmp_path / "repo"
    result = _generate(tiny, out, backends=("tensorrt",))
    assert [(m.name, m.status) for m in result.models] == [("tiny", ModelStatus.PENDING)]
    assert any("`aitune-triton build-plan %s --model tiny`" % out in n for n in result.notes)
    fake_tensorrt_installed.setenv("FAKE_TENSORRT_GPU", "1")
    for force in (False, True):  # and once more over the built one
        built = build_plans(out, model="tiny", force=force)
        assert [(m.name, m.status) for m in built] == [("tiny", ModelStatus.READY)]
        assert "checked against eager PyTorch: 2 sample(s)" in built[0].detail
        assert (out / "tiny" / "1" / "model.plan").is_file() and (out / "tiny" / "tensorrt" / "model.onnx").is_file()
        manifest = verify_model(out / "tiny", out)  # sealed over the files that are there
        assert manifest.backend == "tensorrt" and manifest.tensorrt.status is PlanStatus.BUILT
        _check_served_config(out / "tiny")
        _assert_served_under_the_plan_check(out / "tiny", 0.0)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["tiny"]


@pytest.mark.parametrize("backends, trt_name, lose", [
    (("python", "tensorrt"), "tiny_trt", lambda m: (m / "1" / "model.plan").unlink()),
    (("python", "tensorrt"), "tiny_trt", shutil.rmtree),
    (("python", "tensorrt"), "tiny_trt", lambda m: (m / "1" / "model.plan").write_bytes(b"FAKETRT1 replaced")),
    (("tensorrt",), "tiny", lambda m: (m / "1" / "model.plan").unlink()),
])
def test_build_plan_builds_again_a_plan_recorded_as_built_that_is_gone(fake_tensorrt_installed, tiny, tmp_path,
                                                                      backends, trt_name, lose):
    """The manifest saying "built" is not enough to report it ready: the plan must be there and intact."""
    out = tmp_path / "repo"
    _generate(tiny, out, backends=backends)
    lose(out / trt_name)
    said = []
    built = build_plans(out, progress=said.append)
    assert [(m.name, m.status) for m in built] == [(trt_name, ModelStatus.READY)]
    assert "already built" not in built[0].detail and "checked against eager PyTorch" in built[0].detail
    assert any(s.startswith("%s is recorded as built, but " % trt_name) and s.endswith(": building it again")
               for s in said)
    verify_model(out / trt_name, out)
    assert (out / trt_name / "1" / "model.plan").read_bytes().startswith(b"FAKETRT1") and \
        (out / "tiny" / "tensorrt" / "model.onnx").is_file()
    assert build_plans(out)[0].detail.startswith("already built, matches")  # intact now: kept


@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt_the_staging_and_message_are_unchanged(tiny, tmp_path):
    out = tmp_path / "repo"
    result = _generate(tiny, out)
    trt = {m.backend: m for m in result.models}["tensorrt"]
    assert trt.status is ModelStatus.PENDING and trt.path == out / "tiny" / "tensorrt"
    assert result.notes[-2] == ("TensorRT is not installed here: the checked ONNX, the TensorRT config and "
                                "build_plan.sh are staged in %s (not loaded by Triton)." % trt.path)
    assert result.notes[-1].startswith("Build the plan inside a TensorRT/Triton container with `aitune-triton "
                                       "build-plan %s --model tiny`" % out)
