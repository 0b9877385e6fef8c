"""Validation logic that needs no server: comparisons, request shapes, edge and bad-request cases,
config/metadata diffs, version stamps, and the harness's planning and usage errors.

Model directories are written by hand from a tiny torch model through the real spec/profile/
mapping/render/manifest code (no export, no server), so these tests run in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format

from aitune_triton.api import reference_cases
from aitune_triton.config import tolerance_for
from aitune_triton.errors import UserError
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.tensorrt.profiles import ProfileMode, derive_profiles
from aitune_triton.triton.manifest import REFERENCE, Manifest, save_reference
from aitune_triton.triton.mapping import MappingOptions, plan_model_config
from aitune_triton.triton.render import render_config
from aitune_triton.numerics import Tolerance
from aitune_triton.validate import harness
from aitune_triton.validate.checks import bad_requests as br
from aitune_triton.validate.checks import batching, registry, wire
from aitune_triton.validate.checks import edge_shapes as es
from aitune_triton.validate.checks import metadata as md
from aitune_triton.validate.checks import version_stamp as vs
from aitune_triton.validate.result import CheckStatus
from aitune_triton.validate.checks.target import ModelTarget

PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, ids):
        return self.lin(x).sum(1) + ids.float().sum(-1, keepdim=True)


class Tokens(torch.nn.Module):
    def forward(self, ids, mask):
        return {"hidden": (ids * mask).float().unsqueeze(-1).repeat(1, 1, 2), "flag": mask.sum(1) > 3}


class Tagger(torch.nn.Module):
    """An LSTM tagger over padded ``tokens`` with their ``lengths`` (which must not exceed the sequence)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lstm, self.out = torch.nn.Embedding(20, 8), torch.nn.LSTM(8, 8, batch_first=True), \
            torch.nn.Linear(8, 5)

    def forward(self, tokens, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.shape[1])
        return self.out(out)


def tagger_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(1, 20, (b, s), generator=g), torch.randint(1, s + 1, (b,), generator=g))
            for b, s in ((1, 6), (2, 15), (4, 10))]


def affine_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, 2, 4, generator=g), torch.randint(3, 9, (b, 5), generator=g)) for b in (1, 3, 4)]


def token_samples():
    g = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(0, 100, (b, s), generator=g), "mask": torch.ones(b, s, dtype=torch.int64)}
            for b, s in ((1, 6), (2, 10), (2, 8))]


def make_model_dir(root: Path, name: str, model: torch.nn.Module, raw_samples, backend: str = "python") -> Path:
    """A model directory as generate writes it, minus the served artifact."""
    samples = [normalize_sample(s, i) for i, s in enumerate(raw_samples)]
    outputs = [model(*s.args, **s.kwargs) for s in samples]
    spec = record_spec(model, samples, outputs)
    profiles = derive_profiles(spec, samples, ProfileMode.SINGLE)
    plan = plan_model_config(spec, profiles, MappingOptions(name=name, backend=backend,
                                                           max_batch_size=profiles.max_batch_size))
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render_config(plan))
    Manifest(name, backend, spec, profiles, profiles.max_batch_size,
             {t.name: tolerance_for(t.dtype) for t in spec.outputs}, versions={}).save(model_dir)
    save_reference(model_dir / REFERENCE, reference_cases(spec, tuple(samples), tuple(outputs)))
    return model_dir


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_model_dir(root, "affine", Affine(), affine_samples())
    make_model_dir(root, "tokens", Tokens(), token_samples())
    return root


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> ModelTarget:
    return ModelTarget.load(make_model_dir(tmp_path_factory.mktemp("tagger"), "tagger", Tagger(), tagger_samples()))


@pytest.fixture(scope="module")
def affine(repo) -> ModelTarget:
    return ModelTarget.load(repo / "affine")


@pytest.fixture(scope="module")
def tokens(repo) -> ModelTarget:
    return ModelTarget.load(repo / "tokens")


# ---------------------------------------------------------------- comparisons and requests


