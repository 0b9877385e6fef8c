"""`make demo` then `make test` leave `git status` empty (the README's promise; .ci/run checks it after
the suite): the demo's output is ignored, and servers write no bytecode into a repository."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aitune_triton.triton.launch import build_environment

ROOT = Path(__file__).resolve().parents[1]


def _demo_outputs() -> list[str]:
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    return re.findall(r"--(?:out|report) (\S+)", recipe)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_what_the_demo_writes_is_ignored_by_git():
    outputs = _demo_outputs()
    assert outputs == ["demo/model_repository", "demo/validation_report"]
    probes = [o + "/cnn/1/model.py" for o in outputs] + ["model_repository/cnn/1/__pycache__/model.cpython-311.pyc"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == probes


def test_server_stubs_write_no_bytecode():
    assert build_environment({"PATH": "/usr/bin"})["PYTHONDONTWRITEBYTECODE"] == "1"
