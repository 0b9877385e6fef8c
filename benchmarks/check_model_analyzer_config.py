"""Check (not a test): parse a config written by ``tune --export-model-analyzer`` with Model
Analyzer's own config parser, and print the sweep it would run.

Model Analyzer is not a dependency of aitune-triton (it pulls in a large stack), so this runs in a
separate environment that has it::

    python3 -m venv /tmp/ma && /tmp/ma/bin/pip install triton-model-analyzer==1.58.0
    /tmp/ma/bin/python benchmarks/check_model_analyzer_config.py REPO/MODEL/tuning/model_analyzer.yaml

Exit 0 when Model Analyzer accepts the file and its sweep matches the file's grid.
"""

from __future__ import annotations

import sys

import yaml


def main(path: str) -> int:
    from model_analyzer.cli.cli import CLI
    from model_analyzer.config.input.config_command_profile import ConfigCommandProfile

    config = ConfigCommandProfile()
    cli = CLI()
    cli.add_subcommand(cmd="profile", help="profile", config=config)
    cli.parse(["profile", "-f", path])  # raises TritonModelAnalyzerException on a bad key or value
    wanted = yaml.safe_load(open(path))
    (name, entry), = wanted["profile_models"].items()
    model = next(m for m in config.profile_models if m.model_name() == name)
    params = model.model_config_parameters()
    print("model:", model.model_name(), "cpu_only:", model.cpu_only())
    print("objectives:", model.objectives(), "constraints:", model.constraints())
    print("parameters:", model.parameters())
    print("model_config_parameters:", params)
    print("perf_analyzer_flags:", model.perf_analyzer_flags())
    assert model.parameters()["concurrency"] == entry["parameters"]["concurrency"], model.parameters()
    grid = entry["model_config_parameters"]
    assert params["dynamic_batching"] == [{"max_queue_delay_microseconds": grid["dynamic_batching"][
        "max_queue_delay_microseconds"]}], params
    assert params["instance_group"][0][0]["count"] == grid["instance_group"][0]["count"], params
    for key, value in entry["perf_analyzer_flags"].items():
        assert str(model.perf_analyzer_flags()[key]) == str(value), (key, model.perf_analyzer_flags())
    print("OK: Model Analyzer %s accepts %s" % (__import__("importlib.metadata").metadata.version(
        "triton-model-analyzer"), path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