def why(got, expected, atol: float, rtol: float) -> str | None:
    """The failure message validate reports for an output, None when it matches."""
    return wire.compare_output(np.asarray(got), expected, Tolerance(atol, rtol)).reason


def test_compare_within_and_outside_tolerance():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    assert why(ref + 1e-5, ref, 1e-4, 1e-3) is None
    reason = why(ref + np.array([[0, 0], [0, 0.5]], np.float32), ref, 1e-4, 1e-3)
    assert reason.startswith("1/4 elements outside atol=0.0001 rtol=0.001, max |diff| 0.5 at [1, 1]")
    assert why(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), 0, 0) is None
    assert "outside" in why(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), 1, 1)
    # no tolerance in the manifest: exact
    assert not wire.compare_output(ref + 1e-5, ref, None).ok


def test_compare_ints_exact_and_shapes():
    assert why(np.array([1, 2, 3]), np.array([1, 2, 3]), 0, 0) is None
    assert why(np.array([1, 2, 4]), np.array([1, 2, 3]), 0.5, 0.5).startswith("1/3 values differ")
    assert why(np.array([True, False]), np.array([True, False]), 0, 0) is None
    # a reshape'd output comes back as [batch, 1]
    assert why(np.array([[1], [2]]), np.array([1, 2]), 0, 0) is None
    assert why(np.zeros((2, 3)), np.zeros((2, 4)), 0, 0) == "shape [2, 3], expected [2, 4]"
    # the worst |diff| of a match is what the accuracy check reports
    assert wire.compare_output(np.array([1.0, 2.5]), np.array([1.0, 2.0]), Tolerance(1.0, 0.0)).max_abs == 0.5


def test_wire_dtypes():
    assert wire.wire_dtype("TYPE_FP32") == "FP32"
    assert wire.wire_dtype("TYPE_STRING") == "BYTES"
    assert wire.wire_dtype(wire.model_config_pb2.TYPE_BF16) == "BF16"


def test_request_arrays_follow_config_dims_and_dtypes(affine):
    case = affine.reference[1]
    arrays = wire.request_arrays(affine, case.inputs, 0, 2)
    assert arrays["x"].shape == (2, 2, 4) and arrays["x"].dtype == np.float32
    assert arrays["ids"].shape == (2, 5) and arrays["ids"].dtype == np.int64


def test_batch_only_tensor_is_sent_as_batch_by_one():
    cfg = wire.model_config_pb2.ModelInput(name="c", data_type=wire.model_config_pb2.TYPE_INT32, dims=[1])
    cfg.reshape.SetInParent()
    assert wire.to_request(np.arange(3), cfg, batching=True).shape == (3, 1)
    plain = wire.model_config_pb2.ModelInput(name="c", data_type=wire.model_config_pb2.TYPE_INT32, dims=[-1])
    assert wire.to_request(np.arange(3).reshape(1, 3), plain, batching=True).shape == (1, 3)


# ---------------------------------------------------------------- edge shapes, bad requests


def test_edge_shapes_cover_profile_corners_and_batches(tokens, affine):
    shapes = dict(es.edge_shapes(tokens))
    mbs = tokens.max_batch_size
    assert sorted({s["ids"] for s in shapes.values()}) == sorted({(1, 6), (1, 10), (mbs, 6), (mbs, 10)})
    assert all(s["ids"] == s["mask"] for s in shapes.values())  # one profile corner for all inputs
    # static non-batch dims: min == max, so only the two batch sizes remain, each named once
    labels = [label for label, _ in es.edge_shapes(affine)]
    assert len(labels) == 2 and all(" = " in label for label in labels)


