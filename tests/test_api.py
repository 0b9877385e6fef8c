"""The generate API: stage-1 selection among fallback formats by measurement."""
import json
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.errors import UserError
from aitune_triton.runtime import RUNTIME_FILES

ROOT = Path(__file__).resolve().parents[1]


def test_stage1_measures_every_format_and_keeps_only_the_chosen_one(tmp_path):
    result = generate(ROOT / "examples" / "multi_io" / "model.py", tmp_path / "repo",
                      {"backends": ("python",), "strategy": "min-latency"})
    selection = result.selection
    assert {r.name for r in selection.rows} == {"aoti", "export", "eager"}
    assert all(r.accuracy.ok for r in selection.rows)
    manifest = json.loads((tmp_path / "repo" / "multi_io" / "manifest.json").read_text())
    chosen = manifest["tuning"]["stage1"]["chosen"] or "eager"
    assert manifest["artifact"]["format"] == chosen
    files = sorted(p.name for p in (tmp_path / "repo" / "multi_io" / "1").iterdir())
    assert files == sorted([*RUNTIME_FILES, "aitune_model.json", *manifest["artifact"]["files"]])
    assert not list((tmp_path / "repo" / "multi_io").glob(".trial-*"))


def test_latency_budget_needs_a_budget(tmp_path):
    with pytest.raises(UserError, match="budget_ms"):
        generate(ROOT / "examples" / "cnn" / "model.py", tmp_path / "repo", {"strategy": "latency-budget"})


def test_prepare_probes_and_checks_declared_input_names(tmp_path):
    from aitune_triton.prepared import prepare

    model_py = tmp_path / "model.py"
    model_py.write_text(
        "import torch\n"
        "from aitune_triton import GenerateConfig\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * 2 if x.sum() > 0 else x\n"
        "def get_model():\n    return M()\n"
        "def get_samples():\n"
        "    return [torch.randn(b, 3, generator=torch.Generator().manual_seed(b)) for b in (1, 2)]\n"
        "def get_config():\n    return GenerateConfig(input_ranges=RANGES)\n"
        "RANGES = {'x': (-5, 5)}\n")
    prep = prepare(model_py)
    assert prep.spec.rows_independent is False and prep.notes[0].startswith("dynamic batching is off")
    model_py.write_text(model_py.read_text().replace("{'x': (-5, 5)}", "{'nope': (0, 1)}"))
    with pytest.raises(UserError, match=r"input_ranges names unknown input\(s\) \['nope'\]; the inputs are \['x'\]"):
        prepare(model_py)


