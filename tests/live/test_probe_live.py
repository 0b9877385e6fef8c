"""What probing decides, served for real: a batch-dependent model gets no dynamic batching and an
LSTM tagger with ``tokens`` + ``lengths`` passes every check on the embedded Triton.

One repository (eager fallbacks: the decision under test is the config, not the artifact) and one
``validate`` run without perf for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.validate.checks import CheckStatus
from aitune_triton.validate.harness import ValidateOptions, validate_repository

PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP

pytestmark = [pytest.mark.live, pytest.mark.slow]

ZOO = Path(__file__).resolve().parents[1] / "zoo"
MODELS = {"branchy": ZOO / "branchy.py", "tagger": ZOO / "lstm_tagger.py"}  # the zoo's models, served as eager


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    repo = root / "repo"
    for name, source in MODELS.items():
        (root / name).mkdir()
        shutil.copy(source, root / name / "model.py")
        generate(root / name / "model.py", repo, {"backends": ("python",), "fallback_format": "eager"})
    # the same batch-dependent model with dynamic batching switched on by hand
    shutil.copytree(repo / "branchy", repo / "forced")
    config = (repo / "forced" / "config.pbtxt").read_text().replace('name: "branchy"', 'name: "forced"')
    (repo / "forced" / "config.pbtxt").write_text(config + "\ndynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n")
    return repo, validate_repository(repo, ValidateOptions(perf=False))


def test_batch_dependent_model_is_served_without_dynamic_batching(report):
    repo, result = report
    config = (repo / "branchy" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "dynamic_batching" not in config
    manifest = json.loads((repo / "branchy" / "manifest.json").read_text())
    assert manifest["checks"]["batching"]["dynamic_batching"] is False
    assert manifest["spec"]["rows_independent"] is False
    assert any(n.startswith("dynamic batching is off: rows are not independent") for n in manifest["checks"]["notes"])
    checks = {c.name: c for c in result.model("branchy").checks}
    assert checks["accuracy_grpc"].status == PASS and checks["edge_shapes"].status == PASS
    assert checks["dynamic_batching"].status == SKIP and "rows are not independent" in checks["dynamic_batching"].detail


def test_lstm_tagger_with_lengths_passes_validate(report):
    repo, result = report
    tagger = result.model("tagger")
    failed = [(c.name, c.detail) for c in tagger.checks if c.status == FAIL]  # (a server warning is not the model's)
    assert not failed, failed
    assert {c.name: c.status for c in tagger.checks}["edge_shapes"] == PASS
    assert {c.name: c.status for c in tagger.checks}["dynamic_batching"] == PASS  # rows are independent


def test_dynamic_batching_switched_on_by_hand_fails_naming_the_cause(report):
    _, result = report
    batching = next(c for c in result.model("forced").checks if c.name == "dynamic_batching")
    assert batching.status == FAIL and "do not match their request" in batching.detail
    assert "generate found the rows not independent (output 'output_0' of sample" in batching.detail