def test_edge_inputs_are_cut_from_the_samples_and_keep_lengths_valid(tagger):
    model = Tagger()
    recorded = {int(v) for c in tagger.reference for v in np.asarray(c.inputs["tokens"]).ravel()}
    seen = set()
    for label, shapes in es.edge_shapes(tagger):
        arrays = es.sample_inputs(tagger, shapes)
        tokens, lengths = arrays["tokens"], arrays["lengths"]
        assert tokens.shape == shapes["tokens"] and lengths.shape == shapes["lengths"] + (1,)  # dims [1] + reshape
        assert lengths.max() <= tokens.shape[1], label
        assert set(np.unique(tokens).tolist()) <= recorded
        model(torch.from_numpy(tokens), torch.from_numpy(lengths.reshape(-1)))  # the model accepts every one
        seen.add(shapes["tokens"])
    assert seen == {(1, 6), (1, 15), (tagger.max_batch_size, 6), (tagger.max_batch_size, 15)}


def test_edge_inputs_tile_rows_and_clip_to_declared_ranges(affine):
    arrays = es.sample_inputs(affine, {"x": (8, 2, 4), "ids": (8, 5)}, {"ids": (4, 6)})
    assert arrays["x"].shape == (8, 2, 4) and arrays["ids"].shape == (8, 5)
    case = next(c for c in affine.reference if np.asarray(c.inputs["x"]).shape[0] == 4)  # the closest case
    np.testing.assert_array_equal(arrays["x"][4:], case.inputs["x"])  # its rows, repeated in order
    assert arrays["ids"].min() >= 4 and arrays["ids"].max() <= 6


def test_bad_requests_cases(affine, tokens):
    labels = [label for label, _, _ in br.bad_requests(affine)]
    assert labels[0] == "wrong dtype (INT32 for FP32 'x')"
    assert labels[1].startswith("wrong rank")
    assert any(label.startswith("dim outside the config ('x' axis 2 = 5, fixed at 4)") for label in labels)
    assert "batch %d > max_batch_size %d" % (affine.max_batch_size + 1, affine.max_batch_size) in labels
    assert labels[-1] == "missing input 'ids'"
    cases = {label: (arrays, types) for label, arrays, types in br.bad_requests(affine)}
    arrays, types = cases["wrong dtype (INT32 for FP32 'x')"]
    assert types == {"x": "INT32"} and arrays["x"].dtype == np.int32
    assert set(cases["missing input 'ids'"][0]) == {"x"}
    # every non-batch dim of the token model is -1: the python backend accepts any size there
    token_labels = [label for label, _, _ in br.bad_requests(tokens)]
    assert not any("dim outside" in label for label in token_labels)
    assert token_labels[0] == "wrong dtype (FP32 for INT64 'ids')"


# ---------------------------------------------------------------- metadata, version stamps


def _server_view(target: ModelTarget) -> tuple[dict, dict]:
    """What Triton reports for a config it loaded unchanged."""
    cfg = json_format.MessageToDict(target.config, preserving_proto_field_name=True)
    lead = [-1] if target.batching else []
    meta = {kind + "s": [{"name": t.name, "datatype": wire.wire_dtype(t.data_type), "shape": lead + list(t.dims)}
                         for t in getattr(target.config, kind)] for kind in ("input", "output")}
    return cfg, meta


def test_metadata_agrees_and_names_differences(affine):
    cfg, meta = _server_view(affine)
    assert md.metadata_problems(affine, cfg, meta) == []
    cfg["input"][0]["dims"] = ["2", "5"]
    cfg["max_batch_size"] = 2
    meta["outputs"][0]["datatype"] = "FP16"
    problems = md.metadata_problems(affine, cfg, meta)
    assert "max_batch_size %d in config.pbtxt but 2 in the server's config" % affine.max_batch_size in problems
    assert "input 'x': dims [2, 4] in config.pbtxt but [2, 5] in the server's config" in problems
    assert "metadata output 'output_0': datatype FP16, config.pbtxt says FP32" in problems


def test_config_against_manifest(repo, tmp_path):
    shutil.copytree(repo / "affine", tmp_path / "affine")
    text = (tmp_path / "affine" / "config.pbtxt").read_text().replace("dims: [ 2, 4 ]", "dims: [ 2, 8 ]")
    (tmp_path / "affine" / "config.pbtxt").write_text(text)
    target = ModelTarget.load(tmp_path / "affine")
    cfg, meta = _server_view(target)
    assert md.metadata_problems(target, cfg, meta) == ["input 'x': dims [2, 4] in manifest.json but [2, 8] in "
                                                       "config.pbtxt"]


