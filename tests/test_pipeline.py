"""Raw-data pipelines written by generate: the hooks' contract (one-line errors), the three model
dirs with schema-checked configs (golden files), the recorded raw reference, and the integrity
check covering the copied user code of the pre/post steps."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from aitune_triton import api, pipeline
from aitune_triton.errors import ModelError, UserError
from aitune_triton.reference_data import load_reference
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.model_check import verify_model
from aitune_triton.triton.render import parse_config
from aitune_triton.validate.plan import plan_models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text_pipeline" / "model.py"
GOLDEN = Path(__file__).parent / "golden"
NAMES = ("text_pipeline_pre", "text_pipeline_post", "text_pipeline_pipeline")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "repo"
    result = api.generate(EXAMPLE, out, {"backends": ("python",), "fallback_format": "eager"})
    assert [m.name for m in result.models] == ["text_pipeline", "text_pipeline_pipeline"]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_configs_match_golden_files_and_triton_schema(repo, name):
    text = (repo / name / "config.pbtxt").read_text()
    cfg = parse_config(text)  # Triton's ModelConfig schema
    golden = GOLDEN / ("pipeline_%s.pbtxt" % name.rsplit("_", 1)[1])
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "rendered config changed; rerun with UPDATE_GOLDEN=1 if intended"
    assert cfg.max_batch_size == 64  # the model's


def test_steps_record_what_the_hooks_import(repo):
    import json

    data = json.loads((repo / "text_pipeline_pre" / "1" / "aitune_pipeline.json").read_text())
    assert set(data["requires"]) == {"numpy", "tokenizers", "torch"}
    assert data["role"] == "pre" and data["hook"] == "get_preprocess" and data["inputs"] == ["raw"]


def test_ensemble_wires_raw_through_pre_model_post(repo):
    cfg = parse_config((repo / "text_pipeline_pipeline" / "config.pbtxt").read_text())
    assert cfg.platform == "ensemble"
    assert [s.model_name for s in cfg.ensemble_scheduling.step] == ["text_pipeline_pre", "text_pipeline",
                                                                     "text_pipeline_post"]
    assert [t.name for t in cfg.input] == ["raw"] and [t.name for t in cfg.output] == ["label", "score"]


def test_reference_holds_raw_rows_and_answers_without_pickle(repo):
    cases = load_reference(repo / "text_pipeline_pipeline" / "reference.npz")
    assert [c.inputs["raw"].tobytes() for c in cases][:2] == [b"what a wonderful movie",
                                                              b"the food was cold and boring"]
    assert all(c.outputs["label"].dtype.kind == "S" and c.outputs["label"].shape == (1, 1) for c in cases)
    assert all(c.outputs["score"].dtype == np.float32 for c in cases)


def test_steps_are_hashed_and_checked_through_the_ensemble(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    manifest = verify_model(copy / "text_pipeline_pipeline", copy)
    assert manifest.pipeline == {"role": "pipeline", "model": "text_pipeline", "pre": "text_pipeline_pre",
                                 "post": "text_pipeline_post", "pipeline": "text_pipeline_pipeline"}
    assert "1/user_model.py" in Manifest.load(copy / "text_pipeline_pre").files
    # the steps load with their ensemble: validate plans the model and the ensemble only
    assert [p.name for p in plan_models(copy)] == ["text_pipeline", "text_pipeline_pipeline"]
    with (copy / "text_pipeline_post" / "1" / "user_model.py").open("a") as f:
        f.write("\nimport os  # planted\n")
    with pytest.raises(ModelError, match=r"text_pipeline_post: 1/user_model.py does not match its recorded SHA-256"):
        verify_model(copy / "text_pipeline_pipeline", copy)


@pytest.mark.parametrize("role, name", [("model", "text_pipeline"), ("pre", "text_pipeline_pre")])
def test_the_ensemble_checks_every_model_it_loads(repo, tmp_path, role, name):
    """Loading the ensemble loads the served model as well as the steps: a changed one is refused, and
    a missing one is a one-line ModelError (validate reports those; anything else aborts the run)."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    assert "1/model.py" in Manifest.load(copy / name).files
    with (copy / name / "1" / "model.py").open("a") as f:
        f.write("\nimport os  # planted\n")
    with pytest.raises(ModelError, match=r"%s: 1/model.py does not match its recorded SHA-256" % name):
        verify_model(copy / "text_pipeline_pipeline", copy)
    shutil.rmtree(copy / name)
    with pytest.raises(ModelError, match=r"refusing to load .*text_pipeline_pipeline: its pipeline step '%s' \(%s\) "
                                         r"is missing from the repository \(regenerate the model\)$" % (name, role)):
        verify_model(copy / "text_pipeline_pipeline", copy)


