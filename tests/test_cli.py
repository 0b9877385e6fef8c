"""CLI start-up: ``--version`` and ``--help`` answer without importing torch (it takes seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from aitune_triton.cli import main
try:
    main([%r], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "numpy", "onnx", "onnxruntime", "tritonclient") if m in sys.modules)
    print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_import_torch(flag):
    run = subprocess.run([sys.executable, "-c", PROBE % flag], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "HEAVY=\n" in run.stdout, run.stdout
    if flag == "--version":
        assert "aitune-triton, version" in run.stdout
    else:
        assert "pack-env" in run.stdout


MODEL_WITH_CONFIG = """
import torch
from aitune_triton import GenerateConfig

def get_model():
    return torch.nn.Linear(3, 2).eval()

def get_samples():
    return [torch.randn(b, 3) for b in (1, 2)]

def get_config():
    return GenerateConfig(instances=2, max_batch_size=4, max_queue_delay_us=100)
"""


def test_options_not_given_keep_get_config_values(tmp_path):
    """The CLI passes NOT_GIVEN for options left out: get_config()'s max_batch_size and delay stay,
    --instances (given) wins."""
    import json

    from click.testing import CliRunner

    from aitune_triton.cli import main

    model_py = tmp_path / "model.py"
    model_py.write_text(MODEL_WITH_CONFIG)
    result = CliRunner().invoke(main, ["generate", str(model_py), "--out", str(tmp_path / "repo"), "--name", "m",
                                       "--backend", "python", "--fallback-format", "eager", "--device", "cpu",
                                       "--instances", "3", "--rtol", "0.05", "--rel-l2", "0.1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "repo" / "m" / "manifest.json").read_text())
    config = manifest["config"]
    assert (config["instances"], config["max_batch_size"], config["max_queue_delay_us"]) == (3, 4, 100)
    assert (config["atol"], config["rtol"], config["rel_l2"]) == (None, 0.05, 0.1)  # --atol not given: the default
    assert list(manifest["tolerances"].values()) == [{"atol": 1e-4, "rtol": 0.05, "rel_l2": 0.1}]
    pbtxt = (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in pbtxt and "count: 3" in pbtxt and "max_queue_delay_microseconds: 100" in pbtxt
