"""An AOTInductor package compiled for a CPU this host is not, served by the real Triton: ``validate``
reports the runtime's one line (what the host lacks and the fix), not "Stub process ... is not healthy".

Without the check the stub would load the package and die with an invalid opcode. The package here
is a stand-in that is never loaded; the instruction-set extension it needs, ``avx9000``, exists on no
CPU, so the test means the same on every host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from pathlib import Path

import pytest
import torch

from aitune_triton.runtime.aitune_runtime import DATA_FILE, Requirements
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate.harness import ValidateOptions, validate_repository

pytestmark = [pytest.mark.live]

ROOT = Path(__file__).resolve().parents[2]


def _compiled_elsewhere(model_dir: Path) -> Requirements:
    """Turn the committed model into one serving an AOTInductor package of a CPU with ``avx9000``."""
    version_dir = model_dir / "1"
    for old in version_dir.glob("model.*.pt2"):
        old.unlink()
    package = version_dir / "model.aoti.pt2"
    package.write_bytes(b"an AOTInductor package compiled on another host")
    release = "%d.%d.%d" % tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:3])
    needs = Requirements(python="%d.%d" % tuple(map(int, platform.python_version_tuple()[:2])),
                         torch=torch.__version__, torch_rule="exact", torch_min=release, cuda=None, triton_min="2.51",
                         machine=platform.machine(), cpu_isa="AVX512 AVX512_VNNI",
                         cpu_flags=("avx2", "avx9000"))
    data = json.loads((version_dir / DATA_FILE).read_text())
    data.update(format="aoti", files={"aoti": package.name},
                sha256={package.name: hashlib.sha256(package.read_bytes()).hexdigest()},
                requirements=needs.to_dict())
    (version_dir / DATA_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    manifest = Manifest.load(model_dir)
    artifact = dataclasses.replace(manifest.artifact, format="aoti", files=(package.name,))
    dataclasses.replace(manifest, artifact=artifact, runtime_requirements=needs).sealed(model_dir).save(model_dir)
    return needs


def test_validate_names_the_instruction_set_the_host_lacks(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "cnn", repo / "cnn",
                    ignore=shutil.ignore_patterns("__pycache__", "logs", "tensorrt"))
    _compiled_elsewhere(repo / "cnn")
    report = validate_repository(repo, ValidateOptions(perf=False, models=("cnn",), startup_timeout_s=300,
                                                       report_dir=tmp_path / "report"))
    (model,) = report.models
    load = next(c for c in model.checks if c.name == "load")
    assert load.status == "fail"
    # the runtime's line first (the summary table shows a detail's first line), Triton's own message below
    assert load.detail.splitlines()[0] == (
        "model cnn: its AOTInductor package needs %s CPUs with AVX512 AVX512_VNNI but this host's CPU "
        "lacks avx9000: regenerate it on such a host or with `--fallback-format export` / `--portable` (any host)"
        % platform.machine())
    assert "version 1 is at UNAVAILABLE state" in load.detail and "not healthy" not in load.detail
