"""child_codec: the real child requests and results round-trip through JSON; nothing else is constructed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from aitune_triton import child_codec
from aitune_triton.errors import AituneError, CandidateFailed, PerfError, UserError
from aitune_triton.export.torch_export import CheckRequest, CompileRequest
from aitune_triton.numerics import Tolerance
from aitune_triton.spec import AxisKind, IOSpec, normalize_sample, record_spec
from aitune_triton.tensorrt.build_child import BuildRequest
from aitune_triton.tensorrt.config import ONNXQuantizationConfig, TensorRTBackendConfig, TorchQuantizationConfig
from aitune_triton.tensorrt.plan import EngineIO, EngineTensor, PlanArtifact, PlanStamp
from aitune_triton.profile_set import ProfileMode, ProfileSet, TensorRTProfile
from aitune_triton.tensorrt.profiles import derive_profiles


class Tagger(nn.Module):
    def forward(self, tokens, mask):
        return {"logits": tokens.float().unsqueeze(-1) * mask.unsqueeze(-1), "count": mask.sum(-1)}


@pytest.fixture(scope="module")
def spec_and_samples():
    raw = [{"tokens": torch.ones(b, s, dtype=torch.int64), "mask": torch.ones(b, s)} for b, s in ((1, 4), (4, 8))]
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outputs = [Tagger()(**s.kwargs) for s in samples]
    return record_spec(Tagger(), samples, outputs), samples


def _round_trip(value):
    text = child_codec.dumps(value)
    json.loads(text)  # plain JSON, no NaN/Infinity literals
    return child_codec.loads(text)


def test_build_request_round_trips(spec_and_samples, tmp_path):
    spec, samples = spec_and_samples
    profile_set = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)
    assert len(profile_set.profiles) == 2
    trt_config = TensorRTBackendConfig(
        workspace_size=1 << 30, optimization_level=5, compatibility_level="ampere_plus", timing_cache=tmp_path / "tc",
        profiles=list(profile_set.profiles), device="cuda:1", version_compatible=True, build_timeout_s=math.inf,
        quantization_config=ONNXQuantizationConfig("int8", "entropy", nodes_to_exclude=("/head/.*",)))
    request = BuildRequest(tmp_path / "model.onnx", tmp_path / "model.plan", trt_config, profile_set)
    back = _round_trip(request)
    assert back == request and back.trt_config.key() == trt_config.key()
    assert isinstance(back.profile_set, ProfileSet) and all(isinstance(p, TensorRTProfile)
                                                            for p in back.trt_config.profiles)
    assert isinstance(back.trt_config.quantization_config, ONNXQuantizationConfig)
    assert back.profile_set.profiles[1].shapes("tokens") == profile_set.profiles[1].shapes("tokens")
    assert isinstance(back.trt_config.timing_cache, Path) and back.trt_config.build_timeout_s == math.inf
    from aitune_triton.tensorrt.plan_check import PlanCheckRequest

    checked = BuildRequest(tmp_path / "model.onnx", tmp_path / "model.plan", trt_config, profile_set,
                           PlanCheckRequest(tmp_path / "reference.npz", {"logits": Tolerance(0.02, 0.01)}, "fp16"))
    assert _round_trip(checked) == checked and isinstance(_round_trip(checked).check.tolerances["logits"], Tolerance)
    torch_q = TensorRTBackendConfig(quantization_config=TorchQuantizationConfig("FP8_DEFAULT_CFG", 3),
                                    profiles=ProfileMode.SAMPLES_USED)
    assert _round_trip(torch_q) == torch_q and _round_trip(torch_q).profiles is ProfileMode.SAMPLES_USED


def test_check_and_compile_requests_round_trip(spec_and_samples, tmp_path):
    spec, _ = spec_and_samples
    assert spec.inputs[0].axes[0].kind is AxisKind.BATCH
    for tolerance in (Tolerance(1e-3, 1e-2), None):
        request = CheckRequest(spec, tmp_path / "cases.pt", tmp_path / "1", "aoti", "cpu", tolerance)
        back = _round_trip(request)
        assert back == request and isinstance(back.spec, IOSpec) and back.spec.inputs[0].axes[0].kind is AxisKind.BATCH
    compile_request = CompileRequest(tmp_path / "model.pt2", tmp_path / "model.aoti.pt2")
    assert _round_trip(compile_request) == compile_request


def test_results_round_trip(tmp_path):
    io = EngineIO((EngineTensor("x", "input", "float32", (-1, 3), (((1, 3), (4, 3), (8, 3)),)),
                   EngineTensor("y", "output", "float16", (-1, 3))), 1)
    stamp = PlanStamp("10.13.0", "12.8", None, "NVIDIA H200", "9.0", "ampere_plus", True, True, 12.5)
    artifact = PlanArtifact(tmp_path / "model.plan", io, stamp, "0123456789abcdef")
    assert _round_trip(artifact) == artifact
    from aitune_triton.tensorrt.plan_check import OutputCheck, PlanCheck

    check = PlanCheck(True, 2, "fp32", (OutputCheck("y", True, 1e-5, 1e-4, 1e-4, 1e-3),))
    assert _round_trip(PlanArtifact(tmp_path / "model.plan", io, stamp, "k", check)).check == check
    errors = {"logits": 0.0, "count": 1.5e-7, "nan": math.nan}
    back = _round_trip(errors)
    assert back["count"] == 1.5e-7 and math.isnan(back["nan"]) and type(back["logits"]) is float
    mixed = {1: ("a", [None, True]), ("k", 2): -math.inf, "$dict": {"tuple": 1}}
    assert _round_trip(mixed) == mixed


@pytest.mark.parametrize("value, type_name", [
    ({1, 2}, "builtins.set"),
    ([torch.zeros(1)], "torch.Tensor"),
    ((1, json.JSONDecoder()), "json.decoder.JSONDecoder"),
    (1 + 2j, "builtins.complex"),
    (Tolerance, "builtins.type"),  # a dataclass itself, not an instance
])
def test_encoding_an_unknown_type_names_it(value, type_name):
    with pytest.raises(TypeError, match="cannot send a %s" % type_name.replace(".", r"\.")):
        child_codec.dumps(value)


def test_encoding_a_dataclass_outside_the_package_is_refused():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Elsewhere:
        x: int

    with pytest.raises(TypeError, match="only the dataclasses of aitune_triton"):
        child_codec.dumps(Elsewhere(1))


@pytest.mark.parametrize("payload, message", [
    ({"dataclass": "subprocess:CompletedProcess", "fields": {"args": "id", "returncode": 0}},
     "refusing type subprocess:CompletedProcess"),
    ({"dataclass": "aitune_triton.tensorrt.plan:Path", "fields": {}}, "not a class defined there"),
    ({"dataclass": "aitune_triton.errors:UserError", "fields": {}}, "errors:UserError is not a dataclass"),
    ({"enum": "aitune_triton.procs:ChildFailed", "value": "x"}, "ChildFailed is not an Enum"),
    ({"dataclass": "aitune_triton.numerics:Tolerance", "fields": {"atol": 1.0, "rtol": 1.0, "code": "x"}},
     "Tolerance has no field"),
    ({"dataclass": "aitune_triton.numerics:Tolerance", "fields": {"atol": 1.0}}, "cannot construct"),
    ({"dataclass": "aitune_triton.procs:subprocess.Popen", "fields": {"args": "id"}}, "not a class defined there"),
    ({"dataclass": "aitune_triton.procs:os.system", "fields": {}}, "not a class defined there"),
    ({"dataclass": "aitune_triton.procs:__builtins__", "fields": {}}, "refusing type"),
    ({"enum": "aitune_triton.spec:AxisKind", "value": "sideways"}, "not a valid AxisKind"),
    ({"reduce": ["os:system", ["id"]]}, "unknown or malformed tag 'reduce'"),
    ({"tuple": [1], "path": "/x"}, "expected one tag key"),
    ({"float": "1e999"}, "malformed tag 'float'"),
    ({"profile": {"x": [[1, 2], [4, 2]]}}, "malformed TensorRTProfile"),
])
def test_decoding_refuses_what_the_codec_would_not_write(payload, message):
    with pytest.raises(ValueError, match=message):
        child_codec.loads(json.dumps(payload))


def test_json_constants_are_refused():
    with pytest.raises(ValueError, match="NaN is not JSON"):
        child_codec.loads('{"tuple": [NaN]}')


def test_exceptions_come_back_only_as_package_errors_or_builtins():
    error = child_codec.decode_exception(child_codec.encode_exception(
        UserError("bad shape", log_path=Path("/tmp/b.log"), details="input x")))
    assert type(error) is UserError and str(error) == "bad shape"
    assert (error.log_path, error.details) == ("/tmp/b.log", "input x")
    perf = child_codec.decode_exception(child_codec.encode_exception(PerfError("unstable", partial=[1], details="d")))
    assert type(perf) is PerfError and perf.details == "d" and perf.partial is None
    assert type(child_codec.decode_exception(child_codec.encode_exception(CandidateFailed("no")))) is CandidateFailed
    assert type(child_codec.decode_exception(child_codec.encode_exception(KeyError("k")))) is KeyError
    assert child_codec.exception_type(child_codec.encode_exception(OSError("x"))) == "builtins.OSError"
    # named like ours but not an AituneError, outside the package, or not an exception at all: not re-created
    for module, qualname in (("aitune_triton.procs", "Watchdog"), ("subprocess", "CalledProcessError"),
                             ("builtins", "print"), ("builtins", "SystemExit"), ("aitune_triton.errors", "os")):
        assert child_codec.decode_exception({"module": module, "qualname": qualname, "message": "m"}) is None
    assert issubclass(type(error), AituneError)


def test_the_codec_needs_neither_numpy_nor_torch():
    code = ("import sys; from aitune_triton import child_codec, procs; "
            "print(sorted(m for m in ('numpy', 'torch', 'polygraphy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
