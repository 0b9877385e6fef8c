"""Loading model.py: the one-line refusals that say how to fix what the tool cannot serve."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.source import load_model_source

ZOO = Path(__file__).resolve().parent / "zoo"


def test_list_of_tensors_argument_is_refused_with_a_hint_to_wrap_the_model(tmp_path):
    """A torchvision-style detector takes ``images: list[Tensor]``; Triton sends tensors."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        class Detector(torch.nn.Module):
            def forward(self, images):
                return torch.stack([i.mean() for i in images])
        def get_model():
            return Detector()
        def get_samples():
            return [([torch.randn(3, 8, 8), torch.randn(3, 8, 8)],)]
    """))
    with pytest.raises(UserError, match=r"argument 0 is a list, not a tensor; .*; forward\(\) takes a list/dict of "
                                        r"tensors: wrap the model in an nn.Module whose forward takes tensors") as info:
        load_model_source(path)
    assert "\n" not in str(info.value)


def test_plain_non_tensor_sample_gets_no_wrap_hint(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\ndef get_model():\n    return torch.nn.Linear(2, 2)\n"
                    "def get_samples():\n    return [[1.0, 2.0]]\n")
    with pytest.raises(UserError, match="argument 0 is a float, not a tensor") as info:
        load_model_source(path)
    assert "wrap the model" not in str(info.value)


def test_generation_cache_output_is_refused_with_use_cache_false(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"gpt2_cache.py: forward\(\) returns a DynamicCache \(a generation cache, "
                                        r"past_key_values\), which cannot be served; set use_cache=False in "
                                        r"get_model\(\)"):
        load_model_source(ZOO / "gpt2_cache.py")
