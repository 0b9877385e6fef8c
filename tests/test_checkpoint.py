"""A Hugging Face checkpoint directory in place of model.py: the task guess, the plan ``inspect``
prints, the generated model.py, and one line (exit 2, nothing written) for each bad checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from aitune_triton import checkpoint
from aitune_triton.checkpoint import Task, infer_task, plan_checkpoint
from aitune_triton.cli import main
from aitune_triton.errors import UserError


@pytest.mark.parametrize("architecture, config, task", [
    ("BertForSequenceClassification", {}, Task.TEXT_CLASSIFICATION),
    ("DistilBertForTokenClassification", {}, Task.TOKEN_CLASSIFICATION),
    ("RobertaForMaskedLM", {}, Task.FILL_MASK),
    ("GPT2LMHeadModel", {}, Task.CAUSAL_LM),
    ("LlamaForCausalLM", {}, Task.CAUSAL_LM),
    ("BertModel", {}, Task.EMBEDDING),
    ("ViTForImageClassification", {"image_size": 224}, Task.IMAGE_CLASSIFICATION),
    ("ViTModel", {"image_size": 224}, Task.IMAGE_EMBEDDING),
    ("BertForFancyThing", {}, None),
])
def test_the_task_follows_the_architecture_name(architecture, config, task):
    assert infer_task(architecture, config) == task


def _fake(tmp_path: Path, config: dict | None, weights: bool = True, name: str = "ckpt") -> Path:
    path = tmp_path / name
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


BERT = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "vocab_size": 100,
        "max_position_embeddings": 128}


@pytest.mark.parametrize("config, weights, task, match", [
    (None, True, None, r"ckpt: no config\.json; pass a Hugging Face checkpoint directory"),
    ({"architectures": ["BertModel"]}, True, None, r"config\.json: no model_type"),
    (dict(BERT, architectures=["BertForFancyThing"]), True, None,
     r"architecture BertForFancyThing: cannot tell the task from it; pass --task \(one of text-classification"),
    (dict(BERT, architectures=[]), True, None, r"no architectures entry: cannot tell the task"),
    (BERT, False, None, r"ckpt: no weights \(model\.safetensors, pytorch_model\.bin\)"),
    (BERT, True, "translation", r"unknown task 'translation'; choose from text-classification"),
    (BERT, True, "image-classification", r"task image-classification needs image_size in config\.json"),
    ({k: v for k, v in BERT.items() if k != "max_position_embeddings"}, True, None,
     r"no maximum sequence length \(max_position_embeddings / n_positions"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, config, weights, task, match):
    with pytest.raises(UserError, match=match) as info:
        plan_checkpoint(_fake(tmp_path, config, weights), task)
    assert "\n" not in str(info.value)


def test_config_json_that_is_not_json_is_named(tmp_path):
    path = _fake(tmp_path, None)
    (path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"ckpt/config\.json: not readable JSON"):
        plan_checkpoint(path)


def test_the_plan_reads_the_envelope_from_the_config(hf_checkpoints):
    bert = plan_checkpoint(hf_checkpoints["bert_cls"])
    assert (bert.task, bert.task_inferred, bert.max_length, bert.has_tokenizer) == \
        (Task.TEXT_CLASSIFICATION, True, 64, True)
    assert bert.sample_lengths == (8, 16, 32)
    assert bert.summary() == ("BertForSequenceClassification (bert) -> task text-classification; inputs input_ids, "
                              "attention_mask; envelope batch 1..measured, sequence 1..64 "
                              "(config.max_position_embeddings)")
    gpt2 = plan_checkpoint(hf_checkpoints["gpt2"])
    assert (gpt2.task, gpt2.max_length, gpt2.length_key, gpt2.has_tokenizer) == (Task.CAUSAL_LM, 64, "n_positions",
                                                                                 False)
    vit = plan_checkpoint(hf_checkpoints["vit"])
    assert vit.envelope() == "batch 1..measured, image 32x32 fixed (config.image_size)"
    overridden = plan_checkpoint(hf_checkpoints["vit"], "image-embedding")
    assert (overridden.task, overridden.task_inferred, overridden.auto_class) == \
        (Task.IMAGE_EMBEDDING, False, "AutoModel")


def test_the_generated_model_py_loads_locally_only(hf_checkpoints, tmp_path):
    gpt2 = checkpoint.write_model_py(plan_checkpoint(hf_checkpoints["gpt2"]), tmp_path)
    text = gpt2.read_text()
    assert gpt2 == tmp_path / "gpt2" / "model.py"
    compile(text, str(gpt2), "exec")
    assert 'os.environ["HF_HUB_OFFLINE"] = "1"' in text
    assert "AutoModelForCausalLM.from_pretrained(CHECKPOINT, local_files_only=True, use_cache=False)" in text
    assert "MAX_LENGTH = 64  # config.n_positions" in text and "AutoTokenizer" not in text
    bert = checkpoint.render_model_py(plan_checkpoint(hf_checkpoints["bert_cls"]))
    assert "AutoTokenizer.from_pretrained(CHECKPOINT, local_files_only=True)" in bert
    assert "use_cache" not in bert
    assert bert.count("# ENVELOPE:") == 1


def test_the_generated_model_py_meets_the_model_py_contract(hf_checkpoints, tmp_path):
    """The normal loader takes it unchanged: tokenized samples at several batches and lengths,
    a config declaring the sequence range up to the checkpoint's maximum."""
    from aitune_triton.source import load_model_source

    source = load_model_source(checkpoint.write_model_py(plan_checkpoint(hf_checkpoints["bert_cls"]), tmp_path))
    shapes = [tuple(s.kwargs["input_ids"].shape) for s in source.samples]
    assert shapes == [(1, 8), (2, 16), (4, 32), (4, 16)]
    assert all(s.kwargs["attention_mask"].min() == 0 for s in source.samples[1:])  # padded rows
    assert source.outputs[0]["logits"].shape == (1, 3)
    assert source.config is not None and source.config.max_batch_size is None  # measured by generate
    assert source.config.axis_ranges == {"input_ids": {1: (1, 64)}, "attention_mask": {1: (1, 64)}}
    edge = source.config.make_inputs({"input_ids": (2, 64), "attention_mask": (2, 64)})
    assert edge["input_ids"].max() < 64 and edge["attention_mask"].shape == (2, 64)


