"""Which models validate runs and which it reports as skipped or failed without a server."""

from __future__ import annotations

import json
import shutil

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate.plan import plan_models
from aitune_triton.validate.result import CheckStatus


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
    planned = {p.name: p for p in plan_models(tmp_path / "r")}
    assert set(planned) == {"affine", "affine_trt", "tokens"}
    assert planned["affine"].model_dir == home
    assert planned["affine_trt"].skipped.startswith("TensorRT plan pending: tensorrt is not installed (staged in")
    failure = planned["tokens"].failure
    assert failure.status == CheckStatus.FAIL and "not a valid manifest" in failure.detail
    only = plan_models(tmp_path / "r", ("affine_trt",))
    assert [p.name for p in only] == ["affine_trt"] and only[0].skipped


def test_tensorrt_model_without_plan_is_skipped(tmp_path, model_dir_factory):
    model_dir_factory(tmp_path, "trt", "affine", backend="tensorrt")
    (item,) = plan_models(tmp_path)
    assert item.backend == "tensorrt" and "no model.plan" in item.skipped


@pytest.mark.parametrize("field,value", [("spec", 5), ("max_batch_size", "abc"), ("tolerances", [1])])
def test_manifest_field_of_wrong_type(repo, tmp_path, field, value):
    model_dir = tmp_path / "affine"
    shutil.copytree(repo / "affine", model_dir)
    data = json.loads((model_dir / "manifest.json").read_text())
    (model_dir / "manifest.json").write_text(json.dumps({**data, field: value}))
    with pytest.raises(UserError, match="is not a valid manifest"):
        Manifest.load(model_dir)
    planned = {p.name: p for p in plan_models(model_dir.parent)}
    failure = planned["affine"].failure
    assert failure.status == CheckStatus.FAIL and "not a valid manifest" in failure.detail
