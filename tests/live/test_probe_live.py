"""What probing decides, served for real: a batch-dependent model gets no dynamic batching and an
LSTM tagger with ``tokens`` + ``lengths`` passes every check on the embedded Triton.

One repository (eager fallbacks: the decision under test is the config, not the artifact) and one
``validate`` run without perf for the module.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.validate.checks import FAIL, PASS, SKIP
from aitune_triton.validate.harness import ValidateOptions, validate_repository

pytestmark = [pytest.mark.live, pytest.mark.slow]

MODELS = {
    "branchy": '''
        import torch
        from torch import nn

        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 3)

            def forward(self, x):
                if x.sum() > 0:  # one branch for the whole batch
                    return self.lin(x) * 2
                return self.lin(x) - 1

        def get_model():
            torch.manual_seed(0)
            return Branchy().eval()

        def get_samples():
            g = torch.Generator().manual_seed(0)
            return [torch.randn(b, 4, generator=g) for b in (1, 2, 4)]
    ''',
    "tagger": '''
        import torch
        from torch import nn
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        class Tagger(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.lstm, self.out = nn.Embedding(20, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 5)

            def forward(self, tokens, lengths):
                packed = pack_padded_sequence(self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.shape[1])
                return self.out(out)

        def get_model():
            torch.manual_seed(0)
            return Tagger().eval()

        def get_samples():
            g = torch.Generator().manual_seed(0)
            return [(torch.randint(1, 20, (b, s), generator=g), torch.randint(1, s + 1, (b,), generator=g))
                    for b, s in ((1, 6), (2, 15), (4, 10))]
    ''',
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    repo = root / "repo"
    for name, source in MODELS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(textwrap.dedent(source))
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