def test_inspect_prints_the_plan_without_generating(hf_checkpoints):
    result = CliRunner().invoke(main, ["inspect", str(hf_checkpoints["bert_cls"])])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for expected in ("architecture: BertForSequenceClassification (model_type bert)",
                     "task: text-classification (inferred from the architecture)",
                     "input: input_ids int64 [batch 1..measured, seq 1..64] values 0..63",
                     "input: attention_mask int64 [batch 1..measured, seq 1..64] values 0..1",
                     "output: logits float32 [batch, 3]",
                     "envelope: batch 1..measured, sequence 1..64 (config.max_position_embeddings)",
                     "samples: the checkpoint's tokenizer on built-in sentences at batch 1, 2, 4, lengths 8, 16, 32",
                     "model name: bert_cls"):
        assert expected in lines, (expected, result.output)
    assert any(line.startswith("format: python backend: PyTorch fallback") for line in lines)
    vit = CliRunner().invoke(main, ["inspect", str(hf_checkpoints["vit"])])
    assert "input: pixel_values float32 [batch 1..measured, 3, 32, 32]" in vit.output.splitlines()
    assert not list(hf_checkpoints["bert_cls"].parent.glob("*repo*"))


def _broken(hf_checkpoints, tmp_path, name: str, change) -> Path:
    path = tmp_path / name
    shutil.copytree(hf_checkpoints["bert_emb" if name == "wrong_task" else "bert_cls"], path)
    change(path)
    return path


def _relabel(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    config["id2label"] = {str(i): "L%d" % i for i in range(5)}
    config["label2id"] = {"L%d" % i: i for i in range(5)}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name, change, extra, match", [
    ("no_config", lambda p: (p / "config.json").unlink(), [], r"no_config: no config\.json"),
    ("no_weights", lambda p: (p / "model.safetensors").unlink(), [], r"no_weights: no weights"),
    ("shapes", _relabel, [], r"shapes/model\.safetensors: the weights do not match BertForSequenceClassification "
                             r"for task text-classification: 2 tensor\(s\) of another shape \(classifier\.bias "
                             r"\[3 in the file vs 5 from config\.json\]"),
    ("tokenizer", lambda p: (p / "tokenizer.json").write_text('{"broken": '), [],
     r"tokenizer: the tokenizer does not load: .*; fix or remove the tokenizer files"),
    ("arch", lambda p: (p / "config.json").write_text((p / "config.json").read_text().replace(
        "BertForSequenceClassification", "BertForFancyThing")), [], r"architecture BertForFancyThing: cannot tell"),
    ("wrong_task", lambda p: None, ["--task", "text-classification"],
     r"wrong_task/model\.safetensors: the weights do not match BertModel for task text-classification: 2 "
     r"tensor\(s\) missing \(classifier\.bias, classifier\.weight\); check config\.json or pass the right --task"),
])
def test_a_bad_checkpoint_is_one_line_exit_2_nothing_written(hf_checkpoints, tmp_path, name, change, extra, match):
    import re

    path = _broken(hf_checkpoints, tmp_path, name, change)
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["generate", str(path), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(match, errors[0]), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_model_py_in_the_directory_wins(tmp_path):
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "model.py").write_text("")
    (directory / "config.json").write_text(json.dumps(BERT))
    result = CliRunner().invoke(main, ["generate", str(directory), "--out", str(tmp_path / "repo"),
                                       "--task", "embedding"])
    assert result.exit_code == 2
    assert "--task applies to a checkpoint directory; %s is not one" % (directory / "model.py") in result.output


