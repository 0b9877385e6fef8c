"""Fallback artifacts (AOTInductor / ExportedProgram / eager) and the generated Python-backend model.py.

The model.py is exercised in-process against a stand-in for ``triton_python_backend_utils`` that
moves tensors through DLPack like the real stub; tests/live/test_fallback_live.py runs it in Triton.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest
import torch
import torch.utils.dlpack

from aitune_triton.errors import ModelError, UserError
from aitune_triton.export import torch_export
from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.export.torch_export import build_fallback, compare, reference_cases
from aitune_triton.export.torch_program import dynamic_dims
from aitune_triton.numerics import tolerance_for
from aitune_triton.source import load_model_source
from aitune_triton.spec import record_spec
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.triton.python_model import graph_batch_sizes, python_model_data, write_python_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def inductor_cache(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))


def prepare(path: Path, max_batch_size: int | None = None):
    src = load_model_source(path)
    spec = record_spec(src.model, src.samples, src.outputs)
    profiles = derive_profiles(spec, src.samples, ProfileMode.SINGLE, max_batch_size)
    return src, spec, profiles


def build(src, spec, profiles, version_dir: Path, preferred: str, outputs=None) -> FallbackArtifact:
    return build_fallback(src.path, src.model, spec, src.samples, outputs or src.outputs, profiles, version_dir,
                          preferred=preferred, timeout_s=300)


def write_model(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(body))
    return path


# ----------------------------------------------------------------------------- a stand-in for the stub


class FakeTensor:
    def __init__(self, name: str, tensor: torch.Tensor):
        self._name, self.tensor = name, tensor

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return self.tensor.device.type == "cpu"

    def to_dlpack(self):
        return torch.utils.dlpack.to_dlpack(self.tensor)

    @staticmethod
    def from_dlpack(name, capsule):
        return FakeTensor(name, torch.utils.dlpack.from_dlpack(capsule).clone())


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, msg, code="INTERNAL"):
        self.msg, self.code = msg, code

    def message(self):
        return self.msg


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name(): t.tensor for t in output_tensors}
        self.error = error


class FakeModelException(Exception):
    pass


def fake_pb_utils() -> types.ModuleType:
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = FakeTensor
    mod.TritonError = FakeError
    mod.InferenceResponse = FakeResponse
    mod.TritonModelException = FakeModelException
    mod.get_input_tensor_by_name = lambda request, name: (FakeTensor(name, request[name]) if name in request else None)
    return mod


def serve(monkeypatch, version_dir: Path, spec, art, max_batch_size: int, params: dict | None = None,
          kind: str = "CPU", before_init=None, **options):
    """Write the runtime for ``art`` into ``version_dir``, import its model.py as the stub would and
    initialize one instance (the stub puts the version directory on sys.path). ``before_init(module)``
    may patch the imported model.py first (e.g. the host it sees)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    monkeypatch.syspath_prepend(str(version_dir))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)  # the runtime sets it
    monkeypatch.delitem(sys.modules, "aitune_runtime", raising=False)
    write_python_model(version_dir, spec, art, max_batch_size, **options)
    name = "generated_model_%s" % uuid.uuid4().hex[:8]
    module_spec = importlib.util.spec_from_file_location(name, version_dir / "model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if before_init is not None:
        before_init(module)
    model = module.TritonPythonModel()
    config = {"max_batch_size": max_batch_size,
              "parameters": {k: {"string_value": v} for k, v in (params or {}).items()}}
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": kind, "model_instance_device_id": "0",
                      "model_instance_name": "m_0", "model_name": "m", "model_repository": str(version_dir.parent),
                      "model_version": version_dir.name})
    return model


def eager(src, spec, feed):
    from aitune_triton.spec import call_with_feed, flatten_outputs

    with torch.inference_mode():
        return dict(flatten_outputs(call_with_feed(src.model, spec, feed)))


