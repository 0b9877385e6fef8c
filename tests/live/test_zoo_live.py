"""The model zoo: real architectures (Hugging Face configs with random weights, no downloads) and the
awkward shapes users bring, each through ``generate`` and ``validate --no-perf`` on the embedded Triton.

Asserted per model: the fallback artifact chosen (AOTInductor wherever torch.export works: the
artifact loads without ``transformers``), the dynamic-batching decision, the output dims and the
validate verdict. One repository and one validate run for the module; the models in ``tests/zoo/``
are tiny because every AOTInductor compile costs 20-30 s on 2 cores. So only BERT goes the default
way (``auto``: AOTInductor is chosen); the other exportable models are generated with
``fallback_format="export"``, the same flat-IO ``torch.export`` program the AOTInductor package is
compiled from, which is what must load without ``transformers``. The branchy model goes through the
CLI so the console a user sees is asserted too.

What probing decides is served for real here too: the batch-dependent ``branchy`` gets no dynamic
batching, and ``forced`` (the same model with dynamic batching switched on by hand) fails the
batching check naming the cause.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.api import generate
from aitune_triton.validate.checks import CheckStatus
from aitune_triton.validate.harness import ValidateOptions, validate_repository

FAIL, PASS, SKIP = CheckStatus.FAIL, CheckStatus.PASS, CheckStatus.SKIP

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "zoo"
API_MODELS = ("bert", "gpt2", "t5_encoder", "lstm_tagger", "nested", "detector")
# the one AOTInductor compile of the module (BERT: a ModelOutput dataclass out); the other exportable
# models skip the compile, "auto" for the models torch.export cannot trace (they fall back to eager)
FALLBACK_FORMAT = {"gpt2": "export", "t5_encoder": "export", "nested": "export", "detector": "export"}
NOT_REQUESTED = [["aoti", "not requested (fallback format 'export')"]]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(repo, {name: generate detail}, {name: seconds}, branchy's CLI result, validate report)."""
    pytest.importorskip("transformers")
    repo = tmp_path_factory.mktemp("zoo") / "repo"
    env = {"HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".cache" / "inductor")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, os.environ.get(key, value))
        details, seconds = {}, {}
        for name in API_MODELS:
            start = time.monotonic()
            result = generate(ZOO / ("%s.py" % name), repo, {"name": name, "backends": ("python",),
                                                             "fallback_format": FALLBACK_FORMAT.get(name, "auto")})
            seconds[name] = time.monotonic() - start
            details[name] = result.models[0].detail
        start = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "aitune_triton.cli", "generate", str(ZOO / "branchy.py"),
                              "--out", str(repo)],  # python + tensorrt: the ONNX export fails too
                             capture_output=True, text=True, timeout=600, env={**os.environ, **env}, cwd=ROOT)
        seconds["branchy"] = time.monotonic() - start
    assert cli.returncode == 0, cli.stderr
    # the batch-dependent model with dynamic batching switched on by hand
    shutil.copytree(repo / "branchy", repo / "forced")
    forced = repo / "forced" / "config.pbtxt"
    forced.write_text(forced.read_text().replace('name: "branchy"', 'name: "forced"')
                      + "\ndynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n")
    report = validate_repository(repo, ValidateOptions(perf=False, report_dir=repo.parent / "report"))  # + server log
    for name, took in seconds.items():  # the figures for BENCHMARKS/issue notes (pytest -s shows them)
        print("zoo: %-12s generate %.1f s: %s" % (name, took, details.get(name, "(CLI)")))
    return repo, details, cli, report


def manifest(repo: Path, name: str) -> dict:
    return json.loads((repo / name / "manifest.json").read_text())


