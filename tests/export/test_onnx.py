"""ONNX export + ONNX Runtime check. Dynamo exports take seconds each, so every exported model is a
module-scoped fixture shared by the tests that read it."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from aitune_triton.errors import ModelError
from aitune_triton.export import onnx_check
from aitune_triton.export.onnx import OnnxArtifact, axis_groups, export_onnx
from aitune_triton.export.onnx_check import check_feeds
from aitune_triton.source import load_model_source
from aitune_triton.spec import Sample, record_spec
from aitune_triton.tensorrt.profiles import ProfileMode, derive_profiles

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _setup(model, samples, batch_axis=None, max_batch_size=None):
    model.eval()
    with torch.inference_mode():
        outputs = [model(*s.args, **s.kwargs) for s in samples]
    spec = record_spec(model, samples, outputs, batch_axis=batch_axis)
    return model, spec, samples, derive_profiles(spec, samples, ProfileMode.SINGLE, max_batch_size)


def _example(name):
    src = load_model_source(EXAMPLES / name / "model.py")
    return _setup(src.model, list(src.samples))


def _dims(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path)).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def cnn():
    return _example("cnn")


@pytest.fixture(scope="module")
def cnn_onnx(cnn, out_dir) -> OnnxArtifact:
    model, spec, samples, profiles = cnn
    return export_onnx(model, spec, samples, profiles, out_dir / "cnn" / "model.onnx")


@pytest.fixture(scope="module")
def encoder():
    return _example("encoder")


@pytest.fixture(scope="module")
def encoder_onnx(encoder, out_dir) -> OnnxArtifact:
    model, spec, samples, profiles = encoder
    return export_onnx(model, spec, samples, profiles, out_dir / "encoder.onnx")


@pytest.fixture(scope="module")
def multi_io():
    return _example("multi_io")


class SeqModel(nn.Module):
    """Batch fixed at 2 in every sample; only the sequence axis (1) varies."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor):
        return self.proj(x).cumsum(1), x.mean(1)


@pytest.fixture(scope="module")
def seq():
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    samples = [Sample((torch.randn(2, n, 8, generator=g),), {}) for n in (3, 7, 5)]
    return _setup(SeqModel(), samples, batch_axis=False)


@pytest.fixture(scope="module")
def seq_onnx(seq, out_dir) -> OnnxArtifact:
    model, spec, samples, profiles = seq
    return export_onnx(model, spec, samples, profiles, out_dir / "seq.onnx", opset_version=18)


def test_cnn_dynamic_batch(cnn, cnn_onnx):
    assert cnn_onnx.path.exists() and cnn_onnx.exporter == "dynamo"
    assert cnn_onnx.input_names == ("image",) and cnn_onnx.output_names == ("output_0",)
    dims = _dims(cnn_onnx.path)
    assert dims["image"] == ["batch", 3, 32, 32]
    assert isinstance(dims["output_0"][0], str) and dims["output_0"][1] == 10
    check = cnn_onnx.check
    assert check.ok and check.skipped is None and "onnxruntime" in check.runtime
    assert check.cases == ("sample 0", "sample 1", "sample 2", "sample 3", "profile 0 min", "profile 0 max")
    [row] = check.outputs
    assert row.name == "output_0" and row.max_abs_err <= row.atol and (row.atol, row.rtol) == (1e-4, 1e-3)
    onnx.checker.check_model(str(cnn_onnx.path))
    # staged export leaves nothing behind but the model
    assert [p.name for p in cnn_onnx.path.parent.iterdir()] == ["model.onnx"]


def test_encoder_int_inputs_dynamic_seq_dict_outputs(encoder, encoder_onnx):
    model, spec, samples, profiles = encoder
    assert encoder_onnx.input_names == ("input_ids", "attention_mask")
    assert encoder_onnx.output_names == ("last_hidden_state", "pooled")
    dims = _dims(encoder_onnx.path)
    # ids and mask share one batch and one sequence symbol
    assert dims["input_ids"] == dims["attention_mask"] == ["batch", "input_ids_1"]
    assert dims["last_hidden_state"][2] == 32
    assert encoder_onnx.check.ok and [o.name for o in encoder_onnx.check.outputs] == list(encoder_onnx.output_names)
    groups = axis_groups(spec, samples, profiles)
    assert groups[(0, 0)] == ("batch", 1, 4) and groups[(0, 1)] == groups[(1, 1)] == ("input_ids_1", 8, 16)


