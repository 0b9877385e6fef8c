"""The Model Analyzer hand-off: the profile config's structure, key by key against Model
Analyzer's docs/config.md (its own parser is run by benchmarks/check_model_analyzer_config.py,
outside the test environment)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from aitune_triton.triton.render import parse_config
from aitune_triton.tune.measure import perf_flags
from aitune_triton.tune.model_analyzer import write_model_analyzer_config
from aitune_triton.tune.objective import Objective
from aitune_triton.tune.options import tune_perf_options
from aitune_triton.tune.space import SearchSpace

CONFIG = """
name: "cnn"
backend: "python"
max_batch_size: 8
input { name: "image" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }
output { name: "output_0" data_type: TYPE_FP32 dims: [ 10 ] }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
ISSUE_GRID = SearchSpace((1, 2), (0, 500, 1000, 2000, 4000), (1, 2, 4, 8, 16, 32))


def write(tmp_path: Path, objective: Objective, cfg: str = CONFIG, space: SearchSpace = ISSUE_GRID, **perf) -> dict:
    options = dataclasses.replace(tune_perf_options(), **{"input_data": tmp_path / "input_data.json", **perf})
    flags = perf_flags(dataclasses.replace(options, measurement_interval_ms=2000, stability_percentage=60))
    path = write_model_analyzer_config(tmp_path / "out" / "ma.yaml", tmp_path / "repo", "cnn", parse_config(cfg),
                                       space, objective, flags, options)
    text = path.read_text()
    assert text.startswith("# Model Analyzer profile config written by aitune-triton tune for cnn")
    return yaml.safe_load(text)


def test_profile_config_carries_grid_objective_constraint_and_stable_flags(tmp_path):
    data = write(tmp_path, Objective("max-throughput", budget_ms=25.0))
    assert data["model_repository"] == str((tmp_path / "repo").resolve())
    assert data["run_config_search_disable"] is True and data["triton_launch_mode"] == "local"
    assert data["client_protocol"] == "grpc"
    assert data["output_model_repository_path"].startswith(str((tmp_path / "out").resolve()))
    entry = data["profile_models"]["cnn"]
    assert entry["objectives"] == ["perf_throughput"]
    assert entry["constraints"] == {"perf_latency_p99": {"max": 25.0}}
    assert entry["cpu_only"] is True
    assert entry["model_config_parameters"] == {
        "instance_group": [{"kind": "KIND_CPU", "count": [1, 2]}],
        "dynamic_batching": {"max_queue_delay_microseconds": [0, 500, 1000, 2000, 4000]},
        "max_batch_size": 8}
    assert entry["parameters"] == {"concurrency": [1, 2, 4, 8, 16, 32], "batch_sizes": [1]}
    # the settings that made points settle here (the looser retry), perf_analyzer's dashed names
    assert entry["perf_analyzer_flags"] == {
        "measurement-mode": "time_windows", "stability-percentage": 60, "max-trials": 6,
        "measurement-interval": 2000, "input-data": str((tmp_path / "input_data.json").resolve())}


def test_min_latency_gpu_model_without_batching(tmp_path):
    cfg = (CONFIG.replace("KIND_CPU", "KIND_GPU").replace("max_batch_size: 8", "max_batch_size: 0")
           .replace("dynamic_batching { max_queue_delay_microseconds: 500 }", ""))
    data = write(tmp_path, Objective("min-latency", min_throughput=500.0), cfg,
                 SearchSpace((1, 2, 4), (None,), (1, 4)), input_data=None, shapes={"image": (3, 64, 64)},
                 protocol="http")
    entry = data["profile_models"]["cnn"]
    assert entry["objectives"] == ["perf_latency_p99"]
    assert entry["constraints"] == {"perf_throughput": {"min": 500.0}}
    assert "cpu_only" not in entry and data["client_protocol"] == "http"
    assert entry["model_config_parameters"] == {"instance_group": [{"kind": "KIND_GPU", "count": [1, 2, 4]}]}
    assert entry["perf_analyzer_flags"]["shape"] == ["image:3,64,64"]
    assert "input-data" not in entry["perf_analyzer_flags"]


def test_unconstrained_objective_has_no_constraints(tmp_path):
    entry = write(tmp_path, Objective("max-throughput"))["profile_models"]["cnn"]
    assert "constraints" not in entry and entry["objectives"] == ["perf_throughput"]
