"""The seed's three quantization configs applied for real by ``generate`` on the examples.

For each config: the staged ONNX carries Q/DQ (or Cast) nodes, ONNX Runtime CPU matched eager
within the precision's tolerance, the manifest's ``tensorrt`` section records what was applied,
and ``build_plan.sh`` builds it with the right flags. ModelOpt calibrates with ONNX Runtime's CPU
provider here; the models are the examples' small ones with their few samples.
"""

import json
import re
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from aitune_triton import api
from aitune_triton.errors import ModelError, UserError
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.tensorrt import quantized_onnx
from aitune_triton.tensorrt.config import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
)
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.tensorrt.quantized_onnx import QUANTIZED_TOLERANCES, stage_onnx
from aitune_triton.tensorrt.section import PlanStatus, QuantMethod, TensorRTSection
from aitune_triton.triton.manifest import Manifest
from aitune_triton.reference_data import load_reference
from aitune_triton.validate.checks.version_stamp import version_verdict

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed")
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# (example, quantization config, method, precision, graph nodes that must be there, build flags)
CASES = {
    "onnx_int8": ("cnn", ONNXQuantizationConfig(), QuantMethod.ONNX_PTQ, "int8",
                  ("QuantizeLinear", "DequantizeLinear"), ["--stronglyTyped"]),
    "onnx_autocast_fp16": ("custom_profiles", ONNXAutoCastConfig(), QuantMethod.ONNX_AUTOCAST, "fp16",
                           ("Cast",), ["--stronglyTyped"]),
    "torch_int8": ("cnn", TorchQuantizationConfig(calibration_steps=2), QuantMethod.TORCH_PTQ, "int8",
                   ("QuantizeLinear", "DequantizeLinear"), ["--int8"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def generated(request, tmp_path_factory):
    example, qconfig, *_ = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param) / "repo"
    # precision back to fp32: custom_profiles asks for fp16 flags, which a quantization config replaces
    overrides = {"backends": ("tensorrt",), "tensorrt": {"quantization_config": qconfig, "precision": "fp32"}}
    result = api.generate(EXAMPLES / example / "model.py", out, overrides=overrides)
    (model_dir,) = [p for p in out.iterdir() if (p / "manifest.json").exists()]
    return request.param, model_dir, result


def test_staged_onnx_carries_the_quantization(generated):
    case, model_dir, _ = generated
    *_, nodes, _ = CASES[case]
    graph = onnx.load(str(model_dir / "tensorrt" / "model.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    for op in nodes:
        assert ops[op] >= 1, (case, op, ops)
    # the I/O keeps the spec's types: config.pbtxt and clients do not change
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.FLOAT}
    assert not list(model_dir.glob("tensorrt/.quantize-*"))  # no leftovers of the work dir


def test_manifest_records_what_was_applied_and_the_check(generated):
    case, model_dir, result = generated
    _, qconfig, method, precision, nodes, flags = CASES[case]
    raw = json.loads((model_dir / "manifest.json").read_text())["tensorrt"]
    assert raw["status"] == "pending" and raw["quantization"]["method"] == method.value
    section = Manifest.load(model_dir).tensorrt
    assert isinstance(section, TensorRTSection) and section.status is PlanStatus.PENDING
    record = section.quantization
    assert record.precision == precision and record.config["type"] == type(qconfig).__name__
    assert record.tool.startswith("nvidia-modelopt ") and list(record.build_flags) == flags
    assert all(record.graph[op] >= 1 for op in nodes)
    assert record.calibration_samples >= 1 or method is QuantMethod.ONNX_AUTOCAST
    # the ORT check against eager, per output, with the precision's tolerance: atol = fraction x peak
    fraction, rtol = QUANTIZED_TOLERANCES[precision]
    cases = load_reference(model_dir / "reference.npz")
    assert record.check["cases"] == ["sample %d" % i for i in range(len(cases))] and not record.check["skipped"]
    for out in record.check["outputs"]:
        peak = max(float(np.abs(c.outputs[out["name"]]).max()) for c in cases)
        assert out["ok"] and out["rtol"] == rtol
        assert out["atol"] == pytest.approx(fraction * peak, rel=1e-5)
        assert 0 < out["max_abs_err"] <= out["atol"] + rtol * peak  # it really is quantized, and close
    assert record.tolerance_rule.startswith("%s: atol = %g x peak" % (precision, fraction))
    assert any("TensorRT ONNX quantized: %s by %s" % (precision, method.value) in n for n in result.notes)
    # validate reports it for the staged model
    status, detail = version_verdict(Manifest.load(model_dir), "2.52.0")
    assert status == "skip" and "quantization: %s by %s" % (precision, method.value) in detail


def test_build_script_flags(generated):
    case, model_dir, _ = generated
    *_, flags = CASES[case]
    script = (model_dir / "tensorrt" / "build_plan.sh").read_text()
    line = script[script.index('"$TRTEXEC" \\'):].split("\n\nprintf")[0]
    args = shlex.split(line.replace("\\\n", " "))[1:]
    precision_args = [a for a in args if a in ("--stronglyTyped", "--fp16", "--bf16", "--int8", "--fp8")]
    assert precision_args == flags
    assert "--onnx=model.onnx" in args
    assert re.search(r"^# Quantized ONNX: .* by modelopt\.", script, re.M)


# ------------------------------------------------------------------------ options that cannot be honoured


class Tiny(nn.Module):
    """Two small convolutions (ModelOpt's int8 PTQ quantizes Convs of this size, its fp8 PTQ does not)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, image):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(image)))).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    samples = [normalize_sample(torch.randn(b, 3, 8, 8), i) for i, b in enumerate((1, 4, 8))]
    with torch.no_grad():
        outputs = [model(*s.args) for s in samples]
    return model, record_spec(model, samples, outputs), samples, outputs


def _stage(tiny, tmp_path, qconfig, **trt):
    model, spec, samples, outputs = tiny
    profiles = derive_profiles(spec, samples, ProfileMode.SINGLE)
    return stage_onnx(model, spec, samples, outputs, profiles, tmp_path / "tensorrt" / "model.onnx",
                      TensorRTBackendConfig(quantization_config=qconfig, **trt))


def test_exclusion_pattern_that_matches_nothing(tiny, tmp_path):
    with pytest.raises(UserError, match=r"nodes_to_exclude pattern 'no_such_node' matches no node of the exported "
                                        r"ONNX \(its nodes are named like"):
        _stage(tiny, tmp_path, ONNXQuantizationConfig(nodes_to_exclude=("no_such_node",)))
    assert not (tmp_path / "tensorrt" / "model.onnx").exists()


def test_exclusion_is_applied(tiny, tmp_path):
    # the dynamo exporter names the second Conv node_conv2d_1 (the error above lists the names)
    staged = _stage(tiny, tmp_path, ONNXQuantizationConfig(nodes_to_exclude=("node_conv2d_1",)))
    assert staged.quantization.excluded_nodes == ("node_conv2d_1",)
    graph = onnx.load(str(staged.artifact.path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    fed_by_dq = {n.name: any(producers.get(i) == "DequantizeLinear" for i in n.input)
                 for n in graph.node if n.op_type == "Conv"}
    assert fed_by_dq == {"node_conv2d": True, "node_conv2d_1": False}


def test_precision_modelopt_cannot_apply_to_these_ops(tiny, tmp_path):
    # ModelOpt's fp8 PTQ skips Convs this small: nothing would be quantized
    with pytest.raises(UserError, match=r"ONNXQuantizationConfig\(precision='fp8'\) quantized no node of this model"):
        _stage(tiny, tmp_path, ONNXQuantizationConfig(precision="fp8"))


def test_torch_config_with_tensorrt_only_ops_is_refused(tiny, tmp_path):
    with pytest.raises(UserError, match=r"FP8_DEFAULT_CFG.*exports TensorRT-only operators \(trt::TRT_FP8"):
        _stage(tiny, tmp_path, TorchQuantizationConfig("FP8_DEFAULT_CFG", calibration_steps=1))


def test_a_miss_fails_with_the_table(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(quantized_onnx.QUANTIZED_TOLERANCES, "int8", (1e-7, 0.0))  # demand near-exactness
    with pytest.raises(ModelError, match=r"^the int8-quantized ONNX \(ONNXQuantizationConfig\) does not match") as info:
        _stage(tiny, tmp_path, ONNXQuantizationConfig())
    message = str(info.value)
    assert message.startswith("the int8-quantized ONNX (ONNXQuantizationConfig) does not match eager PyTorch "
                              "within the int8 tolerance")
    assert re.search(r"output_0 .* FAIL", message) and "nodes_to_exclude" in message
    assert not (tmp_path / "tensorrt" / "model.onnx").exists()


@pytest.mark.parametrize("overrides, words", [
    ({"backends": ("python",), "tensorrt": {"quantization_config": ONNXQuantizationConfig()}},
     "applies to the TensorRT backend only"),
    ({"tensorrt": {"quantization_config": ONNXAutoCastConfig(), "precision": "fp16"}},
     "both choose the precision"),
])
def test_generate_refuses_before_writing(tmp_path, overrides, words):
    out = tmp_path / "repo"
    with pytest.raises(UserError, match=words):
        api.generate(EXAMPLES / "cnn" / "model.py", out, overrides=overrides)
    assert not out.exists() or not any(out.iterdir())


def test_quantized_graph_onnx_runtime_cannot_run_is_refused(tmp_path):
    # ModelOpt's fp8 PTQ of the encoder puts float8 tensors through Transpose, which ONNX Runtime rejects:
    # the graph cannot be checked against eager, so it is not staged
    from aitune_triton.source import load_model_source

    source = load_model_source(EXAMPLES / "encoder" / "model.py")
    spec = record_spec(source.model, source.samples, source.outputs, None)
    profiles = derive_profiles(spec, source.samples, ProfileMode.SINGLE)
    with pytest.raises(UserError, match=r"^ONNXQuantizationConfig\(precision='fp8'\): ONNX Runtime CPU cannot run "
                                        r"the graph ModelOpt produced \(.*float8.*\), so it cannot be checked against "
                                        r"eager"):
        stage_onnx(source.model, spec, source.samples, source.outputs, profiles, tmp_path / "tensorrt" / "model.onnx",
                   TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig(precision="fp8")))
    assert not (tmp_path / "tensorrt" / "model.onnx").exists()


class Tokens(nn.Module):
    """Linear layers on (batch, tokens, features): exported as MatMul, which ModelOpt's fp8 PTQ quantizes."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(256, 256), nn.Linear(256, 64)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_fp8_where_modelopt_supports_it(tmp_path):
    torch.manual_seed(0)
    model = Tokens().eval()
    samples = [normalize_sample(torch.randn(b, 16, 256), i) for i, b in enumerate((1, 2, 4))]
    with torch.no_grad():
        outputs = [model(*s.args) for s in samples]
    staged = _stage((model, record_spec(model, samples, outputs), samples, outputs), tmp_path,
                    ONNXQuantizationConfig(precision="fp8"))
    record = staged.quantization
    assert record.precision == "fp8" and record.graph["QuantizeLinear"] >= 2 and record.check_ok
    initializers = onnx.load(str(staged.artifact.path)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in initializers)  # real fp8 weights/zero points
    fraction, rtol = QUANTIZED_TOLERANCES["fp8"]
    assert all(o["ok"] and o["rtol"] == rtol for o in record.check["outputs"])
