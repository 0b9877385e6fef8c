"""The package's quality gates: ruff and mypy over ``aitune_triton/`` with the project's config.

Both read their settings from ``pyproject.toml`` (``[tool.ruff]``, ``[tool.mypy]``), so running
``.venv/bin/ruff check aitune_triton`` or ``.venv/bin/mypy`` by hand gives the same verdict as CI.
A new finding fails the suite with the tool's own report.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail("%s is not installed; `make test` installs the dev extra (pyproject.toml)" % name)
        return found
    return str(path)


def test_ruff_finds_nothing_in_the_package():
    proc = subprocess.run([_tool("ruff"), "check", "--no-cache", "aitune_triton"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_package():
    proc = subprocess.run([_tool("mypy"), "--cache-dir=/dev/null"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout
