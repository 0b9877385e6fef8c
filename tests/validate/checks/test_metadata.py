"""The server's config/metadata against config.pbtxt, and config.pbtxt against the manifest."""

from __future__ import annotations

import shutil

from google.protobuf import json_format

from aitune_triton.validate.checks import metadata as md
from aitune_triton.validate.checks import wire
from aitune_triton.validate.checks.target import ModelTarget


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