def assert_matches(spec, response, expected):
    assert response.error is None, response.error.message()
    for t in spec.outputs:
        assert compare(response.outputs[t.name], expected[t.name], tolerance_for(t.dtype)) is None, t.name


# ----------------------------------------------------------------------------- the host the artifact needs


def test_a_package_for_an_isa_the_host_lacks_is_refused_in_one_line_before_it_is_loaded(tmp_path, monkeypatch):
    """An AVX-512 package on an AVX2-only host dies with an invalid opcode once loaded: the runtime
    refuses it at initialize() instead, naming what the host lacks and the fix. The host is faked
    (``cpu_flags_here``), so the test means the same on any CPU; no package is compiled or loaded."""
    from aitune_triton.runtime.aitune_runtime import Requirements

    src, spec, profiles = prepare(EXAMPLES / "cnn" / "model.py")
    version_dir = tmp_path / "cnn" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.aoti.pt2").write_bytes(b"not loaded")
    art = FallbackArtifact("aoti", "cpu", ("model.aoti.pt2",), flat_io=True)
    needs = Requirements(python="3.11", torch=torch.__version__, torch_rule="exact",
                         torch_min="%d.%d.%d" % tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:3]),
                         cuda=None, triton_min="2.51", machine="x86_64", cpu_isa="AVX512 AVX512_VNNI",
                         cpu_flags=("avx", "avx2", "avx512bw", "avx512f", "avx512_vnni", "fma"))

    def avx2_host(module):
        monkeypatch.setattr(module.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(module.rt, "cpu_flags_here", lambda: frozenset({"sse4_2", "avx", "avx2", "fma"}))
        monkeypatch.setattr(module, "_load", lambda *a: pytest.fail("the package was loaded"))

    with pytest.raises(FakeModelException) as info:
        serve(monkeypatch, version_dir, spec, art, 8, before_init=avx2_host, requirements=needs)
    assert str(info.value) == (
        "model m: its AOTInductor package needs x86_64 CPUs with AVX512 AVX512_VNNI but this host's CPU "
        "lacks avx512bw avx512f avx512_vnni: regenerate it on such a host or with `--fallback-format export` / "
        "`--portable` (any host)")
    readme = (tmp_path / "cnn" / "README.md").read_text()
    assert "| host | x86_64 CPUs with AVX512 AVX512_VNNI (avx avx2 avx512bw avx512f avx512_vnni fma) |" in readme


# ----------------------------------------------------------------------------- artifact selection


@pytest.mark.slow
def test_aoti_tiny_mlp_on_cpu(tmp_path, monkeypatch):
    path = write_model(tmp_path, """
        import torch
        def get_model():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
        def get_samples():
            g = torch.Generator().manual_seed(0)
            return [torch.randn(b, 8, generator=g) for b in (1, 3, 8)]
    """)
    src, spec, profiles = prepare(path)
    art = build(src, spec, profiles, tmp_path / "1", "auto")
    assert (art.format, art.device, art.files, art.skipped) == ("aoti", "cpu", ("model.aoti.pt2",), ())
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == ["model.aoti.pt2"]
    assert art.axis_ranges == {"input": ((1, 8), (8, 8))}
    assert art.max_errors["output_0"] < 1e-4
    model = serve(monkeypatch, tmp_path / "1", spec, art, 8)
    feeds = [{"input": torch.randn(b, 8)} for b in (1, 5, 2)]
    for response, feed in zip(model.execute(feeds), feeds, strict=True):
        assert_matches(spec, response, eager(src, spec, feed))
    # AOTInductor checks neither dtypes nor shapes: the model.py must
    bad = model.execute([{"input": torch.randn(9, 8)}, {"input": torch.randn(2, 8, dtype=torch.float64)},
                         {"input": torch.randn(2, 7)}])
    assert "axis 0 is 9, the model takes 1..8" in bad[0].error.message()
    assert "dtype torch.float64" in bad[1].error.message()
    assert "axis 1 is 7" in bad[2].error.message()
    assert {r.error.code for r in bad} == {"INVALID_ARG"}


def test_forced_export_encoder_serves_grouped_requests(tmp_path, monkeypatch):
    src, spec, profiles = prepare(EXAMPLES / "encoder" / "model.py")
    art = build(src, spec, profiles, tmp_path / "1", "export")
    assert art.format == "export" and art.files == ("model.export.pt2",)
    assert art.skipped == (("aoti", "not requested (fallback format 'export')"),)
    assert art.axis_ranges["input_ids"] == art.axis_ranges["attention_mask"] == ((1, 4), (8, 16))
    assert art.row_independent
    model = serve(monkeypatch, tmp_path / "1", spec, art, profiles.max_batch_size)
    g = torch.Generator().manual_seed(5)

    def request(batch, seq, vocab=1000):
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[:, -1] = 0
        return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g), "attention_mask": mask}

    good = [request(1, 8), request(2, 12), request(1, 8), request(1, 12)]
    bad_values = request(1, 8, vocab=5000)  # embedding index out of range: its forward raises
    out_of_range = request(1, 20)
    responses = model.execute(good[:2] + [bad_values] + good[2:] + [out_of_range])
    assert len(responses) == 6
    for response, feed in zip(responses[:2] + responses[3:5], good, strict=True):
        assert_matches(spec, response, eager(src, spec, feed))
    assert responses[2].error.code == "INTERNAL" and "forward failed" in responses[2].error.message()
    assert responses[5].error.code == "INVALID_ARG" and "axis 1 is 20, the model takes 8..16" in \
        responses[5].error.message()


