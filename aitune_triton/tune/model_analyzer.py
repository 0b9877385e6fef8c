"""Hand-off to Triton Model Analyzer: a ``model-analyzer profile`` config for the same search.

Users who prefer Model Analyzer's reports (or its GPU metrics) can run it over the grid ``tune``
searched, under the same objective and constraint, with the perf_analyzer settings that made
the points settle here and the recorded sample inputs. The keys follow Model Analyzer's
``docs/config.md``: a manual sweep (``run_config_search_disable``) whose
``model_config_parameters`` are the instance counts and queue delays, ``parameters.concurrency``
the client concurrencies, ``constraints``/``objectives`` the objective, ``perf_analyzer_flags``
the measurement settings (dashed perf_analyzer option names).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from tritonclient.grpc import model_config_pb2

from aitune_triton.triton import tools
from aitune_triton.triton.perf import PerfOptions
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.tune.objective import Objective
from aitune_triton.tune.space import SearchSpace

KIND_NAMES = {model_config_pb2.ModelInstanceGroup.KIND_AUTO: "KIND_AUTO",
              model_config_pb2.ModelInstanceGroup.KIND_GPU: "KIND_GPU",
              model_config_pb2.ModelInstanceGroup.KIND_CPU: "KIND_CPU",
              model_config_pb2.ModelInstanceGroup.KIND_MODEL: "KIND_MODEL"}


def model_analyzer_config(repo: Path, model: str, base: model_config_pb2.ModelConfig, space: SearchSpace,
                          objective: Objective, flags: dict, perf: PerfOptions, output_dir: Path) -> dict:
    """The profile config as a dict (``flags``: ``measure.perf_flags`` of the settings that settled)."""
    kind = KIND_NAMES.get(base.instance_group[0].kind if base.instance_group else 0, "KIND_AUTO")
    cpu_only = kind == "KIND_CPU"
    # one group whose count is swept (docs/config.md, <model-config-parameters>)
    params: dict = {"instance_group": [{"kind": kind, "count": list(space.instances)}]}
    delays = [d for d in space.delays_us if d is not None]
    if delays:
        params["dynamic_batching"] = {"max_queue_delay_microseconds": delays}
        preferred = [list(p) for p in space.preferred if p]
        if preferred and len(preferred) == len(space.preferred):
            params["dynamic_batching"]["preferred_batch_size"] = preferred
    if base.max_batch_size:
        params["max_batch_size"] = base.max_batch_size  # never above what the plan allows
    pa_flags: dict = dict(flags)
    if perf.input_data is not None:
        pa_flags["input-data"] = str(Path(perf.input_data).resolve())
    if perf.shapes:
        pa_flags["shape"] = ["%s:%s" % (n, ",".join(str(int(d)) for d in dims)) for n, dims in perf.shapes.items()]
    if perf.shared_memory != "none":
        pa_flags["shared-memory"] = perf.shared_memory
    constraints: dict = {}
    if objective.budget_ms is not None:
        constraints["perf_latency_p99"] = {"max": objective.budget_ms}
    if objective.min_throughput is not None:
        constraints["perf_throughput"] = {"min": objective.min_throughput}
    entry: dict = {
        "objectives": ["perf_throughput" if objective.kind == "max-throughput" else "perf_latency_p99"],
        "model_config_parameters": params,
        "parameters": {"concurrency": list(space.concurrency), "batch_sizes": [perf.batch_size]},
        "perf_analyzer_flags": pa_flags,
    }
    if constraints:
        entry["constraints"] = constraints
    if cpu_only:
        entry["cpu_only"] = True
    config: dict = {
        "model_repository": str(Path(repo).resolve()),
        "run_config_search_disable": True,
        "triton_launch_mode": "local",
        "client_protocol": perf.protocol,
        "output_model_repository_path": str(Path(output_dir).resolve() / "ma_output_repository"),
        "override_output_model_repository": True,
        "checkpoint_directory": str(Path(output_dir).resolve() / "ma_checkpoints"),
        "export_path": str(Path(output_dir).resolve() / "ma_results"),
        "profile_models": {model: entry},
    }
    binary = tools.find_perf_analyzer()
    if binary is not None:  # the one that measured here; Model Analyzer looks on PATH otherwise
        config["perf_analyzer_path"] = str(binary)
    return config


def write_model_analyzer_config(path: Path, repo: Path, model: str, base: model_config_pb2.ModelConfig,
                                space: SearchSpace, objective: Objective, flags: dict, perf: PerfOptions) -> Path:
    """Write the profile config to ``path`` (atomically) with a header saying how to run it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model_analyzer_config(repo, model, base, space, objective, flags, perf, path.parent)
    header = ("# Model Analyzer profile config written by aitune-triton tune for %s: %s;\n"
              "# %d instance counts x %d queue delays x %d client concurrencies. Run: model-analyzer profile -f %s\n"
              "# (paths are this machine's; Model Analyzer's local launch mode needs tritonserver on PATH)\n"
              % (model, objective.describe(), len(space.instances), len(space.delays_us), len(space.concurrency),
                 path.name))
    replace_file_atomically(path, header + yaml.safe_dump(config, sort_keys=False))
    return path
