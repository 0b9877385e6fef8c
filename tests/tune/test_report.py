"""The tuning report from a synthetic result: spreads, unsettled points, finalists, claims."""

from __future__ import annotations

import dataclasses
import json
import os
import re

from aitune_triton.tune.objective import Objective, decide
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant
from aitune_triton.tune.report import to_markdown, write_reports
from aitune_triton.tune.result import TuneResult
from aitune_triton.tune.space import SearchSpace

OBJECTIVE = Objective("max-throughput", budget_ms=20.0)
SPACE = SearchSpace((1, 2), (0, 500, 2000), (2, 8, 32))
CURRENT, OTHER = Variant(1, 500), Variant(2, 0)


def m(point: Point, thr: float, half: float = 0.05, p99: float = 10.0, index: int = 0) -> Measurement:
    return Measurement(point, thr, p99 / 2, p99 / 1.2, p99, index=index, throughput_low=thr * (1 - half),
                       throughput_high=thr * (1 + half), windows=(thr * (1 - half), thr, thr * (1 + half)))


def result(tmp_path, finalists: list[Remeasured]) -> TuneResult:
    measured = (m(Point(CURRENT, 8), 1500.0, index=1), m(Point(OTHER, 8), 2100.0, index=2),
                Measurement(Point(OTHER, 32), 1800.0, status="unstable", detail="Failed to obtain stable measurement",
                            index=3, throughput_low=900.0, throughput_high=2600.0, windows=(900.0, 1800.0, 2600.0)),
                Measurement(Point(OTHER, 2), status="stalled", detail="perf_analyzer timed out after 180 s",
                            index=4))
    decision = decide(finalists, OBJECTIVE, CURRENT)
    return TuneResult("m", OBJECTIVE, SPACE, "quick", measured, decision.chosen, decision.incumbent, CURRENT, 3,
                      decision.chosen is not None, decision.reason, 12.0, tmp_path / "config.pbtxt",
                      finalists=tuple(finalists), improvement=decision.improvement, ties=decision.ties,
                      perf_flags={"measurement-mode": "time_windows", "measurement-interval": 1000},
                      load_avg=(3.5, 4.25))


def rounds(point: Point, values: list[float]) -> Remeasured:
    return Remeasured(point, tuple(m(point, v, half=0.02) for v in values))


def test_report_shows_spreads_marks_unsettled_points_and_never_zero(tmp_path):
    r = result(tmp_path, [rounds(Point(OTHER, 8), [2000, 2200, 2100]), rounds(Point(CURRENT, 8), [1400, 1600, 1500])])
    paths = write_reports(r, tmp_path / "report")
    assert set(paths) == {"json", "markdown", "plot"}
    md = paths["markdown"].read_text()
    assert "2 of 18 grid points" not in md and "4 of 18 grid points measured (22 %); 1 stalled, 1 unstable" in md
    assert "| 3 | 2 | 0 | - | 32 | 1800.0 | 900.0–2600.0 (±47 %) | — | — | unstable: Failed to obtain" in md
    assert "| 4 | 2 | 0 | - | 2 | — | — | — | — | stalled: perf_analyzer timed out" in md
    assert "| 0.0 |" not in md
    assert "improvement over the current config (same rounds, spreads apart): 1.40x throughput" in md
    assert ("| 2 inst, delay 0 us | 8 | 2000.0, 2200.0, 2100.0 | 2100.0 | 2000.0–2200.0 (±5 %) | 10.00 "
            "| **chosen** |") in md
    assert "load average) at start / end: 3.50 / 4.25" in md
    assert "--measurement-mode time_windows" in md
    data = json.loads(paths["json"].read_text())
    stalled = next(x for x in data["measurements"] if x["status"] == "stalled")
    assert stalled["throughput"] is None and stalled["p99_ms"] is None
    assert data["improvement"] == 1.4 and data["remeasured"] == 6 and len(data["finalists"]) == 2
    assert data["finalists"][0]["throughput_low"] == 2000.0 and len(data["finalists"][0]["rounds"]) == 3
    assert data["statuses"] == {"ok": 2, "unstable": 1, "stalled": 1}
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG" and os.path.getsize(paths["plot"]) > 10_000


def test_report_makes_no_claim_when_the_rounds_overlap(tmp_path):
    r = result(tmp_path, [rounds(Point(OTHER, 8), [1500, 2200, 1900]), rounds(Point(CURRENT, 8), [1400, 1800, 1600])])
    md = to_markdown(r)
    assert r.chosen.point == Point(CURRENT, 8) and r.improvement is None
    assert "improvement over the current config (" not in md and not re.search(r"\d\.\d\dx", md)
    assert "current config kept: no finalist beats it beyond the re-measured spread" in md
    assert "within the chosen config's spread (equally good here): 2 inst, delay 0 us @ c=8" in md
    stalled = Remeasured(Point(CURRENT, 8), (Measurement(Point(CURRENT, 8), status="stalled"),) * 3)
    r = result(tmp_path, [rounds(Point(OTHER, 8), [2000, 2200, 2100]), stalled])
    md = to_markdown(r)
    assert "no improvement over the current config is claimed: it was stalled when re-measured" in md
    assert dataclasses.asdict(r.chosen.point) == dataclasses.asdict(Point(OTHER, 8))


def test_report_says_which_transport_measured_the_chosen_point(tmp_path):
    from aitune_triton.triton.perf import PerfOptions
    from aitune_triton.triton.render import parse_config
    from aitune_triton.tune.space import placement

    cfg = parse_config('name: "m"\nbackend: "python"\nmax_batch_size: 8\ninstance_group { count: 1 kind: KIND_GPU }\n')
    p = placement(cfg, 2, PerfOptions(), "system", visible_gpus=2)
    assert p["total_instances"] == 4 and p["shared_memory"] == "system"
    assert p["text"] == ("2 instance(s) on each of the 2 GPU(s) the server sees (4 in all); "
                         "client transport: gRPC, system shared memory")
    space = SearchSpace((1, 2), (0,), (4,), transports=("none", "system"), gpus=2)
    chosen = Measurement(Point(Variant(2, 0), 4, "system"), 900.0, 2.0, 3.0, 4.0, throughput_low=880.0,
                         throughput_high=920.0, windows=(880.0, 900.0, 920.0))
    result = TuneResult("m", Objective("max-throughput"), space, "brute", (chosen,), chosen, None, Variant(1, 0), 2,
                        True, "best", 1.0, tmp_path / "config.pbtxt", placement=p)
    md = to_markdown(result)
    assert "measured with client transport system shared memory (the written config does not depend on it)" in md
    assert "| # | instances per GPU | delay us | preferred | concurrency | transport | infer/s |" in md
    assert "| 0 | 2 | 0 | - | 4 | system | 900.0 |" in md
    assert json.loads(write_reports(result, tmp_path / "r")["json"].read_text())["chosen"]["transport"] == "system"