def test_data_dependent_model_falls_back_to_eager(tmp_path, monkeypatch):
    path = write_model(tmp_path, """
        import torch
        class Branchy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 2)
            def forward(self, x):
                if x.sum() > 0:  # control flow on tensor values: torch.export cannot trace it
                    return self.lin(x)
                return -self.lin(x)
        def get_model():
            torch.manual_seed(0)
            return Branchy().eval()
        def get_samples():
            return [torch.ones(1, 4), -torch.ones(3, 4)]
    """)
    src, spec, profiles = prepare(path)
    art = build(src, spec, profiles, tmp_path / "1", "auto")
    assert art.format == "eager" and art.files == ("user_model.py", "state_dict.pt")
    assert [f for f, _ in art.skipped] == ["aoti", "export"]
    assert all("torch.export failed" in reason for _, reason in art.skipped)
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == ["state_dict.pt", "user_model.py"]
    model = serve(monkeypatch, tmp_path / "1", spec, art, profiles.max_batch_size,
                  params={"TORCH_NUM_THREADS": str(torch.get_num_threads())})
    feeds = [{"x": torch.ones(2, 4)}, {"x": -torch.ones(1, 4)}]
    for response in model.execute(feeds):
        # one forward for the batch: the branch is taken once for the concatenated inputs
        assert response.error is None
    both = torch.cat([feeds[0]["x"], feeds[1]["x"]])
    assert torch.equal(torch.cat([r.outputs["output_0"] for r in model.execute(feeds)]), src.model(both))


def test_real_specialisation_is_not_deferred_to_a_runtime_assert(tmp_path):
    """A guard torch.export cannot prove is retried as a runtime assert (CUDA attention emits
    "min(s, 2*s) == s"), but only if the program runs over the whole declared range: a true
    specialisation (even lengths only) must still fall back, with the failing size named."""
    path = write_model(tmp_path, """
        import torch
        class EvenOnly(torch.nn.Module):
            def forward(self, x):
                return x * 2 if x.shape[1] % 2 == 0 else x * 3
        def get_model():
            return EvenOnly()
        def get_samples():
            return [torch.randn(1, 4), torch.randn(2, 8), torch.randn(3, 6)]
    """)
    src, spec, profiles = prepare(path)
    art = build(src, spec, profiles, tmp_path / "1", "auto")
    assert art.format == "eager"
    reason = dict(art.skipped)["export"]
    assert "Constraints violated" in reason and "with runtime asserts size 5 of x_1 fails" in reason
    assert art.axis_ranges["x"] == ((1, 4), (4, 8))  # eager too is bounded by the spec's range (the envelope)


