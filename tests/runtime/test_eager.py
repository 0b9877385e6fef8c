"""The eager format's torch half (aitune_eager.py): the quantized state_dict and per-image detections."""

from __future__ import annotations

import pickle
import sys

import pytest
import torch
from torch import nn

from aitune_triton.runtime.aitune_eager import PaddedDetections, import_user_module, load_state_dict, per_image_keys


def _quantized_lstm():
    torch.manual_seed(0)
    return torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.LSTM(4, 4)), {nn.LSTM}, dtype=torch.qint8)


def test_packed_params_of_a_quantized_model_load_weights_only_with_script_objects_allowed(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    torch.save(_quantized_lstm().state_dict(), path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k["weights_only"]) or real(*a, **k))
    model = _quantized_lstm()
    model.load_state_dict(load_state_dict(path, torch.device("cpu")))
    x = torch.randn(3, 2, 4)
    assert torch.equal(model(x)[0], _quantized_lstm()(x)[0]) and calls == [True, True]
    with pytest.raises(pickle.UnpicklingError):  # the allowance was scoped to that one load
        real(path, weights_only=True)


def test_plain_tensors_load_without_pickle(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k["weights_only"]) or real(*a, **k))
    assert set(load_state_dict(path, "cpu")) == {"weight", "bias"} and calls == [True]


class _Detector(nn.Module):
    def forward(self, images):
        return [{"boxes": torch.ones(n, 4) * n, "labels": torch.arange(n)} for n in (int(i.sum()) for i in images)]


def test_padded_detections_pads_and_cuts_to_max_detections_and_counts():
    out = PaddedDetections(_Detector(), 3)(torch.tensor([[1.0], [0.0], [5.0]]))
    assert list(out) == ["boxes", "labels", "num_detections"]
    assert out["boxes"].shape == (3, 3, 4) and out["num_detections"].tolist() == [1, 0, 3]
    assert out["labels"].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 2]]
    assert out["boxes"][0, :, 0].tolist() == [1.0, 0.0, 0.0]


def test_per_image_keys_wants_the_same_keys_and_one_count_per_image():
    assert per_image_keys([{"a": torch.ones(2)}, {"a": torch.ones(0)}]) == ["a"]
    assert per_image_keys([{"a": torch.ones(2)}, {"b": torch.ones(2)}]) is None
    assert per_image_keys([{"a": torch.ones(2), "b": torch.ones(3)}]) is None
    assert per_image_keys({"a": torch.ones(2)}) is None and per_image_keys([torch.ones(2)]) is None
    with pytest.raises(TypeError, match="one dict of tensors per image"):
        PaddedDetections(nn.Identity(), 2)(torch.ones(2))


def test_a_copied_model_py_with_dataclasses_under_future_annotations_imports_and_is_registered(tmp_path):
    source = tmp_path / "model.py"
    source.write_text("from __future__ import annotations\nimport dataclasses\nimport torch\n\n"
                      "@dataclasses.dataclass\nclass Settings:\n    width: int = 3\n\n"
                      "def get_model():\n    return torch.nn.Linear(Settings().width, 2)\n")
    module = import_user_module(source)
    assert sys.modules[module.__name__] is module and module.get_model().in_features == 3


def test_a_model_py_that_fails_to_import_is_not_left_registered(tmp_path):
    source = tmp_path / "model.py"
    source.write_text("raise RuntimeError('boom at import')\n")
    before = set(sys.modules)
    with pytest.raises(RuntimeError, match="boom at import"):
        import_user_module(source)
    assert set(sys.modules) == before
