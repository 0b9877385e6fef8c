"""The manifest's typed sections: each writes the JSON generate has always written and reads it back
equal; a wrong type anywhere is the one-line UserError of ``Manifest.load``."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.runtime.aitune_runtime import Requirements
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.probe_section import BatchingProbe, ChecksSection
from aitune_triton.triton.manifest import (MANIFEST, Manifest,
                                           OnnxSection, Versions, artifact_from_dict)
from aitune_triton.triton.tuning_section import TuneHistoryEntry

COMMITTED = Path(__file__).resolve().parents[2] / "model_repository" / "cnn"

FALLBACK = {"format": "aoti", "device": "cpu", "files": ["model.aoti.pt2"], "skipped": [["export", "why not"]],
            "max_errors": {"output_0": 3.7e-08}, "axis_ranges": {"image": [[1, 8], [3, 3], [32, None]]},
            "row_independent": True, "flat_io": True}
ONNX = {"format": "onnx", "opset": 20, "check": {"runtime": "onnxruntime 1.31.1 CPU", "outputs": []}}
CHECKS = {"batching": {"rows_independent": False, "dynamic_batching": False, "probe_rows": ["sample 0 row 0"],
                       "reason": "output 'y' differs"},
          "data_dependent_axes": {"boxes": [0]}, "declared_output_dims": {"boxes": [-1, 4]}, "notes": ["a note"]}
VERSIONS_GPU = {"aitune_triton": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "cuda": "12.8", "device": "cuda",
                "onnx": "1.23.2", "onnxruntime": None, "gpu": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((COMMITTED / MANIFEST).read_text())


def test_committed_manifest_reads_into_types_and_writes_the_same_json(committed):
    manifest = Manifest.from_dict(committed)
    assert isinstance(manifest.versions, Versions) and isinstance(manifest.artifact, FallbackArtifact)
    assert isinstance(manifest.checks, ChecksSection) and isinstance(manifest.checks.batching, BatchingProbe)
    assert isinstance(manifest.tensorrt, TensorRTSection) and manifest.tensorrt.status is PlanStatus.PENDING
    assert isinstance(manifest.runtime_requirements, Requirements)
    assert manifest.to_dict() == committed
    assert Manifest.from_dict(manifest.to_dict()) == manifest


@pytest.mark.parametrize("section, data", [
    (FallbackArtifact, FALLBACK), (OnnxSection, ONNX), (ChecksSection, CHECKS), (Versions, VERSIONS_GPU),
    (ChecksSection, {"data_dependent_axes": {}, "notes": []}),  # not batching: no verdict
])
def test_sections_round_trip(section, data):
    typed = section.from_dict(data)
    assert typed.to_dict() == data
    assert section.from_dict(json.loads(json.dumps(typed.to_dict()))) == typed


def test_artifact_section_by_format():
    assert artifact_from_dict({}) is None  # a TensorRT-only model has no artifact
    assert artifact_from_dict(ONNX) == OnnxSection(opset=20, check=ONNX["check"])
    fallback = artifact_from_dict(FALLBACK)
    assert isinstance(fallback, FallbackArtifact) and fallback.axis_ranges["image"][2] == (32, None)


def test_versions_write_gpu_keys_only_when_generated_on_a_gpu():
    cpu = Versions(aitune_triton="0.1.0", device="cpu")
    assert "gpu" not in cpu.to_dict() and "compute_capability" not in cpu.to_dict()
    assert cpu.to_dict()["torch"] is None  # the keys every manifest has stay, even unknown


def test_manifest_built_from_dicts_holds_the_types(committed):
    """Callers that pass a section as its JSON dict (tests, older code) get the typed section."""
    fields = {f.name: getattr(Manifest.from_dict(committed), f.name) for f in dataclasses.fields(Manifest)}
    manifest = Manifest(**{**fields, "versions": {}, "artifact": ONNX, "checks": CHECKS, "runtime_requirements": {}})
    assert manifest.versions == Versions() and manifest.artifact == OnnxSection.from_dict(ONNX)
    assert manifest.checks == ChecksSection.from_dict(CHECKS) and manifest.runtime_requirements is None


def test_sealed_replaces_only_the_hashes(committed, tmp_path):
    manifest = Manifest.from_dict(committed)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("x = 1\n")
    sealed = manifest.sealed(tmp_path)
    assert set(sealed.files) == {"1/model.py"}
    assert dataclasses.replace(sealed, files=manifest.files) == manifest


def _mutate(d: dict, path: str, value) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return d


@pytest.mark.parametrize("path, value, match", [
    ("artifact.files", 5, "artifact.files must be a list, got 5"),
    ("artifact.flat_io", "yes", 'artifact.flat_io must be true or false, got "yes"'),
    ("artifact.axis_ranges.image", [[1, "8"]], r'artifact.axis_ranges.image must be an integer, got "8"'),
    ("artifact.max_errors.output_0", True, "artifact.max_errors.output_0 must be a number, got true"),
    ("versions.torch", 2, "versions.torch must be a string, got 2"),
    ("checks.batching.rows_independent", 1, "checks.batching.rows_independent must be true or false, got 1"),
    ("checks.notes", "one", 'checks.notes must be a list, got "one"'),
    ("checks.data_dependent_axes", [0], r"checks.data_dependent_axes must be an object, got \[0\]"),
    ("tolerances.output_0.atol", "1e-4", 'tolerances.output_0.atol must be a number, got "1e-4"'),
    ("runtime_requirements.torch_rule", "newest", "DataError: unknown torch_rule 'newest'"),
    ("artifact", [1], r"artifact must be an object, got \[1\]"),
])
def test_wrong_types_are_one_user_error_line(committed, tmp_path, path, value, match):
    model_dir = tmp_path / "cnn"
    model_dir.mkdir()
    (model_dir / MANIFEST).write_text(json.dumps(_mutate(committed, path, value)))
    with pytest.raises(UserError, match=r"manifest.json is not a valid manifest \(.*%s.*\); regenerate the model"
                       % match) as err:
        Manifest.load(model_dir)
    assert "\n" not in str(err.value)


def test_save_then_load_is_the_same_manifest(committed, tmp_path):
    shutil.copy(COMMITTED / MANIFEST, tmp_path / MANIFEST)
    manifest = Manifest.load(tmp_path)
    changed = dataclasses.replace(manifest, checks=dataclasses.replace(manifest.checks, notes=("n",)))
    changed.save(tmp_path)
    assert Manifest.load(tmp_path) == changed
    assert json.loads((tmp_path / MANIFEST).read_text())["checks"]["notes"] == ["n"]


HISTORY = {"event": "tune", "time": "2026-01-01T00:00:00Z", "backup": "config.pbtxt.bak",
           "previous": {"instances": 1, "max_queue_delay_us": 500, "preferred": []},
           "chosen": {"instances": 2, "max_queue_delay_us": 0, "preferred": [], "concurrency": 8, "transport": "none"},
           "objective": {"kind": "max-throughput", "budget_ms": None, "min_throughput": None},
           "previous_config": 'name: "cnn"\nmax_batch_size: 8\n'}


def test_history_entries_are_typed_and_write_the_same_json(committed, tmp_path):
    """What tune's write-back appends (``TuneHistoryEntry``) saves as the JSON it always wrote and loads back."""
    entry = TuneHistoryEntry.from_dict(HISTORY)
    assert entry.to_dict() == HISTORY and entry.chosen["instances"] == 2 and entry.event == "tune"
    manifest = dataclasses.replace(Manifest.from_dict(committed), history=(entry, entry))
    manifest.save(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["history"] == [HISTORY, HISTORY]
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest and all(isinstance(h, TuneHistoryEntry) for h in loaded.history)
    by_hand = Manifest(**{**{f.name: getattr(manifest, f.name) for f in dataclasses.fields(Manifest)},
                          "history": (HISTORY,)})  # a JSON dict given by hand becomes the type too
    assert by_hand.history == (entry,)


@pytest.mark.parametrize("history, match", [
    ("none", r'history must be a list, got "none"'),
    ([5], r"history.\[\] must be an object, got 5"),
    ([{**HISTORY, "previous_config": 5}], r"history.\[\].previous_config must be a string, got 5"),
    ([{**HISTORY, "chosen": [2]}], r"history.\[\].chosen must be an object, got \[2\]"),
    ([{k: v for k, v in HISTORY.items() if k != "backup"}], r"history\[\]: backup missing"),
    ([{**HISTORY, "extra": 1}], r"history\[\]: unknown key\(s\) extra"),
    ([{**HISTORY, "event": "generate"}], r"history entry: unknown event 'generate'"),
])
def test_wrong_history_is_one_user_error_line(committed, tmp_path, history, match):
    (tmp_path / MANIFEST).write_text(json.dumps(_mutate(committed, "history", history)))
    with pytest.raises(UserError, match=r"manifest.json is not a valid manifest \(.*%s.*\); regenerate the model"
                       % match) as err:
        Manifest.load(tmp_path)
    assert "\n" not in str(err.value)


def test_a_reference_that_decompresses_past_the_bound_is_refused_before_inflating(tmp_path, monkeypatch):
    """A small file whose zip directory claims more than NPZ_MAX_BYTES is one line, read from the
    directory alone (a 3 MB file inflating to 3 GB got validate OOM-killed)."""
    import numpy as np

    from aitune_triton import defaults
    from aitune_triton.reference_data import ReferenceCase, load_reference, save_reference
    from aitune_triton.validate.edge_inputs import load_edge_inputs

    path = tmp_path / "reference.npz"
    save_reference(path, [ReferenceCase({"x": np.zeros((256, 1024), np.float32)}, {"y": np.zeros(4, np.float32)})])
    assert path.stat().st_size < 10_000 and len(load_reference(path)) == 1
    monkeypatch.setattr(defaults, "NPZ_MAX_BYTES", 1 << 20)  # the file claims 1 MiB + headers
    with pytest.raises(UserError, match=r"reference.npz decompresses to 1 MB \(2 arrays\), more than the 1 MB"):
        load_reference(path)
    np.savez_compressed(tmp_path / "edge_inputs.npz", **{"0/x": np.zeros((256, 1024), np.float32)})
    with pytest.raises(UserError, match="edge_inputs.npz decompresses to"):
        load_edge_inputs(tmp_path / "edge_inputs.npz")