def config(repo: Path, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def output_dims(repo: Path, name: str) -> dict[str, list[int]]:
    return {o.name: list(o.dims) for o in config(repo, name).output}


def assert_validated(report, name: str) -> None:
    checks = report.model(name).checks
    assert all(c.status in (PASS, SKIP) or c.name == "oversized_shape" for c in checks), \
        [(c.name, c.status, c.detail) for c in checks if c.status not in (PASS, SKIP)]
    assert {c.name: c.status for c in checks}["accuracy_grpc"] == PASS


@pytest.mark.parametrize("name, dims", [
    ("bert", {"last_hidden_state": [-1, 32], "pooler_output": [32]}),
    ("gpt2", {"logits": [-1, 128]}),
    ("t5_encoder", {"last_hidden_state": [-1, 32]}),
    ("nested", {"logits": [3], "aux_0": [4], "aux_1_norm": [1]}),
])
def test_exportable_models_get_aoti_and_dynamic_batching(zoo, name, dims):
    """HF models return ModelOutput dataclasses: the artifact must still load in the check's child
    process and in the Triton stub, neither of which imports transformers. BERT goes the ``auto``
    way (AOTInductor chosen, nothing skipped); the others are built as the ExportedProgram."""
    repo, details, _, report = zoo
    art = manifest(repo, name)["artifact"]
    if name in FALLBACK_FORMAT:
        assert (art["format"], art["skipped"], art["flat_io"]) == ("export", NOT_REQUESTED, True), details[name]
        assert details[name].startswith("fallback export on cpu (aoti skipped: not requested"), details[name]
    else:
        assert (art["format"], art["skipped"], art["flat_io"]) == ("aoti", [], True), details[name]
        assert details[name] == "fallback aoti on cpu"
    cfg = config(repo, name)
    assert cfg.max_batch_size == 4 if name != "nested" else cfg.max_batch_size == 8
    assert cfg.HasField("dynamic_batching")
    assert output_dims(repo, name) == dims
    assert_validated(report, name)
    assert {c.name: c.status for c in report.model(name).checks}["dynamic_batching"] == PASS


def test_data_dependent_branch_is_eager_without_dynamic_batching_and_says_why_in_one_line(zoo):
    repo, _, cli, report = zoo
    art = manifest(repo, "branchy")["artifact"]
    assert art["format"] == "eager" and [f for f, _ in art["skipped"]] == ["aoti", "export"]
    log = repo / "branchy" / "logs" / "fallback.log"
    line = next(x for x in cli.stderr.splitlines() if x.startswith("✓ branchy"))
    assert line == ("✓ branchy (python, ready): fallback eager on cpu (aoti, export skipped: torch.export failed: "
                    "control flow depends on input values (`if x.sum() > 0` at branchy.py:12); torch.export cannot "
                    "trace it; log: %s)" % log)
    # torch's own output (the FX graph, the guard) is in the log, not on the console
    for noise in ("def forward(", "GuardOnDataDependentSymNode", "guard_or_false", "see warnings above"):
        assert noise not in cli.stderr + cli.stdout
    text = log.read_text()
    assert "def forward(" in text and "GuardOnDataDependentSymNode" in text
    onnx_log = repo / "branchy" / "logs" / "onnx_export.log"
    assert ("TensorRT skipped: ONNX export failed (dynamo): control flow depends on input values (`if x.sum() > 0` at "
            "branchy.py:12); torch.export cannot trace it; try use_dynamo=False, or serve with the Python-backend "
            "fallback (backends=('python',)); log: %s" % onnx_log) in cli.stderr.splitlines()
    assert "symbolic_shapes" in onnx_log.read_text()  # the exporter's own output, off the console
    assert not config(repo, "branchy").HasField("dynamic_batching")
    assert manifest(repo, "branchy")["checks"]["batching"]["dynamic_batching"] is False
    assert_validated(report, "branchy")


def test_lstm_tagger_with_lengths_passes_validate(zoo):
    repo, details, _, report = zoo
    art = manifest(repo, "lstm_tagger")["artifact"]
    assert art["format"] == "eager"  # pad_packed_sequence sizes its output from the lengths' values
    assert details["lstm_tagger"].startswith(
        "fallback eager on cpu (aoti, export skipped: torch.export failed: sizes depend on input values "
        "(`out, _ = pad_packed_sequence(") and "at lstm_tagger.py:15); torch.export cannot trace it; log: " in \
        details["lstm_tagger"]
    assert output_dims(repo, "lstm_tagger") == {"output_0": [-1, 5]}
    assert config(repo, "lstm_tagger").HasField("dynamic_batching")
    assert_validated(report, "lstm_tagger")
    checks = {c.name: c.status for c in report.model("lstm_tagger").checks}
    assert checks["edge_shapes"] == PASS
    assert checks["dynamic_batching"] == PASS  # rows are independent: the batcher's answers match


def test_detector_boxes_axis_is_dynamic(zoo):
    """Every sample returns 10 boxes; other images return fewer: the boxes axis must be -1."""
    repo, details, _, report = zoo
    assert manifest(repo, "detector")["artifact"]["format"] == "export", details["detector"]  # a flat-IO program
    cfg = config(repo, "detector")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert output_dims(repo, "detector") == {"boxes": [-1, 4], "scores": [-1]}
    assert_validated(report, "detector")


def test_batch_dependent_model_is_served_without_dynamic_batching(zoo):
    repo, _, _, report = zoo
    config_text = (repo / "branchy" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config_text and "dynamic_batching" not in config_text
    data = manifest(repo, "branchy")
    assert data["checks"]["batching"]["dynamic_batching"] is False
    assert data["spec"]["rows_independent"] is False
    assert any(n.startswith("dynamic batching is off: rows are not independent") for n in data["checks"]["notes"])
    checks = {c.name: c for c in report.model("branchy").checks}
    assert checks["accuracy_grpc"].status == PASS and checks["edge_shapes"].status == PASS
    assert checks["dynamic_batching"].status == SKIP and "rows are not independent" in checks["dynamic_batching"].detail


def test_dynamic_batching_switched_on_by_hand_fails_naming_the_cause(zoo):
    _, _, _, report = zoo
    batching = next(c for c in report.model("forced").checks if c.name == "dynamic_batching")
    assert batching.status == FAIL and "do not match their request" in batching.detail
    assert "generate found the rows not independent (output 'output_0' of sample" in batching.detail


def test_non_contiguous_outputs_are_served(tmp_path):
    """A bidirectional LSTM's whole output sequence (a transposed view out of ``nn.LSTM``) and a
    transpose of it beside the logits: before, warm-up failed at load with "DLPack tensor is not
    contiguous" (and tritonserver sometimes died with SIGSEGV); now every output is served and matches."""
    repo = tmp_path / "repo"
    generate(ZOO / "bilstm_sequence.py", repo, {"backends": ("python",), "fallback_format": "eager"})
    report = validate_repository(repo, ValidateOptions(perf=False, report_dir=tmp_path / "report"))
    assert output_dims(repo, "bilstm_sequence") == {"output_0": [3], "output_1": [-1, 16], "output_2": [16, -1]}
    assert_validated(report, "bilstm_sequence")
    assert report.exit_code == 0
