"""Checkpoint in, repository out, as a user runs it: ``generate CKPT_DIR`` without a model.py for the
four tiny checkpoints, then ``validate`` on a real Triton (the edge shapes reach the config's
maximum sequence length, the outputs match eager)."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "aitune_triton.cli"]


@pytest.fixture(scope="module")
def repo(hf_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoint") / "model_repository"
    for name in ("bert_cls", "bert_emb", "vit", "gpt2"):
        proc = subprocess.run(CLI + ["generate", str(hf_checkpoints[name]), "--out", str(out), "--backend", "python",
                                     "--fallback-format", "export"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "%s (python, ready): fallback export" % name in proc.stderr
        assert "generated model.py (start from it to customise): %s" % (out / name / "source" / "model.py") \
            in proc.stderr
    return out


@pytest.mark.parametrize("name, inferred, inputs, outputs", [
    ("bert_cls", "BertForSequenceClassification (bert) -> task text-classification; inputs input_ids, attention_mask; "
                 "envelope batch 1..measured, sequence 1..64 (config.max_position_embeddings)",
     {"input_ids": [-1], "attention_mask": [-1]}, {"logits": [3]}),
    ("bert_emb", "BertModel (bert) -> task embedding", {"input_ids": [-1], "attention_mask": [-1]},
     {"last_hidden_state": [-1, 32], "pooler_output": [32]}),
    ("vit", "ViTForImageClassification (vit) -> task image-classification; inputs pixel_values; "
            "envelope batch 1..measured, image 32x32 fixed", {"pixel_values": [3, 32, 32]}, {"logits": [5]}),
    ("gpt2", "GPT2LMHeadModel (gpt2) -> task causal-lm", {"input_ids": [-1], "attention_mask": [-1]},
     {"logits": [-1, 64]}),
])
def test_each_checkpoint_generates_without_a_model_py(repo, name, inferred, inputs, outputs):
    from aitune_triton.triton.manifest import Manifest

    manifest = Manifest.load(repo / name)
    assert {t.name: list(t.triton_dims()) for t in manifest.spec.inputs} == inputs
    assert {t.name: list(t.triton_dims()) for t in manifest.spec.outputs} == outputs
    assert manifest.max_batch_size >= 4  # measured on this machine, never under the samples' batch 4
    source = (repo / name / "source" / "model.py").read_text()
    assert "local_files_only=True" in source and inferred.split(" ")[0] in source
    if name != "vit":  # the sequence range declared from the config reaches its maximum
        assert [list(s) for s in manifest.profiles.profiles[0].shapes("input_ids")] == \
            [[1, 1], [4, 16], [manifest.max_batch_size, 64]]


def test_the_served_models_match_eager_up_to_the_maximum_length(repo, tmp_path):
    report_dir = tmp_path / "report"
    proc = subprocess.run(CLI + ["validate", str(repo), "--no-perf", "--model", "bert_cls", "--model", "gpt2",
                                 "--report", str(report_dir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((report_dir / "report.json").read_text())
    checks = {(m["name"], c["name"]): c for m in report["models"] for c in m["checks"]}
    from aitune_triton.triton.manifest import Manifest

    for name in ("bert_cls", "gpt2"):
        assert checks[(name, "accuracy_http")]["status"] == "pass"
        edge = checks[(name, "edge_shapes")]
        corner = "input_ids %dx64" % Manifest.load(repo / name).max_batch_size
        assert edge["status"] == "pass" and corner in edge["detail"], edge