def _with_trt(target: ModelTarget, tensorrt: dict) -> Manifest:
    return Manifest(**{**target.manifest.__dict__, "backend": "tensorrt", "tensorrt": tensorrt})


def test_version_verdicts(affine):
    assert vs.version_verdict(affine.manifest, "2.51.0")[0] == SKIP
    built = _with_trt(affine, {"status": "built", "stamp": {"triton_version": "2.51.0", "tensorrt_version": "10.5"}})
    assert vs.version_verdict(built, "2.51.0")[0] == PASS
    status, detail = vs.version_verdict(built, "2.49.0")
    assert status == FAIL and "built for Triton 2.51.0 but the server is 2.49.0" in detail
    trt_only = _with_trt(affine, {"status": "built", "stamp": {"tensorrt_version": "10.3.0.26"}})
    assert vs.version_verdict(trt_only, "2.49.0")[0] == PASS
    assert vs.version_verdict(trt_only, "2.52.0")[0] == FAIL
    assert vs.version_verdict(trt_only, "2.51.0")[0] == SKIP  # no corroborated pairing for 2.51
    assert vs.version_verdict(built, None)[0] == SKIP
    # as build-plan writes it: the stamp has the TensorRT version and whether the plan is version compatible
    stamp = {"tensorrt_version": "10.6.0.26", "version_compatible": True, "compute_capability": "9.0"}
    compatible = _with_trt(affine, {"status": "built", "stamp": stamp})
    assert vs.version_verdict(compatible, "2.56.0")[0] == PASS
    assert vs.version_verdict(compatible, "2.44.0")[0] == FAIL


def test_batch_histogram():
    stats = {"batch_stats": [{"batch_size": 1, "compute_infer": {"count": 5, "ns": 10}},
                             {"batch_size": 8, "compute_infer": {"count": "2", "ns": 10}}]}
    assert batching.batch_histogram(stats) == {1: 5, 8: 2}
    assert batching.batch_histogram({}) == {}


def test_run_check_turns_exceptions_into_failures(affine):
    def boom(ctx):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    check = registry.Check("ready", 10, boom)
    result = registry.run_check(check, registry.CheckContext(affine, session=None))
    assert result.status == FAIL and result.detail == "ConnectionRefusedError: [Errno 111] Connection refused"


# ---------------------------------------------------------------- harness: planning and options