def test_check_inputs_are_cut_from_the_samples_so_ids_and_masks_stay_paired(encoder):
    """Random 0/1 masks left a causal decoder rows with nothing to attend to (a false mismatch):
    the profile edges are the samples tiled or cropped, each mask row still the one of its ids."""
    model, spec, samples, profiles = encoder
    cases = dict(check_feeds(spec, samples, profiles))
    hi = cases["profile 0 max"]
    assert hi["input_ids"].shape == (4, 16) and hi["input_ids"].dtype == torch.int64
    pairs = {(tuple(ids.tolist()), tuple(mask.tolist())) for s in samples
             for ids, mask in zip(s.kwargs["input_ids"], s.kwargs["attention_mask"], strict=True)}
    for label in ("profile 0 min", "profile 0 max"):
        feed = cases[label]
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"], strict=True):
            assert any(ids.tolist() == list(i[:len(ids)]) and mask.tolist() == list(m[:len(mask)])
                       for i, m in pairs), label
    assert cases["profile 0 min"]["input_ids"].shape == (1, 8)


def test_keyword_only_input_and_mixed_dtype_tuple_outputs(multi_io, out_dir):
    model, spec, samples, profiles = multi_io
    art = export_onnx(model, spec, samples, profiles, out_dir / "multi_io.onnx")
    assert art.input_names == ("features", "category", "valid")
    assert art.output_names == ("output_0", "output_1", "output_2")
    graph = onnx.load(str(art.path)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    T = onnx.TensorProto
    assert types == {"features": T.FLOAT, "category": T.INT32, "valid": T.BOOL,
                     "output_0": T.FLOAT, "output_1": T.INT64, "output_2": T.BOOL}
    rows = {o.name: o for o in art.check.outputs}
    assert art.check.ok and rows["output_1"].atol == rows["output_1"].rtol == 0.0
    assert rows["output_1"].max_abs_err == 0.0 and rows["output_2"].max_abs_err == 0.0


def test_only_dynamic_axis_is_not_batch_and_opset_honoured(seq, seq_onnx):
    model, spec, samples, profiles = seq
    assert not spec.batching and profiles.max_batch_size == 0
    dims = _dims(seq_onnx.path)
    assert dims["x"] == [2, "x_1", 8]
    assert dims["output_1"] == [2, 8]
    assert seq_onnx.opset == 18
    assert [o.version for o in onnx.load(str(seq_onnx.path)).opset_import if o.domain == ""] == [18]
    assert seq_onnx.check.ok and len(seq_onnx.check.outputs) == 2


def test_batch_one_samples_still_export_a_dynamic_batch(out_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    samples = [Sample((torch.randn(1, 6, generator=g),), {}) for _ in range(2)]
    model, spec, samples, profiles = _setup(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), samples,
                                            batch_axis=True, max_batch_size=4)
    art = export_onnx(model, spec, samples, profiles, out_dir / "b1.onnx")
    assert _dims(art.path)["input"] == ["batch", 6]
    assert art.check.ok and "profile 0 max" in art.check.cases  # ran at batch 4


def test_torchscript_exporter(cnn, out_dir):
    model, spec, samples, profiles = cnn
    art = export_onnx(model, spec, samples, profiles, out_dir / "cnn_ts.onnx", use_dynamo=False, opset_version=17)
    assert art.exporter == "torchscript" and art.opset == 17
    assert _dims(art.path)["image"] == ["batch", 3, 32, 32]
    assert art.check.ok


class Zeta(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x, x + 2)


def test_unsupported_op_fails_with_hint_and_leaves_no_file(out_dir):
    g = torch.Generator().manual_seed(7)
    model, spec, samples, profiles = _setup(Zeta(), [Sample((torch.rand(b, 3, generator=g) + 1,), {}) for b in (2, 3)])
    path = out_dir / "zeta" / "model.onnx"
    with pytest.raises(ModelError, match=r"^ONNX export failed \(dynamo\): ") as info:
        export_onnx(model, spec, samples, profiles, path)
    msg = str(info.value)
    assert msg.startswith("ONNX export failed (dynamo): ") and "zeta" in msg and "\n" not in msg
    assert msg.endswith("try use_dynamo=False, or serve with the Python-backend fallback (backends=('python',))")
    assert "torch.onnx" in info.value.details  # the exporter's own output, kept for --debug
    assert not path.exists() and list(path.parent.iterdir()) == []


class SignBranch(nn.Module):
    """Python control flow on a value: the TorchScript tracer freezes whichever branch the example took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 0:
            return x * 2
        return x - 1


def test_traced_branch_mismatch_raises_table(out_dir):
    samples = [Sample((torch.full((2, 3), v),), {}) for v in (1.0, -3.0)]
    model, spec, samples, profiles = _setup(SignBranch(), samples)
    with pytest.raises(ModelError, match=r"^ONNX export \(torchscript\) does not match eager PyTorch") as info:
        export_onnx(model, spec, samples, profiles, out_dir / "branch.onnx", use_dynamo=False)
    msg = str(info.value)
    assert msg.splitlines()[0].startswith("ONNX export (torchscript) does not match eager PyTorch")
    assert "max_abs" in msg and "max_rel" in msg and "output_0" in msg and "FAIL" in msg
    assert "try use_dynamo=True" in msg and not (out_dir / "branch.onnx").exists()


class ShapeBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 4:
            return x * 2
        return x * 2


def test_specialised_batch_axis_is_a_model_error(out_dir):
    samples = [Sample((torch.randn(4, 3),), {}) for _ in range(2)]
    model, spec, samples, profiles = _setup(ShapeBranch(), samples, batch_axis=True, max_batch_size=8)
    with pytest.raises(ModelError, match=r"fixed axis 0 of input 'x' to 4 but it must take 1\.\.8"):
        export_onnx(model, spec, samples, profiles, out_dir / "shape_branch.onnx")


def test_missing_ort_kernel_skips_the_check_with_a_reason(multi_io, out_dir, monkeypatch):
    def no_kernel(model):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Foo(1)")

    monkeypatch.setattr(onnx_check, "_session", no_kernel)
    model, spec, samples, profiles = multi_io
    art = export_onnx(model, spec, samples, profiles, out_dir / "no_kernel.onnx", use_dynamo=False)
    assert art.path.exists() and art.check.ok and art.check.outputs == ()
    assert "NOT_IMPLEMENTED" in art.check.skipped and art.check.cases


def test_bfloat16_model_is_checked_as_float32(out_dir):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(8)
    samples = [Sample((torch.randn(b, 8, generator=g).to(torch.bfloat16),), {}) for b in (1, 3)]
    model, spec, samples, profiles = _setup(nn.Sequential(nn.Linear(8, 4), nn.GELU()).to(torch.bfloat16), samples)
    art = export_onnx(model, spec, samples, profiles, out_dir / "bf16.onnx", use_dynamo=False)
    assert "float32 copy" in art.check.runtime and art.check.ok
    [row] = art.check.outputs
    assert (row.atol, row.rtol) == (5e-2, 5e-2) and 0 < row.max_abs_err < 5e-2
    graph = onnx.load(str(art.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16  # the file itself stays bf16


class Unused(nn.Module):
    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_dropped_input_is_a_model_error(out_dir):
    samples = [Sample((torch.ones(b, 2), torch.ones(b, 2)), {}) for b in (1, 2)]
    model, spec, samples, profiles = _setup(Unused(), samples)
    with pytest.raises(ModelError, match="ignores"):
        export_onnx(model, spec, samples, profiles, out_dir / "unused.onnx", use_dynamo=False)


class ScalarOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        y = self.lin(x)
        return y, y.pow(2).mean()


def test_a_scalar_output_is_compared_as_the_scalar_both_return(out_dir):
    """ONNX and eager both return () for the scalar: it failed as 'shape () vs eager (1,)' once."""
    torch.manual_seed(0)
    model, spec, samples, profiles = _setup(ScalarOut(), [Sample((torch.randn(b, 4),), {}) for b in (2, 3)],
                                            batch_axis=False)
    art = export_onnx(model, spec, samples, profiles, out_dir / "scalar.onnx")
    rows = {o.name: o for o in art.check.outputs}
    assert art.check.ok and rows["output_1"].note == "" and rows["output_1"].max_abs_err < 1e-5
