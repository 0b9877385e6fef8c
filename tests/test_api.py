"""The generate API: stage-1 selection among fallback formats by measurement."""
import json
from pathlib import Path

import pytest

from aitune_triton.api import generate
from aitune_triton.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_stage1_measures_every_format_and_keeps_only_the_chosen_one(tmp_path):
    result = generate(ROOT / "examples" / "multi_io" / "model.py", tmp_path / "repo",
                      {"backends": ("python",), "strategy": "min-latency"})
    selection = result.selection
    assert {r.name for r in selection.rows} == {"aoti", "export", "eager"}
    assert all(r.accuracy.ok for r in selection.rows)
    manifest = json.loads((tmp_path / "repo" / "multi_io" / "manifest.json").read_text())
    chosen = manifest["tuning"]["stage1"]["chosen"] or "eager"
    assert manifest["artifact"]["format"] == chosen
    files = sorted(p.name for p in (tmp_path / "repo" / "multi_io" / "1").iterdir())
    assert files == sorted(["model.py", *manifest["artifact"]["files"]])
    assert not list((tmp_path / "repo" / "multi_io").glob(".trial-*"))


def test_latency_budget_needs_a_budget(tmp_path):
    with pytest.raises(UserError, match="budget_ms"):
        generate(ROOT / "examples" / "cnn" / "model.py", tmp_path / "repo", {"strategy": "latency-budget"})