def test_usage_errors(tmp_path, repo):
    with pytest.raises(UserError, match="does not exist"):
        harness.validate_repository(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no models generated by aitune-triton"):
        harness.validate_repository(tmp_path / "empty")
    with pytest.raises(UserError, match=r"unknown model\(s\) nosuch .*known: affine, tokens"):
        harness.validate_repository(repo, harness.ValidateOptions(models=("nosuch",)))


def test_plan_reports_pending_plans_and_broken_manifests(repo, tmp_path):
    shutil.copytree(repo, tmp_path / "r")
    home = tmp_path / "r" / "affine"
    manifest = json.loads((home / "manifest.json").read_text())
    manifest["tensorrt"] = {"status": "pending", "model_name": "affine_trt", "reason": "tensorrt is not installed"}
    (home / "manifest.json").write_text(json.dumps(manifest))
    (home / "tensorrt").mkdir()
    (tmp_path / "r" / "tokens" / "manifest.json").write_text("{not json")
    (tmp_path / "r" / "handmade").mkdir()
    (tmp_path / "r" / "handmade" / "config.pbtxt").write_text('name: "handmade"')
    planned = {p.name: p for p in harness.plan_models(tmp_path / "r")}
    assert set(planned) == {"affine", "affine_trt", "tokens"}
    assert planned["affine"].model_dir == home
    assert planned["affine_trt"].skipped.startswith("TensorRT plan pending: tensorrt is not installed (staged in")
    assert planned["tokens"].failure.status == FAIL and "not a valid manifest" in planned["tokens"].failure.detail
    only = harness.plan_models(tmp_path / "r", ("affine_trt",))
    assert [p.name for p in only] == ["affine_trt"] and only[0].skipped


def test_tensorrt_model_without_plan_is_skipped(tmp_path):
    make_model_dir(tmp_path, "trt", Affine(), affine_samples(), backend="tensorrt")
    (item,) = harness.plan_models(tmp_path)
    assert item.backend == "tensorrt" and "no model.plan" in item.skipped


def test_backend_missing_from_the_server_is_skipped(repo, tmp_path):
    shutil.copytree(repo / "affine", tmp_path / "affine")
    manifest = json.loads((tmp_path / "affine" / "manifest.json").read_text())
    manifest["backend"] = "onnxruntime"
    (tmp_path / "affine" / "manifest.json").write_text(json.dumps(manifest))
    (item,) = harness.plan_models(tmp_path)
    run = harness._Run(tmp_path, harness.ValidateOptions(perf=False), progress=lambda m: None)
    report = run.validate(item, backends=("python",))  # decided before any server is touched
    assert report.status == "skipped" and not report.checks
    assert "has no 'onnxruntime' backend (it has: python)" in report.skipped


def test_options_and_concurrency_parsing():
    assert harness.parse_concurrency("1,2,4,8") == (1, 2, 4, 8)
    assert harness.parse_concurrency("1:8:2") == (1, 3, 5, 7)
    assert harness.parse_concurrency("2:4") == (2, 3, 4)
    for bad in ("", "a,b", "0,1"):
        with pytest.raises(UserError):
            harness.parse_concurrency(bad)
    with pytest.raises(UserError, match="give only one"):
        harness.ValidateOptions(url="127.0.0.1:8000", tritonserver=Path("/x/tritonserver"))
    with pytest.raises(UserError, match="shared memory"):
        harness.ValidateOptions(shared_memory="cuda")
    with pytest.raises(UserError, match="concurrency"):
        harness.ValidateOptions(concurrency=())
    assert harness.ValidateOptions(concurrency=[1, 2]).concurrency == (1, 2)
    assert harness._grpc_for("http://127.0.0.1:8000") == "127.0.0.1:8001"
    assert harness._grpc_for("localhost") is None


def test_perf_options_use_reference_items_and_shapes(tokens, affine, tmp_path):
    opts = harness.perf_options(tokens, harness.ValidateOptions(concurrency=(1, 2)), tmp_path)
    assert opts.protocol == "grpc" and opts.concurrency == (1, 2)
    assert opts.shapes == {"ids": (6,), "mask": (6,)}  # the first case's sequence length
    data = json.loads(opts.input_data.read_text())["data"]
    assert len(data) == 1  # perf_analyzer rejects entries of another shape than --shape
    assert data[0]["ids"] == {"shape": [6], "content": list(tokens.reference[0].inputs["ids"][0])}
    assert json.loads(harness.perf_options(affine, harness.ValidateOptions(), tmp_path).input_data.read_text())[
        "data"][2]["ids"]["content"] == list(affine.reference[2].inputs["ids"][0])
    static = harness.perf_options(affine, harness.ValidateOptions(shared_memory="system"), tmp_path)
    assert static.shapes == {} and static.shared_memory == "system"


def test_missing_backend_message_of_triton_2_51():
    message = ("loading model 'm' failed: load failed for model 'm': version 1 is at UNAVAILABLE state: Invalid "
               "argument: unable to find backend library for backend 'onnxruntime', try specifying runtime on the "
               "model configuration.;")
    assert harness._NO_BACKEND.search(message)
    assert not harness._NO_BACKEND.search("failed to load 'm': ModuleNotFoundError: No module named 'torch'")


def test_a_server_that_cannot_start_fails_every_model(repo, tmp_path):
    options = harness.ValidateOptions(tritonserver=tmp_path / "bin" / "tritonserver", perf=False,
                                      report_dir=tmp_path / "report")
    report = harness.validate_repository(repo, options)
    assert report.exit_code == 1
    assert report.server.error.startswith("the server could not be used: tritonserver not found at")
    assert [(m.name, [c.name for c in m.checks]) for m in report.models] == [("affine", ["server"]),
                                                                            ("tokens", ["server"])]
    assert (tmp_path / "report" / "report.md").exists()


def test_nothing_answers_at_the_url(repo):
    from aitune_triton.triton.server import free_port

    report = harness.validate_repository(repo, harness.ValidateOptions(url="127.0.0.1:%d" % free_port(),
                                                                        models=("affine",)))
    assert report.exit_code == 1 and "no Triton server answers at 127.0.0.1:" in report.server.error
    assert report.server.mode == "url" and report.models[0].checks[0].status == FAIL


# ---------------------------------------------------------------- hand-edited and broken files (issue 14)


def test_hand_edited_config_that_does_not_parse_names_file_and_line(repo, tmp_path):
    model_dir = tmp_path / "affine"
    shutil.copytree(repo / "affine", model_dir)
    config = model_dir / "config.pbtxt"
    lines = config.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("max_batch_size"))
    lines[row] = "max_batch_size: eight"
    config.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"affine/config.pbtxt does not parse as a Triton ModelConfig at line %d, "
                       r"column \d+: .*eight" % (row + 1)):
        ModelTarget.load(model_dir)