def test_the_python_api_names_the_same_functions():
    import aitune_triton
    from aitune_triton import api

    assert aitune_triton.generate is api.generate and aitune_triton.plan_checkpoint is plan_checkpoint
    assert {"generate", "plan_checkpoint"} <= set(aitune_triton.__all__)


def test_the_python_api_refuses_a_bad_checkpoint_before_writing(tmp_path):
    import aitune_triton

    with pytest.raises(UserError, match=r"ckpt: no weights"):
        aitune_triton.generate(_fake(tmp_path, BERT, weights=False), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_an_existing_model_is_refused_before_the_checkpoint_loads(tmp_path, monkeypatch):
    """For a checkpoint the existing model was refused only after preflight had loaded the weights
    (and model.py had run); the plan's name and the overrides give the names up front."""
    from aitune_triton.api import generate

    def no_preflight(plan):
        raise AssertionError("the weights were loaded before the existing model was refused")

    monkeypatch.setattr(checkpoint, "preflight", no_preflight)
    (tmp_path / "repo" / "ckpt_trt").mkdir(parents=True)
    with pytest.raises(UserError, match=r"model ckpt_trt already exists in .*repo; pass --force"):
        generate(_fake(tmp_path, BERT), tmp_path / "repo")
    with pytest.raises(UserError, match=r"model bert already exists in .*repo; pass --force"):
        (tmp_path / "repo" / "bert").mkdir()
        generate(tmp_path / "ckpt", tmp_path / "repo", {"name": "bert", "backends": ("python",)})


def test_preflight_and_a_checkpoint_generate_leave_the_process_online(hf_checkpoints, tmp_path, monkeypatch):
    """preflight set HF_HUB_OFFLINE=1 and silenced transformers for good (as did the generated
    model.py, imported in-process): a Python API caller could not reach the Hub afterwards."""
    import huggingface_hub.constants as hub
    import transformers

    from aitune_triton import api

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    transformers.logging.set_verbosity_warning()
    transformers.logging.enable_progress_bar()
    checkpoint.preflight(plan_checkpoint(hf_checkpoints["bert_cls"]))
    assert "HF_HUB_OFFLINE" not in os.environ and hub.HF_HUB_OFFLINE is False
    assert transformers.logging.get_verbosity() == transformers.logging.WARNING
    assert transformers.utils.logging.is_progress_bar_enabled()

    seen = []

    def generate_offline(model_py, *args, **kwargs):  # what the generated model.py does at import
        os.environ["HF_HUB_OFFLINE"] = "1"
        seen.append(hub.HF_HUB_OFFLINE)
        raise UserError("stop here")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(api, "_generate", generate_offline)
    with pytest.raises(UserError, match="stop here"):
        api.generate(hf_checkpoints["bert_cls"], tmp_path / "repo")
    assert seen == [True] and os.environ["HF_HUB_OFFLINE"] == "0" and hub.HF_HUB_OFFLINE is False


def test_inspect_says_what_it_accepts_and_generate_still_offers_a_model_py(tmp_path):
    """inspect model.py said "pass a checkpoint directory ... or a model.py", which inspect does not accept."""
    model_py = tmp_path / "model.py"
    model_py.write_text("")
    result = CliRunner().invoke(main, ["inspect", str(model_py)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: %s: not a directory; pass a Hugging Face checkpoint directory (with config.json); a model.py is not "
        "inspected: generate runs it" % model_py], result.output
    for args in (["inspect", str(tmp_path / "nope")], ["inspect", str(tmp_path)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "model.py" not in result.output, result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "empty"), "--out", str(tmp_path / "repo")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: %s: no config.json (nor a model.py); pass a model.py (or its folder) or a Hugging Face checkpoint "
        "directory (save_pretrained output)" % (tmp_path / "empty")], result.output