def test_check_rejects_a_mismatching_artifact(tmp_path):
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    wrong = [(o[0] + 0.5, o[1], o[2]) for o in src.outputs]
    with pytest.raises(ModelError, match=r"fallback format 'export' failed: output 'output_0' differs from eager on "
                                         r"sample 0: max \|err\| 0.5"):
        build(src, spec, profiles, tmp_path / "1", "export", outputs=wrong)
    assert not any((tmp_path / "1").iterdir())
    flipped = [(o[0], o[1], ~o[2]) for o in src.outputs]
    with pytest.raises(ModelError, match=r"output 'output_2' differs .* values differ \(exact dtype torch.bool\)"):
        build(src, spec, profiles, tmp_path / "2", "export", outputs=flipped)


def test_a_tolerance_miss_names_the_knobs_that_loosen_it(tmp_path):
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    wrong = [(o[0] + 0.5, o[1], o[2]) for o in src.outputs]
    with pytest.raises(ModelError, match=r"differs from eager .*; if the difference is expected at this precision, "
                                         r"loosen the check with generate --atol/--rtol \(per element\) or --rel-l2 "
                                         r"\(relative L2 error\), or GenerateConfig\(atol=, rtol=, rel_l2=\)$"):
        build(src, spec, profiles, tmp_path / "1", "export", outputs=wrong)


def test_the_eager_artifact_is_never_refused_against_itself(tmp_path, caplog):
    """A reference that differs from what the module computes (non-deterministic kernels, another
    device's rounding) is logged for eager, never a refusal: eager *is* the reference."""
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    wrong = [(o[0] + 0.5, o[1], ~o[2]) for o in src.outputs]
    art = build(src, spec, profiles, tmp_path / "1", "eager", outputs=wrong)
    assert art.format == "eager" and art.max_errors["output_0"] == pytest.approx(0.5, rel=1e-3)


def test_reference_outputs_are_recomputed_on_the_artifact_device(tmp_path):
    """Outputs computed elsewhere (here: on the meta device, shapes only) are not the reference of a
    ``cpu`` artifact: every case is rerun on the device, so the check compares like with like."""
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    elsewhere = [tuple(t.to("meta") for t in o) for o in src.outputs]
    cases = reference_cases(src.model, spec, src.samples, elsewhere, 16, device="cpu")
    for (_, _, got), out in zip(cases[:len(src.outputs)], src.outputs, strict=True):
        assert all(got[n].device.type == "cpu" for n in got)
        assert torch.equal(got["output_0"], out[0])
    art = build(src, spec, profiles, tmp_path / "1", "export", outputs=elsewhere)
    assert art.format == "export" and art.max_errors["output_0"] < 1e-4