def test_huge_max_batch_size_caps_what_the_checks_allocate(affine):
    huge = affine.config.__class__()
    huge.CopyFrom(affine.config)
    huge.max_batch_size = 2147483647
    target = ModelTarget(affine.name, affine.model_dir, affine.manifest, huge, affine.reference)
    labels = [label for label, _, _ in br.bad_requests(target)]
    assert labels and not any("max_batch_size" in label for label in labels)  # the 2**31 batch is not built
    shapes = {n: (2147483647,) + tuple(max(d, 1) for d in t.dims) for n, t in target.inputs.items()}
    assert wire.request_bytes(target, shapes) > wire.MAX_REQUEST_BYTES
    small = {n: (1,) + tuple(max(d, 1) for d in t.dims) for n, t in target.inputs.items()}
    assert 0 < wire.request_bytes(target, small) < wire.MAX_REQUEST_BYTES


@pytest.mark.parametrize("content,why", [(b"", "EOFError"), (b"PK\x03\x04 truncated", "BadZipFile")])
def test_unreadable_reference_is_one_named_error(repo, tmp_path, content, why):
    model_dir = tmp_path / "affine"
    shutil.copytree(repo / "affine", model_dir)
    (model_dir / REFERENCE).write_bytes(content)
    with pytest.raises(UserError, match=r"reference.npz is not a readable reference file \(%s" % why):
        ModelTarget.load(model_dir)


@pytest.mark.parametrize("text,why", [("[1, 2]", "AttributeError"), ('{"schema_version": 1, "spec": 5}', "KeyError"),
                                      ("[" * 100000 + "]" * 100000, "RecursionError")])
def test_manifest_of_wrong_types_is_one_named_error(repo, tmp_path, text, why):
    model_dir = tmp_path / "affine"
    shutil.copytree(repo / "affine", model_dir)
    (model_dir / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=r"manifest.json is not a valid manifest \(%s" % why):
        Manifest.load(model_dir)


@pytest.mark.parametrize("field,value", [("spec", 5), ("max_batch_size", "abc"), ("tolerances", [1])])
def test_manifest_field_of_wrong_type(repo, tmp_path, field, value):
    model_dir = tmp_path / "affine"
    shutil.copytree(repo / "affine", model_dir)
    data = json.loads((model_dir / "manifest.json").read_text())
    (model_dir / "manifest.json").write_text(json.dumps({**data, field: value}))
    with pytest.raises(UserError, match="is not a valid manifest"):
        Manifest.load(model_dir)
    planned = {p.name: p for p in harness.plan_models(model_dir.parent)}
    assert planned["affine"].failure.status == FAIL and "not a valid manifest" in planned["affine"].failure.detail
