"""Loading what a model directory claims: one named error for a hand-edited or broken file."""

from __future__ import annotations

import shutil

import pytest

from aitune_triton.errors import UserError
from aitune_triton.reference_data import REFERENCE
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate.checks.target import ModelTarget


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
