"""Which models validate runs and which it reports as skipped or failed without a server."""

from __future__ import annotations

import json
import shutil

import pytest

from aitune_triton.errors import UserError
from aitune_triton.tensorrt.section import PlanStatus
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate import plan
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


def test_not_built_is_every_real_plan_status_but_built():
    assert plan._NOT_BUILT == set(PlanStatus) - {PlanStatus.BUILT}


@pytest.mark.parametrize("status", list(PlanStatus))
def test_a_tensorrt_sibling_is_reported_skipped_unless_its_plan_was_built(repo, tmp_path, status):
    shutil.copytree(repo, tmp_path / "r")
    home = tmp_path / "r" / "affine"
    manifest = json.loads((home / "manifest.json").read_text())
    manifest["tensorrt"] = {"status": status.value, "model_name": "affine_trt", "reason": "why"}
    (home / "manifest.json").write_text(json.dumps(manifest))
    planned = {p.name: p for p in plan_models(tmp_path / "r")}
    assert ("affine_trt" in planned) is (status is not PlanStatus.BUILT)
    if status is not PlanStatus.BUILT:
        assert planned["affine_trt"].skipped == "TensorRT plan %s: why" % status.value


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


def test_server_backends_come_from_the_backend_directory_or_the_binary_install_tree(tmp_path):
    """What the launched server can load: the folders of --backend-directory, else of PREFIX/backends
    beside PREFIX/bin/tritonserver; unknown (None) for a binary outside such a layout."""
    from aitune_triton.validate.options import ValidateOptions
    from aitune_triton.validate.plan import server_backends

    (tmp_path / "prefix" / "bin").mkdir(parents=True)
    (tmp_path / "prefix" / "backends" / "python").mkdir(parents=True)
    (tmp_path / "prefix" / "backends" / "onnxruntime").mkdir()
    binary = tmp_path / "prefix" / "bin" / "tritonserver"
    binary.write_text("")
    assert server_backends(ValidateOptions(tritonserver=binary)) == ("onnxruntime", "python")
    (tmp_path / "mine" / "python").mkdir(parents=True)
    assert server_backends(ValidateOptions(tritonserver=binary, backend_directory=tmp_path / "mine")) == ("python",)
    assert server_backends(ValidateOptions(tritonserver=tmp_path / "tritonserver")) is None
