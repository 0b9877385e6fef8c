"""Models users bring, round 3: int8 dynamically quantized models, a causal language model and a
torchvision-style detector, each through ``generate`` (python + TensorRT staging) and
``validate --no-perf`` on the embedded Triton.

Asserted per model: the fallback format and why, what happened to the TensorRT staging (the ONNX
export and its ONNX Runtime check) and the validate verdict. The Llama-style decoder is built as
the ExportedProgram (``fallback_format="export"``: the AOTInductor compile is not under test); the
others go the default way and end eager for the reasons the console names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.validate.checks import CheckStatus
from aitune_triton.validate.harness import ValidateOptions, validate_repository

FAIL, PASS, SKIP = CheckStatus.FAIL, CheckStatus.PASS, CheckStatus.SKIP

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "zoo"
MODELS = {"quantized_lstm": "auto", "quantized_mlp": "auto", "llama": "export", "detector_list": "auto"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(repo, {name: GenerateResult}, validate report)."""
    pytest.importorskip("transformers")
    repo = tmp_path_factory.mktemp("zoo3") / "repo"
    env = {"HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")}
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, os.environ.get(key, value))
        for name, fmt in MODELS.items():
            results[name] = generate(ZOO / ("%s.py" % name), repo, {"name": name, "fallback_format": fmt})
    report = validate_repository(repo, ValidateOptions(perf=False, report_dir=repo.parent / "report"))
    for name, result in results.items():  # the console lines, for the closing note (pytest -s)
        print("zoo3: %s: %s | %s" % (name, result.models[0].detail, " | ".join(result.notes)))
    return repo, results, report


def manifest(repo: Path, name: str) -> dict:
    return json.loads((repo / name / "manifest.json").read_text())


def verdicts(report, name: str) -> dict:
    checks = report.model(name).checks
    assert all(c.status in (PASS, SKIP) or c.name == "oversized_shape" for c in checks), \
        [(c.name, c.status, c.detail) for c in checks if c.status not in (PASS, SKIP)]
    assert {c.name: c.status for c in checks}["accuracy_grpc"] == PASS
    return {c.name: c for c in checks}


@pytest.mark.parametrize("name, packed", [("quantized_lstm", "CellParamsBase"),
                                          ("quantized_mlp", "LinearPackedParamsBase")])
def test_dynamically_quantized_models_serve_eager_and_say_why(zoo, name, packed):
    repo, results, report = zoo
    data = manifest(repo, name)
    assert data["artifact"]["format"] == "eager" and data["artifact"]["files"] == ["user_model.py", "state_dict.pt"]
    assert results[name].models[0].detail.startswith(
        "fallback eager on cpu (aoti, export skipped: torch.export failed: the model holds %s objects (packed weights "
        "of torch.ao quantized modules, e.g. quantize_dynamic), which torch.export cannot trace; log: " % packed)
    trt = data["tensorrt"]
    assert trt["status"] == "export_failed" and "give the float model and let TensorRT quantize it" in trt["reason"]
    # activations are quantized with one scale per batch: rows depend on each other, found by the probe
    assert data["checks"]["batching"]["dynamic_batching"] is False
    checks = verdicts(report, name)
    assert checks["edge_shapes"].status == PASS and checks["dynamic_batching"].status == SKIP


def test_causal_decoder_keeps_its_onnx_and_tensorrt_staging(zoo):
    """Random 0/1 attention masks at the profile edges failed the ONNX check (logits 0.216 off):
    the check inputs are the samples tiled and cropped, and the decoder's ONNX matches."""
    repo, results, report = zoo
    data = manifest(repo, "llama")
    assert data["artifact"]["format"] == "export"
    trt = data["tensorrt"]
    assert trt["status"] in ("pending", "built"), trt.get("reason")
    rows = trt["onnx_check"]["outputs"]
    assert [r["name"] for r in rows] == ["logits"] and all(r["ok"] for r in rows), rows
    assert {"profile 0 min", "profile 0 max"} <= set(trt["onnx_check"]["cases"])
    assert (repo / "llama" / "tensorrt" / "model.onnx").is_file()
    checks = verdicts(report, "llama")
    assert checks["dynamic_batching"].status == PASS


def test_detector_returning_a_dict_per_image_is_served_padded_with_counts(zoo):
    repo, results, report = zoo
    data = manifest(repo, "detector_list")
    assert data["artifact"]["format"] == "eager" and data["artifact"]["max_detections"] == 6
    assert data["artifact"]["skipped"][0][1].startswith("torch.export failed: Constraints violated (batch)")
    dims = {o["name"]: o for o in data["spec"]["outputs"]}
    assert list(dims) == ["boxes", "scores", "labels", "num_detections"]
    config = (repo / "detector_list" / "config.pbtxt").read_text()
    assert "dims: [ 6, 4 ]" in config and "dynamic_batching" in config
    assert results["detector_list"].notes[0].startswith(
        "forward() returns one dict per image (boxes, scores, labels): served batched, each field padded to 6 rows "
        "per image")
    assert data["tensorrt"]["status"] == "export_failed"
    checks = verdicts(report, "detector_list")
    assert checks["dynamic_batching"].status == PASS and checks["edge_shapes"].status == PASS
