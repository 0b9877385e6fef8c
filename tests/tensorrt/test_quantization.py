"""ModelOpt quantization for real on a tiny model (CPU: ONNX Runtime calibration, fake-quant torch)."""

import copy
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from aitune_triton.errors import UserError
from aitune_triton.tensorrt.config import ONNXAutoCastConfig, ONNXQuantizationConfig, TorchQuantizationConfig
from aitune_triton.tensorrt.quantization import (
    apply_onnx_quantization,
    apply_torch_quantization,
    forward_loop_over,
)

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).flatten(1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny().eval()
    path = tmp_path_factory.mktemp("quant") / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    rng = np.random.default_rng(0)
    calibration = [{"image": rng.standard_normal((b, 3, 8, 8)).astype(np.float32)} for b in (1, 4, 8, 2)]
    return model, path, calibration


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_int8_onnx_quantization_inserts_qdq_and_stays_close(tiny, tmp_path):
    _, path, calibration = tiny
    out = apply_onnx_quantization(path, tmp_path / "model.int8.onnx", ONNXQuantizationConfig(), calibration)
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 1
    model_io = onnx.load(str(out)).graph
    assert model_io.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O types kept
    for feed in calibration[:2]:
        ref, got = _run(path, feed), _run(out, feed)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=0.05 * float(np.abs(ref).max()))


def test_autocast_fp16_keeps_io_types(tiny, tmp_path):
    _, path, calibration = tiny
    out = apply_onnx_quantization(path, tmp_path / "model.fp16.onnx", ONNXAutoCastConfig(), calibration)
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    ref, got = _run(path, calibration[1]), _run(out, calibration[1])
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)


def test_onnx_quantization_input_errors(tiny, tmp_path):
    _, path, calibration = tiny
    with pytest.raises(UserError, match="calibration samples"):
        apply_onnx_quantization(path, tmp_path / "q.onnx", ONNXQuantizationConfig(), [])
    with pytest.raises(UserError, match="not overwrite"):
        apply_onnx_quantization(path, path, ONNXQuantizationConfig(), calibration)
    with pytest.raises(UserError, match="before export"):
        apply_onnx_quantization(path, tmp_path / "q.onnx", TorchQuantizationConfig(), calibration)


@pytest.mark.parametrize("qconfig, module", [
    (ONNXQuantizationConfig(), "modelopt.onnx.quantization"),
    (ONNXAutoCastConfig(), "modelopt.onnx.autocast"),
])
def test_missing_modelopt_is_a_user_error(tiny, tmp_path, monkeypatch, qconfig, module):
    _, path, calibration = tiny
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ModuleNotFoundError
    with pytest.raises(UserError, match="^nvidia-modelopt is required for ") as info:
        apply_onnx_quantization(path, tmp_path / "q.onnx", qconfig, calibration)
    assert str(info.value) == ("nvidia-modelopt is required for %s: pip install 'aitune-triton[tensorrt]'"
                               % type(qconfig).__name__)


def test_torch_int8_quantization(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    samples = [torch.randn(b, 16) for b in (1, 4, 8)]
    quantized = apply_torch_quantization(copy.deepcopy(model), TorchQuantizationConfig(calibration_steps=4),
                                         forward_loop_over(samples, lambda m, x: m(x), 4))
    quantizers = [n for n, _ in quantized.named_modules() if n.endswith(("input_quantizer", "weight_quantizer"))]
    assert len(quantizers) == 4
    with torch.no_grad():
        ref, got = model(samples[1]), quantized(samples[1])
    torch.testing.assert_close(got, ref, atol=0.05 * float(ref.abs().max()), rtol=0)


def test_torch_quantization_unknown_config():
    with pytest.raises(UserError, match="is not a ModelOpt config; use one of .*INT8_DEFAULT_CFG"):
        apply_torch_quantization(nn.Linear(2, 2), TorchQuantizationConfig("NOPE_CFG"), None)