def test_a_crashing_or_hanging_check_child_is_one_line_and_its_output_is_logged(tmp_path, monkeypatch):
    """The check runs in a child (``export_child``): a crash names the signal and the innermost frame
    faulthandler printed, a hang the timeout; either way the child's output lands in fallback.log."""
    (tmp_path / "fake_check_child.py").write_text(textwrap.dedent("""
        import os, signal, time

        def crash(request):
            print("checking", request.format, flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)

        def hang(request):
            time.sleep(600)
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    monkeypatch.setattr(torch_export, "CHECK_TARGET", "fake_check_child:crash")
    with pytest.raises(ModelError, match=r"^fallback format 'eager' failed: eager check crashed \(signal SIGSEGV, "
                                         r"innermost frame: File \".*fake_check_child.py\", line 6 in crash\)$"):
        build(src, spec, profiles, tmp_path / "m" / "1", "eager")
    logged = (tmp_path / "m" / "logs" / "fallback.log").read_text()
    assert "===== eager check (exit -11) =====" in logged and "checking eager" in logged
    monkeypatch.setattr(torch_export, "CHECK_TARGET", "fake_check_child:hang")
    with pytest.raises(ModelError, match=r"^fallback format 'eager' failed: eager check timed out after 2 s"):
        build_fallback(src.path, src.model, spec, src.samples, src.outputs, profiles, tmp_path / "n" / "1",
                       preferred="eager", timeout_s=2)
    assert "===== eager check (timed out) =====" in (tmp_path / "n" / "logs" / "fallback.log").read_text()


def test_multi_io_export_mixed_dtypes(tmp_path, monkeypatch):
    """int32 + keyword-only bool inputs, a float / int64 / bool tuple out, batch-only (rank 1) tensors."""
    src, spec, profiles = prepare(EXAMPLES / "multi_io" / "model.py")
    art = build(src, spec, profiles, tmp_path / "1", "export")
    assert art.max_errors == {"output_0": 0.0, "output_1": 0.0, "output_2": 0.0}
    model = serve(monkeypatch, tmp_path / "1", spec, art, profiles.max_batch_size)
    g = torch.Generator().manual_seed(9)
    feeds = [{"features": torch.randn(b, 4, generator=g),
              "category": torch.randint(0, 16, (b,), generator=g, dtype=torch.int32),
              "valid": torch.rand(b, generator=g) > 0.5} for b in (1, 4, 3)]
    for response, feed in zip(model.execute(feeds), feeds, strict=True):
        assert_matches(spec, response, eager(src, spec, feed))
    as_uint8 = dict(feeds[0], valid=feeds[0]["valid"].to(torch.uint8))  # how some stubs hand bools over
    assert_matches(spec, model.execute([as_uint8])[0], eager(src, spec, feeds[0]))


# ----------------------------------------------------------------------------- pieces


def test_dynamic_dims_share_the_sequence_axis():
    src, spec, profiles = prepare(EXAMPLES / "encoder" / "model.py")
    dims, ranges = dynamic_dims(spec, src.samples, profiles, profiles.max_batch_size)
    assert dims["input_ids"][0] is dims["attention_mask"][0]
    assert dims["input_ids"][1] is dims["attention_mask"][1]
    assert ranges["input_ids"] == ((1, 4), (8, 16))


def test_reference_cases_add_both_ends_of_the_batch_range():
    src, spec, profiles = prepare(EXAMPLES / "cnn" / "model.py", max_batch_size=16)
    cases = reference_cases(src.model, spec, src.samples, src.outputs, 16)
    batches = [feed["image"].shape[0] for _, feed, _ in cases]
    assert batches == [1, 4, 8, 8, 16]  # batch 1 is sample 0's shape already
    label, feed, out = cases[-1]
    assert label == "batch 16, axes at their min (from sample 2)" and torch.equal(feed["image"][8:], feed["image"][:8])
    assert out["output_0"].shape == (16, 10)
    # Triton never sends more than max_batch_size: larger samples are checked on their first rows
    small = reference_cases(src.model, spec, src.samples, src.outputs, 4)
    assert [(label, f["image"].shape[0]) for label, f, _ in small][1:] == [
        ("sample 1", 4), ("sample 2 cut to batch 4", 4), ("sample 3 cut to batch 4", 4)]
    assert torch.allclose(small[2][2]["output_0"], src.outputs[2][:4], atol=1e-6)


def test_reference_cases_reach_the_envelope_corners_of_every_dynamic_axis():
    """The spec holds the serving envelope: batch 1 and max batch at each axis's min, batch 1 at the
    max, and the joint corner only when it is affordable."""
    import dataclasses

    from aitune_triton.spec import AxisKind, AxisSpec

    src, spec, _ = prepare(EXAMPLES / "encoder" / "model.py", max_batch_size=8)
    wide = dataclasses.replace(spec, inputs=tuple(
        dataclasses.replace(t, axes=(t.axes[0], AxisSpec(AxisKind.DYNAMIC, 1, 40, 16))) for t in spec.inputs))
    cases = reference_cases(src.model, wide, src.samples, src.outputs, 8)
    corners = {label.split(" (")[0]: tuple(feed["input_ids"].shape) for label, feed, _ in cases
               if not label.startswith("sample")}
    assert corners == {"batch 1, axes at their min": (1, 1), "batch 1, axes at their max": (1, 40),
                       "batch 8, axes at their min": (8, 1), "batch 8, axes at their max": (8, 40)}
    label, feed, out = next(c for c in cases if c[0].startswith("batch 8, axes at their max"))
    assert label.endswith("(from sample 2)")  # the largest batch: 4 rows of 12 tokens, tiled
    assert torch.equal(feed["input_ids"][:, 12:24], feed["input_ids"][:, :12])
    assert out["last_hidden_state"].shape == (8, 40, 32)
    no_joint = reference_cases(src.model, wide, src.samples, src.outputs, 8, joint_corner=False)
    assert not any(label.startswith("batch 8, axes at their max") for label, _, _ in no_joint)


def test_compare_tolerances():
    a = torch.tensor([1.0, 2.0])
    assert compare(a, a + 1e-6, tolerance_for("float32")) is None
    assert "max |err| 0.1" in compare(a, a + 0.1, tolerance_for("float32"))
    assert "shape" in compare(a, a[:1], tolerance_for("float32"))
    assert compare(torch.tensor([1, 2]), torch.tensor([1, 3]), tolerance_for("int64")).startswith("1 of 2")
    nan = torch.tensor([float("nan")])
    assert compare(nan, nan, tolerance_for("float32")) is None


def test_model_data_defaults_and_device_mismatch(tmp_path, monkeypatch):
    src, spec, profiles = prepare(EXAMPLES / "cnn" / "model.py")
    assert graph_batch_sizes(8) == [1, 2, 4, 8] and graph_batch_sizes(12) == [1, 2, 4, 8, 12]
    assert graph_batch_sizes(0) == []
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.aoti.pt2").write_bytes(b"not a package")
    art = FallbackArtifact("aoti", "cpu", ("model.aoti.pt2",), axis_ranges={}, row_independent=False)
    data = python_model_data(spec, art, 8, version)
    assert data.pad_to_buckets is False  # rows not known independent: never pad
    assert python_model_data(spec, FallbackArtifact("aoti", "cpu", ("model.aoti.pt2",), row_independent=True),
                             8, version).pad_to_buckets is None
    assert data.graph_batches == (1, 2, 4, 8)
    assert data.requirements.torch_rule == "exact" and data.requirements.torch == torch.__version__
    runtime = (ROOT / "aitune_triton" / "runtime" / "model.py").read_text()
    assert "eager.load_state_dict(" in runtime and "pickle" not in runtime and "as_numpy" not in runtime
    # the state_dict is read without pickle code; packed params (quantized models) only add torch.ScriptObject
    eager = (ROOT / "aitune_triton" / "runtime" / "aitune_eager.py").read_text()
    loads = [line for line in eager.splitlines() if "torch.load(" in line]
    assert len(loads) == 3 and all("weights_only=True" in line for line in loads) and "weights_only=False" not in eager
    assert "allowed([torch.ScriptObject])" in eager
    with pytest.raises(FakeModelException, match="compiled for cpu but instance m_0 is KIND_GPU"):
        serve(monkeypatch, version, spec, art, 8, kind="GPU")
    gpu_art = FallbackArtifact("aoti", "cuda", ("model.aoti.pt2",))
    with pytest.raises(FakeModelException, match="compiled for cuda but instance m_0 is KIND_CPU"):
        serve(monkeypatch, version, spec, gpu_art, 8)
    with pytest.raises(UserError, match=r"artifact file\(s\) model.export.pt2 are not in"):
        python_model_data(spec, FallbackArtifact("export", "cpu", ("model.export.pt2",)), 8, version)
