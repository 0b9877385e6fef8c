"""The manifest's typed ``tuning`` section: the JSON it has always had, and its one save path."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.triton.manifest import MANIFEST, Manifest
from aitune_triton.tune.objective import Objective, decide
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant
from aitune_triton.tune.result import TuneResult
from aitune_triton.triton.tuning_section import TuneSummary, TuningSection
from aitune_triton.tune.space import SearchSpace
from aitune_triton.tune.writeback import record

REFERENCE_MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "cnn"
STAGE1 = {"strategy": "max-throughput", "chosen": "aoti", "candidates": []}


def rounds(point: Point, values: list[float]) -> Remeasured:
    return Remeasured(point, tuple(Measurement(point, v, 2.0, 3.0, 4.0) for v in values))


def tuned(tmp_path: Path) -> TuneResult:
    objective, current, other = Objective("max-throughput"), Variant(1, 500), Variant(2, 0)
    finalists = [rounds(Point(other, 8), [2000, 2100, 2050]), rounds(Point(current, 8), [1000, 1100, 1050])]
    decision = decide(finalists, objective, current)
    return TuneResult("cnn", objective, SearchSpace((1, 2), (0, 500), (8,)), "quick", (), decision.chosen,
                      decision.incumbent, current, 2, True, decision.reason, 3.0, tmp_path / "cnn" / "config.pbtxt",
                      finalists=tuple(finalists), improvement=decision.improvement, load_avg=(1.5, 2.0))


def test_record_keeps_stage1_writes_the_summary_and_saves_through_manifest_save(tmp_path):
    model_dir = tmp_path / "cnn"
    shutil.copytree(REFERENCE_MODEL, model_dir)
    generated = dataclasses.replace(Manifest.load(model_dir), tuning=TuningSection(stage1=STAGE1))  # as generate
    generated.save(model_dir)
    result = tuned(tmp_path)
    record(model_dir, Manifest.load(model_dir), result, "old config text", model_dir / "tuning", "2026-01-01T00:00:00Z")
    data = json.loads((model_dir / MANIFEST).read_text())
    tuning = data["tuning"]
    assert tuning["stage1"] == STAGE1  # generate's record survives a tune
    assert tuning["chosen"]["instances"] == 2 and tuning["written"] is True and tuning["report_dir"] == "tuning"
    assert tuning["config_path"] == "config.pbtxt" and tuning["backup_path"] == "config.pbtxt.bak"
    assert tuning["improvement"] == pytest.approx(2050 / 1050, abs=1e-3) and tuning["load_avg"] == [1.5, 2.0]
    assert data["history"][-1]["previous_config"] == "old config text"
    loaded = Manifest.load(model_dir)
    assert isinstance(loaded.tuning, TuningSection) and loaded.tuning.last is not None
    assert loaded.tuning.to_dict() == tuning  # reads back the JSON it wrote
    assert loaded.tuning.last.chosen == result.chosen.to_dict()


def test_tuning_section_json_and_its_errors(tmp_path):
    assert TuningSection.from_dict({}) == TuningSection() and TuningSection().to_dict() == {}
    assert TuningSection.from_dict({"stage1": STAGE1}).to_dict() == {"stage1": STAGE1}
    summary = TuneSummary("cnn", "brute", None, False, "nothing met the constraint")
    assert TuningSection.from_dict(summary.to_dict()).last == summary
    with pytest.raises(KeyError, match="tuning: mode, chosen, written, reason missing"):
        TuningSection.from_dict({"model": "cnn"})
    model_dir = tmp_path / "cnn"
    shutil.copytree(REFERENCE_MODEL, model_dir)
    data = json.loads((model_dir / MANIFEST).read_text())
    data["tuning"] = {**summary.to_dict(), "written": "yes"}
    (model_dir / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"not a valid manifest .*tuning.written must be true or false"):
        Manifest.load(model_dir)