def test_generate_needs_no_client_library(tmp_path):
    """``generate`` where tritonclient is not installed (a GPU image with torch only): the model is
    written and one line says the config was not checked against Triton's schema."""
    import os
    import subprocess
    import sys

    from aitune_triton.triton.render import SCHEMA_SKIPPED

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "scripts" / "no_tritonclient"), str(ROOT)]),
               TORCHINDUCTOR_CACHE_DIR=str(ROOT / ".cache" / "inductor"))
    probe = subprocess.run([sys.executable, "-c", "import tritonclient"], env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "hidden by scripts/no_tritonclient" in probe.stderr
    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "aitune_triton.cli", "generate", str(ROOT / "examples" / "cnn" /
                           "model.py"), "--out", str(out), "--backend", "python", "--fallback-format", "eager"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cnn (python, ready)" in proc.stderr
    assert SCHEMA_SKIPPED in " ".join(proc.stderr.split())
    assert (out / "cnn" / "config.pbtxt").is_file() and (out / "cnn" / "1" / "model.py").is_file()
    from aitune_triton.triton.render import check_config, parse_config  # the text written is still valid

    check_config(parse_config((out / "cnn" / "config.pbtxt").read_text()))


def test_the_reference_is_recomputed_where_the_fallback_runs(tmp_path):
    """Outputs computed by model.py on another device are recomputed on the fallback's device (here
    the meta device stands in for a GPU); a model that fails there is one line naming --device."""
    from aitune_triton.prepared import outputs_on_device
    from aitune_triton.errors import ModelError
    from aitune_triton.source import load_model_source
    from aitune_triton.spec import record_spec

    src = load_model_source(ROOT / "examples" / "cnn" / "model.py")
    spec = record_spec(src.model, src.samples, src.outputs)
    assert outputs_on_device(src, spec, "cpu") is None  # computed there already: kept as they are
    moved = outputs_on_device(src, spec, "meta")
    assert [o.device.type for o in moved] == ["meta"] * len(src.outputs)
    assert [o.shape for o in moved] == [o.shape for o in src.outputs]
    (tmp_path / "model.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.from_numpy(x.numpy() * 2)\n"
        "def get_model():\n    return M()\n"
        "def get_samples():\n    return [torch.randn(2, 3)]\n")
    host_only = load_model_source(tmp_path / "model.py")
    with pytest.raises(ModelError, match=r"^the model runs on cpu in model.py but fails on meta, where the fallback "
                                         r"would serve it: .*; generate with --device cpu, or fix the model for meta"):
        outputs_on_device(host_only, record_spec(host_only.model, host_only.samples, host_only.outputs), "meta")


def test_tensorrt_overrides_keep_what_was_not_given_and_unknown_names_fail_before_model_py_loads(tmp_path):
    """GenerateOptions(tensorrt=...) follows the NOT_GIVEN rule (it stored NOT_GIVEN: graphs off,
    opset a TypeError), and a misspelt field is one UserError naming the fields before model.py runs
    (it was a TypeError after the load)."""
    from aitune_triton.api import GenerateOptions
    from aitune_triton.not_given import NOT_GIVEN
    from aitune_triton.prepared import prepare

    model_py = tmp_path / "model.py"
    model_py.write_text(
        "import torch\n"
        "from aitune_triton import GenerateConfig, TensorRTBackendConfig\n"
        "def get_model():\n    return torch.nn.Linear(3, 2)\n"
        "def get_samples():\n    return [torch.randn(b, 3) for b in (1, 2)]\n"
        "def get_config():\n"
        "    return GenerateConfig(tensorrt=TensorRTBackendConfig(use_cuda_graphs=True, opset_version=17))\n")
    prep = prepare(model_py, {"tensorrt": {"use_cuda_graphs": NOT_GIVEN, "opset_version": NOT_GIVEN,
                                           "precision": "fp16"}})
    trt = prep.config.tensorrt
    assert (trt.use_cuda_graphs, trt.opset_version, trt.precision) == (True, 17, "fp16")

    loaded = tmp_path / "loaded"
    model_py.write_text("open(%r, 'w').close()\n" % str(loaded) + model_py.read_text())
    for overrides, match in (({"bogus": 1}, r"unknown GenerateConfig field\(s\) bogus in the overrides; the fields "
                                            r"are: name, backends"),
                             (GenerateOptions(tensorrt={"bogus": 1}), r"unknown TensorRTBackendConfig field\(s\) "
                                                                      r"bogus in the overrides' tensorrt; the fields "
                                                                      r"are: .*use_cuda_graphs")):
        with pytest.raises(UserError, match=match):
            generate(model_py, tmp_path / "repo", overrides)
    assert not loaded.exists()


def test_an_existing_model_is_refused_before_the_probe_and_the_batch_measurement(tmp_path, monkeypatch):
    """"already exists; pass --force" came from stage_models, after prepare had probed the model and
    measured the batch; it now comes as soon as the names are known."""
    import aitune_triton.prepared as prepared

    def no_spec(*args, **kwargs):
        raise AssertionError("the spec was recorded before the existing model was refused")

    monkeypatch.setattr(prepared, "record_spec", no_spec)
    (tmp_path / "repo" / "cnn_onnx").mkdir(parents=True)
    with pytest.raises(UserError, match=r"model cnn_onnx already exists in .*repo; pass --force to replace it"):
        generate(ROOT / "examples" / "cnn" / "model.py", tmp_path / "repo", {"backends": ("python", "onnxruntime")})
