"""The grid of one model and the configs its points load: CPU cores, multi-profile preferred
sizes, and on GPU the instances per GPU and the client transports."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from aitune_triton.errors import UserError
from aitune_triton.probe_section import BatchingProbe, ChecksSection
from aitune_triton.profile_set import ProfileSet, TensorRTProfile
from aitune_triton.triton.render import check_config, parse_config
from aitune_triton.tune.objective import Objective
from aitune_triton.tune.points import Point, Variant
from aitune_triton.tune.report import to_markdown, write_reports
from aitune_triton.tune.result import TuneResult
from aitune_triton.tune.options import TuneOptions
from aitune_triton.tune.space import SearchSpace, apply_variant, batching_refused, build_space, current_variant, \
    instance_copies

def test_space_validation_and_order():
    space = SearchSpace((1, 2), (0, 500), (4, 8))
    assert space.size == 8 and len(space.points()) == 8
    assert [p.variant for p in space.points()[:2]] == [Variant(1, 0)] * 2  # variant-major: one reload per variant
    assert space.shift(Point(Variant(1, 0), 4), "concurrency", -1) is None
    assert space.snap("delay_us", 400) == 500 and space.snap("instances", 3) in (2,)
    with pytest.raises(UserError, match=r"search dimension instances needs distinct values, got \[1, 1\]"):
        SearchSpace((1, 1), (0,), (1,))

PY_CONFIG = """
name: "m"
backend: "python"
max_batch_size: 16
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { max_queue_delay_microseconds: 500 }
model_warmup { name: "b16" batch_size: 16 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }
"""  # noqa: E501 - one warmup entry per line, as Triton's docs write it

TRT_CONFIG = """
name: "m_trt"
platform: "tensorrt_plan"
max_batch_size: 16
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group { count: 1 kind: KIND_GPU profile: [ "0", "1" ] }
dynamic_batching { max_queue_delay_microseconds: 100 }
"""

def profiles(*opts: int) -> ProfileSet:
    return ProfileSet(tuple(TensorRTProfile().add_input_shape("x", (1, 4), (o, 4), (16, 4)) for o in opts),
                      "samples_used", 16)


def manifest(backend: str, profile_set: ProfileSet, max_batch: int = 16, checks=None):
    # build_space reads only these fields of a Manifest
    return SimpleNamespace(backend=backend, profiles=profile_set, max_batch_size=max_batch,
                           checks=checks or ChecksSection())


def test_a_model_whose_rows_are_not_independent_is_never_given_dynamic_batching():
    """generate's probe found a row's outputs depend on its batch-mates: no variant batches, the
    written config has no dynamic batcher (even one the base had), and the reason is stated."""
    probe = BatchingProbe(False, ("0", "1"), "row 0 changed by 3.1e-01 next to row 1")
    dependent = manifest("python", profiles(1), checks=ChecksSection(batching=probe))
    base = parse_config(PY_CONFIG)
    space = build_space(base, dependent, TuneOptions(delays_us=(0, 500, 2000)))
    assert space.delays_us == (None,) and all(v.delay_us is None for v in space.variants())
    for variant in space.variants():
        cfg = apply_variant(base, variant, 16)
        assert not cfg.HasField("dynamic_batching") and cfg.max_batch_size == 16
    assert batching_refused(dependent) == ("dynamic batching stays off: generate found that rows are not independent "
                                           "(row 0 changed by 3.1e-01 next to row 1), so merging requests would "
                                           "change answers")
    independent = manifest("python", profiles(1), checks=ChecksSection(batching=BatchingProbe(True, (), "")))
    assert batching_refused(independent) is None
    assert build_space(base, independent, TuneOptions(delays_us=(0, 500))).delays_us == (0, 500)
    no_batcher = parse_config(PY_CONFIG.replace("dynamic_batching { max_queue_delay_microseconds: 500 }", ""))
    assert current_variant(no_batcher).delay_us is None

def test_apply_variant_clamps_to_the_plan_and_stays_valid():
    base = parse_config(PY_CONFIG)
    cfg = apply_variant(base, Variant(2, 2000), max_batch_size=8)
    assert cfg.max_batch_size == 8 and cfg.model_warmup[0].batch_size == 8
    assert cfg.instance_group[0].count == 2 and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    check_config(cfg)
    assert base.max_batch_size == 16 and base.instance_group[0].count == 1  # the base is not modified
    assert current_variant(cfg) == Variant(2, 2000)

def test_build_space_preferred_only_for_multi_profile_plans(monkeypatch):
    opts = TuneOptions(instances=(1, 2, 4, 8), delays_us=(0, 500), concurrency=(2, 8))
    monkeypatch.setattr("aitune_triton.tune.space.usable_cores", lambda: 2)
    py = build_space(parse_config(PY_CONFIG), manifest("python", profiles(8)), opts)
    assert py.instances == (1, 2)  # CPU instances bounded by the cores
    assert py.preferred == ((),)
    trt_cfg = parse_config(TRT_CONFIG)
    trt = build_space(trt_cfg, manifest("tensorrt", profiles(4, 12)), opts)
    assert trt.instances == (1, 2, 4, 8)  # GPU instances are not bounded by CPU cores
    assert trt.preferred == ((), (4, 12))
    for variant in trt.variants():
        check_config(apply_variant(trt_cfg, variant, 16), num_profiles=2)
    single = build_space(trt_cfg, manifest("tensorrt", profiles(4)), opts)
    assert single.preferred == ((),)
    no_batch = parse_config(PY_CONFIG.replace("max_batch_size: 16", "max_batch_size: 0")
                            .replace("dynamic_batching { max_queue_delay_microseconds: 500 }", "")
                            .replace("batch_size: 16", "batch_size: 1"))
    assert build_space(no_batch, manifest("python", profiles(1), 0), opts).delays_us == (None,)

def test_placement_names_gpus_and_transport(tmp_path):
    from aitune_triton.triton.perf import PerfOptions
    from aitune_triton.tune.space import placement

    cfg = parse_config('name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
                       'instance_group { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] }\n')
    p = placement(cfg, 2, PerfOptions(shared_memory="cuda"))
    assert p["gpus"] == [0, 1] and p["total_instances"] == 4 and p["kind"] == "KIND_GPU"
    assert p["text"] == "2 instance(s) on each of GPU 0, 1 (4 in all); client transport: gRPC, CUDA shared memory"
    cpu = parse_config('name: "m"\nbackend: "python"\nmax_batch_size: 8\ninstance_group { count: 2 kind: KIND_CPU }\n')
    assert placement(cpu, 3, PerfOptions())["text"] == "3 CPU instance(s); client transport: gRPC, plain messages"
    objective = Objective("max-throughput")
    result = TuneResult("m", objective, SearchSpace((1,), (0,), (1,)), "quick", (), None, None, Variant(1, 0), 0,
                        False, "none", 1.0, tmp_path / "config.pbtxt", placement=p)
    assert "- placement: 2 instance(s) on each of GPU 0, 1" in to_markdown(result)
    assert json.loads(write_reports(result, tmp_path / "r")["json"].read_text())["placement"]["total_instances"] == 4

GPU_PY_CONFIG = PY_CONFIG.replace("kind: KIND_CPU", "kind: KIND_GPU")

def test_gpu_space_searches_instances_per_gpu_and_the_client_transport(monkeypatch):
    monkeypatch.setattr("aitune_triton.tune.space.usable_cores", lambda: 2)
    opts = TuneOptions(instances=(1, 2, 4), delays_us=(0, 500), concurrency=(2, 8))
    gpu = build_space(parse_config(GPU_PY_CONFIG), manifest("python", profiles(8)), opts, gpus=2)
    assert gpu.instances == (1, 2, 4) and gpu.gpus == 2  # per GPU, not bounded by CPU cores
    assert gpu.transports == ("none", "system", "cuda")
    assert gpu.size == 3 * 2 * 2 * 3 and len(set(gpu.points())) == gpu.size
    assert gpu.to_dict()["instances_are"] == "per GPU" and gpu.to_dict()["transports"] == ["none", "system", "cuda"]
    listed = parse_config(GPU_PY_CONFIG.replace("kind: KIND_GPU", "kind: KIND_GPU gpus: [ 1 ]"))
    assert build_space(listed, manifest("python", profiles(8)), opts, gpus=4).gpus == 1  # count is per listed GPU
    # the transport is a measurement dimension: every point of one variant loads the same config
    configs = {p.variant: apply_variant(parse_config(GPU_PY_CONFIG), p.variant, 16) for p in gpu.points()}
    assert len(configs) == len(gpu.variants())
    # no GPU visible, or CPU instances: the grid is the CPU one unless transports are asked for
    assert build_space(parse_config(GPU_PY_CONFIG), manifest("python", profiles(8)), opts, gpus=0).transports == (
        "none",)
    cpu = build_space(parse_config(PY_CONFIG), manifest("python", profiles(8)), opts, gpus=2)
    assert cpu.transports == ("none",) and cpu.gpus == 0 and cpu.instances == (1, 2) and cpu.size == 8
    asked = TuneOptions(instances=(1, 2), delays_us=(0,), concurrency=(4,), transports=("none", "system"))
    assert build_space(parse_config(PY_CONFIG), manifest("python", profiles(8)), asked, gpus=0).transports == (
        "none", "system")
    with pytest.raises(UserError, match="transport cuda .* needs a GPU visible to the server"):
        build_space(parse_config(PY_CONFIG), manifest("python", profiles(8)),
                    TuneOptions(transports=("none", "cuda")), gpus=0)

def test_visible_gpus_follows_cuda_visible_devices(monkeypatch, tmp_path):
    from aitune_triton.tune.space import visible_gpus

    smi = tmp_path / "nvidia-smi"  # a stand-in that lists what `nvidia-smi -L` lists on a 4-GPU host
    smi.write_text("#!/bin/sh\nfor i in 0 1 2 3; do echo \"GPU $i: NVIDIA H200 (UUID: GPU-$i)\"; done\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path, os.environ["PATH"]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == 4
    for mask, count in (("1,3", 2), ("", 0), ("-1", 0), ("0,1,2,3,4,5", 4), ("2,-1,3", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
        assert visible_gpus() == count, mask


def test_instance_copies_count_each_gpu_a_group_uses():
    def cfg(groups: str):
        return parse_config('name: "m"\nbackend: "python"\n' + groups)

    assert instance_copies(cfg("instance_group { count: 2 kind: KIND_GPU gpus: [0, 1] }"), 4) == 2
    assert instance_copies(cfg("instance_group { count: 2 kind: KIND_GPU }"), 4) == 4
    assert instance_copies(cfg("instance_group { count: 2 kind: KIND_CPU }"), 4) == 1
    assert instance_copies(cfg(""), 0) == 1 and instance_copies(cfg(""), 2) == 2  # KIND_AUTO
    assert instance_copies(cfg("instance_group { kind: KIND_GPU gpus: [1] }\ninstance_group { kind: KIND_CPU }"),
                           2) == 2
