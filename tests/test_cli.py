"""CLI start-up: ``--version`` and ``--help`` answer without importing torch (it takes seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from aitune_triton.cli import main
try:
    main([%r], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "numpy", "onnx", "onnxruntime", "tritonclient") if m in sys.modules)
    print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_import_torch(flag):
    run = subprocess.run([sys.executable, "-c", PROBE % flag], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "HEAVY=\n" in run.stdout, run.stdout
    if flag == "--version":
        assert "aitune-triton, version" in run.stdout
    else:
        assert "pack-env" in run.stdout
