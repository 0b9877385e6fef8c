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


def test_a_reshape_on_one_side_only_is_a_difference(repo, tmp_path):
    shutil.copytree(repo / "tokens", tmp_path / "tokens")
    pbtxt = tmp_path / "tokens" / "config.pbtxt"
    text = pbtxt.read_text()
    assert text.count("reshape: { shape: [  ] }") == 1  # the batch-only output 'flag'
    pbtxt.write_text(text.replace("reshape: { shape: [  ] }", ""))
    target = ModelTarget.load(tmp_path / "tokens")
    cfg, meta = _server_view(target)
    assert md.metadata_problems(target, cfg, meta) == ["output 'flag': reshape [] in manifest.json but none in "
                                                       "config.pbtxt"]
    # the server's config keeps an empty reshape: one that lost it is not the config.pbtxt that was served
    original = ModelTarget.load(repo / "tokens")
    cfg, meta = _server_view(original)
    del next(o for o in cfg["output"] if o["name"] == "flag")["reshape"]
    assert md.metadata_problems(original, cfg, meta) == ["output 'flag': reshape [] in config.pbtxt but none in the "
                                                         "server's config"]
    shutil.copytree(repo / "affine", tmp_path / "affine")
    pbtxt = tmp_path / "affine" / "config.pbtxt"
    pbtxt.write_text(pbtxt.read_text().replace("dims: [ 2, 4 ]", "dims: [ 2, 4 ]\n  reshape: { shape: [ 8 ] }"))
    target = ModelTarget.load(tmp_path / "affine")
    cfg, meta = _server_view(target)
    assert md.metadata_problems(target, cfg, meta) == ["input 'x': reshape none in manifest.json but [8] in "
                                                       "config.pbtxt"]