def _model_py(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "model.py"
    path.write_text(EXAMPLE.read_text().split("def get_preprocess")[0] + extra)
    return path


def test_no_hooks_means_no_pipeline(tmp_path):
    assert pipeline.load_hooks(_model_py(tmp_path, "")) is None


@pytest.mark.parametrize("extra, match", [
    ("def get_preprocess():\n    return len\n", r"defines get_preprocess but not get_postprocess, get_raw_samples"),
    ("def get_preprocess():\n    return 3\ndef get_postprocess():\n    return len\n"
     "def get_raw_samples():\n    return ['x']\n", r"get_preprocess\(\) returned int; return a function of one row"),
    ("def get_preprocess():\n    return len\ndef get_postprocess():\n    return len\n"
     "def get_raw_samples():\n    return 'abc'\n", r"get_raw_samples\(\) must return a non-empty list"),
    ("def get_preprocess():\n    return len\ndef get_postprocess():\n    return len\n"
     "def get_raw_samples():\n    return ['ok', '']\n", r"get_raw_samples\(\) row 1 is ''"),
])
def test_bad_hooks_are_one_line_user_errors(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        pipeline.load_hooks(_model_py(tmp_path, extra))


def test_a_hook_returning_wrong_inputs_fails_generate_before_anything_is_written(tmp_path):
    bad = ("def get_preprocess():\n    return lambda raw: {'ids': np.zeros(16, dtype=np.int64)}\n"
           "def get_postprocess():\n    return lambda out: {'x': 1}\n"
           "def get_raw_samples():\n    return ['hello']\n")
    out = tmp_path / "repo"
    with pytest.raises(UserError, match=r"the preprocess hook returned \['ids'\] for raw sample 0; return the "
                                        r"model's inputs \['attention_mask', 'input_ids'\]"):
        api.generate(_model_py(tmp_path, bad), out, {"backends": ("python",), "fallback_format": "eager"})
    assert not out.exists()


def test_recorded_answers_are_judged_at_the_models_precision_with_the_users_override(repo):
    """Before: each answer got ``tolerance_for(its numpy dtype)`` alone: a hook's float64 score was
    compared exactly, --atol/--rtol/--rel-l2 were ignored, and a float16 model's float32 answer
    was held to float32's rule, so a healthy served export or batched model failed raw_answers_*."""
    import dataclasses

    from aitune_triton.numerics import DEFAULT_TOLERANCES, EXACT, Tolerance, ToleranceOverride

    spec = Manifest.load(repo / "text_pipeline").spec
    assert {t.dtype for t in spec.outputs} == {"float32"}
    types = {"label": "bytes", "score": "float64", "index": "int64"}
    assert pipeline.answer_tolerances(types, spec, None) == {"score": DEFAULT_TOLERANCES["float32"], "index": EXACT}
    assert pipeline.answer_tolerances(types, spec, ToleranceOverride(atol=0.05))["score"] == Tolerance(0.05, 1e-3)
    half = dataclasses.replace(spec, outputs=tuple(dataclasses.replace(t, dtype="float16") for t in spec.outputs))
    assert pipeline.answer_tolerances({"score": "float32"}, half, None)["score"] == DEFAULT_TOLERANCES["float16"]


def test_a_float64_answer_passes_with_rounding_noise_and_fails_when_wrong(tmp_path):
    from types import SimpleNamespace

    from aitune_triton.validate.checks.raw_pipeline import _mismatch

    model_py = tmp_path / "model.py"
    model_py.write_text(EXAMPLE.read_text().replace('"score": np.float32(probs[best])', '"score": probs[best]'))
    out = tmp_path / "repo"
    result = api.generate(model_py, out, {"backends": ("python",), "fallback_format": "eager", "rel_l2": 0.5})
    pipe = result.models[-1].path
    manifest = Manifest.load(pipe)
    case = load_reference(pipe / "reference.npz")[0]
    assert case.outputs["score"].dtype == np.float64
    target = SimpleNamespace(manifest=manifest)
    noisy = dict(case.outputs, score=case.outputs["score"] * (1 + 2e-4))  # float32 rounding of a served model
    assert _mismatch(target, noisy, case.outputs) is None
    wrong = dict(case.outputs, score=case.outputs["score"] * 3)
    assert "score: " in _mismatch(target, wrong, case.outputs)
    assert manifest.tolerances["score"].rel_l2 == 0.5  # the user's override reaches the answers


def test_tune_sends_the_pipeline_raw_rows_as_bytes_like_validate(repo, tmp_path):
    """tune gave perf_analyzer the reference's uint8 arrays as integer lists for the ensemble's BYTES
    input; it now sends what validate's perf check sends: each raw row as one BYTES element."""
    import json

    from aitune_triton.tune.options import tune_perf_options
    from aitune_triton.tune.search import perf_inputs
    from aitune_triton.validate import harness
    from aitune_triton.validate.checks.target import ModelTarget

    model_dir = repo / "text_pipeline_pipeline"
    tune = perf_inputs(model_dir, Manifest.load(model_dir), tune_perf_options(), tmp_path / "tune")
    validate = harness.perf_options(ModelTarget.load(model_dir), harness.ValidateOptions(), tmp_path / "validate")
    data = json.loads(tune.input_data.read_text())["data"]
    assert data == json.loads(validate.input_data.read_text())["data"]
    rows = [case.inputs["raw"].tobytes() for case in load_reference(model_dir / "reference.npz")]
    assert [d["raw"] for d in data] == [{"content": [r.decode()], "shape": [1]} for r in rows[:len(data)]]


def test_generate_runs_model_py_top_level_code_once(tmp_path):
    """The hooks were looked up by importing model.py a second time: its top-level code (downloads,
    prints, side effects) ran twice in one generate."""
    marker = tmp_path / "imports.log"
    model_py = tmp_path / "src" / "model.py"
    model_py.parent.mkdir()
    model_py.write_text("import torch\nwith open(%r, 'a') as f:\n    f.write('x')\n"
                        "def get_model():\n    return torch.nn.Linear(2, 2)\n"
                        "def get_samples():\n    return [torch.ones(1, 2), torch.ones(3, 2)]\n" % str(marker))
    api.generate(model_py, tmp_path / "repo", {"backends": ("python",), "fallback_format": "export"})
    assert marker.read_text() == "x"


def test_hooks_come_from_the_module_already_imported(tmp_path):
    from aitune_triton.source import load_module

    path = _model_py(tmp_path, "def get_preprocess():\n    return len\ndef get_postprocess():\n    return len\n"
                               "def get_raw_samples():\n    return ['ok']\n")
    module = load_module(path)
    module.get_raw_samples = lambda: ["from the loaded module"]
    assert pipeline.load_hooks(path, module=module).raw == (b"from the loaded module",)
