"""The up-front checks of output paths: refused with one line naming the path, nothing created."""

from __future__ import annotations

import pytest

from aitune_triton.errors import UserError
from aitune_triton.output_paths import check_output_dir, check_output_file


def test_directories(tmp_path):
    (tmp_path / "file").write_text("x")
    check_output_dir(tmp_path, "the report")  # exists
    check_output_dir(tmp_path / "new" / "deeper", "the report")  # can be created
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(UserError, match=r"cannot write the report to .*file: it is a file, not a directory"):
        check_output_dir(tmp_path / "file", "the report")
    with pytest.raises(UserError, match=r"cannot write the report to .*file/x/y: .*file is not a directory"):
        check_output_dir(tmp_path / "file" / "x" / "y", "the report")


def test_files(tmp_path):
    (tmp_path / "file").write_text("x")
    check_output_file(tmp_path / "file", "the plan")  # replaced
    check_output_file(tmp_path / "new" / "ma.yaml", "the config")  # its directory can be created
    with pytest.raises(UserError, match=r"cannot write the plan to .*new/plan.json: No such file or directory"):
        check_output_file(tmp_path / "new" / "plan.json", "the plan", create_parents=False)
    with pytest.raises(UserError, match=r"cannot write the plan to .*: it is a directory"):
        check_output_file(tmp_path, "the plan")
    with pytest.raises(UserError, match=r"cannot write the plan to .*file/plan.json: .*file is not a directory"):
        check_output_file(tmp_path / "file" / "plan.json", "the plan")
