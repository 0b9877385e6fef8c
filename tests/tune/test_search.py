"""Stage-2 search logic as pure functions over a measured-cost table (no server): the quick
search against brute force on synthetic grids, constraints, configs and reports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from types import SimpleNamespace

import pytest

from aitune_triton.errors import UserError
from aitune_triton.tensorrt.profiles import ProfileSet, TensorRTProfile
from aitune_triton.triton.render import check_config, parse_config
from aitune_triton.tune.search import (
    Measurement,
    Objective,
    Point,
    SearchSpace,
    TuneOptions,
    TuneResult,
    Variant,
    apply_variant,
    brute_force,
    build_space,
    config_text,
    current_variant,
    decide,
    hill_climb,
    pick_finalists,
    quick_budget,
    to_markdown,
    write_reports,
)
from aitune_triton.tune.measure import Remeasured

SPACE = SearchSpace(instances=(1, 2, 4), delays_us=(0, 100, 250, 500, 1000, 2000, 4000),
                    concurrency=(1, 2, 4, 8, 16, 32, 64))


def synthetic(point: Point, noise: float = 0.0) -> Measurement:
    """A plausible 2-core CPU: 2 instances best, batching pays most around 1 ms delay,
    throughput saturates with concurrency while p99 keeps growing (Little's law)."""
    v, c = point.variant, point.concurrency
    capacity = {1: 800.0, 2: 1100.0, 4: 950.0}[v.instances]
    batching = 1.0 + 0.6 * (1.0 - abs(min(v.delay_us, 4000) - 1000) / 4000.0) * c / (c + 8)
    thr = capacity * batching * c / (c + 3.0)
    if noise:
        digest = hashlib.sha256(repr(point).encode()).digest()
        thr *= 1.0 + noise * (digest[0] / 127.5 - 1.0)
    p99 = 2.5 * c / thr * 1000.0 + v.delay_us / 1000.0
    return Measurement(point, thr, p99 / 2.5, p99 / 1.3, p99)


class Table:
    """The measured-cost table: counts how many distinct points the search asked for."""

    def __init__(self, noise: float = 0.0, fail: set | None = None):
        self.noise, self.fail, self.asked = noise, fail or set(), []

    def __call__(self, point: Point) -> Measurement:
        self.asked.append(point)
        if point in self.fail:
            return Measurement(point, status="failed", detail="load: boom")
        return synthetic(point, self.noise)


@pytest.mark.parametrize("objective", [
    Objective("max-throughput"),
    Objective("max-throughput", budget_ms=20.0),
    Objective("max-throughput", budget_ms=12.0),
    Objective("min-latency", min_throughput=900.0),
    Objective("min-latency", min_throughput=1500.0),
])
def test_hill_climb_finds_the_brute_force_best(objective):
    brute = objective.best(brute_force(SPACE, synthetic))
    table = Table()
    quick = hill_climb(SPACE, table, objective, min_gain=0.0)
    best = objective.best(quick)
    assert best is not None and brute is not None
    assert objective.feasible(best)
    if objective.kind == "max-throughput":
        assert best.throughput >= 0.97 * brute.throughput
    else:
        assert best.p99_ms <= brute.p99_ms / 0.97
    assert len(table.asked) == len(set(table.asked)) == len(quick)  # each point measured once
    assert len(quick) <= 0.15 * SPACE.size, len(quick)


def test_constraints_are_respected_and_drive_the_choice():
    free = Objective("max-throughput").best(brute_force(SPACE, synthetic))
    tight = Objective("max-throughput", budget_ms=12.0)
    best = tight.best(hill_climb(SPACE, Table(), tight))
    assert best.p99_ms <= 12.0 < free.p99_ms
    assert best.point.concurrency < free.point.concurrency
    floor = Objective("min-latency", min_throughput=1500.0)
    best = floor.best(hill_climb(SPACE, Table(), floor))
    assert best.throughput >= 1500.0
    # nothing can meet an impossible constraint: no best, even though points were measured
    impossible = Objective("max-throughput", budget_ms=0.01)
    measured = hill_climb(SPACE, Table(), impossible)
    assert measured and impossible.best(measured) is None


def test_quick_search_under_noise_stays_close_and_cheap():
    objective = Objective("max-throughput", budget_ms=25.0)
    brute = objective.best(brute_force(SPACE, lambda p: synthetic(p, noise=0.04)))
    for start in (None, Point(Variant(1, 0), 1), Point(Variant(4, 4000), 64)):
        table = Table(noise=0.04)
        best = objective.best(hill_climb(SPACE, table, objective, start=start))
        assert best.throughput >= 0.90 * brute.throughput, (start, best, brute)
        assert len(table.asked) <= 0.2 * SPACE.size


def test_infeasible_start_walks_to_feasibility():
    objective = Objective("max-throughput", budget_ms=10.0)
    start = Point(Variant(1, 4000), 64)
    assert not objective.feasible(synthetic(start))
    best = objective.best(hill_climb(SPACE, Table(), objective, start=start))
    assert best is not None and best.p99_ms <= 10.0


def test_failed_points_are_never_chosen_and_budget_caps_measurements():
    objective = Objective("max-throughput")
    winner = objective.best(brute_force(SPACE, synthetic))
    table = Table(fail={winner.point})
    measured = brute_force(SPACE, table)
    best = objective.best(measured)
    assert best.point != winner.point and best.ok
    capped = Table()
    assert len(hill_climb(SPACE, capped, objective, max_measurements=5)) == 5 == len(capped.asked)


def test_objective_order():
    o = Objective("max-throughput", budget_ms=10.0)
    p = Point(Variant(1, 0), 1)
    fast_late = Measurement(p, 1000, 5, 8, 12)
    slow_ok = Measurement(p, 500, 2, 4, 6)
    assert o.better(slow_ok, fast_late) and not o.better(fast_late, slow_ok)
    assert o.better(Measurement(p, 515, 2, 4, 6), slow_ok) and not o.better(Measurement(p, 515, 2, 4, 6), slow_ok, 0.05)
    failed = Measurement(p, status="unstable")
    assert o.better(slow_ok, failed) and not o.better(failed, slow_ok) and not o.feasible(failed)
    with pytest.raises(UserError):
        Objective("fastest")
    with pytest.raises(UserError):
        Objective("max-throughput", budget_ms=0)


def test_space_validation_and_order():
    space = SearchSpace((1, 2), (0, 500), (4, 8))
    assert space.size == 8 and len(space.points()) == 8
    assert [p.variant for p in space.points()[:2]] == [Variant(1, 0)] * 2  # variant-major: one reload per variant
    assert space.shift(Point(Variant(1, 0), 4), "concurrency", -1) is None
    assert space.snap("delay_us", 400) == 500 and space.snap("instances", 3) in (2,)
    with pytest.raises(UserError):
        SearchSpace((1, 1), (0,), (1,))


# ---------------------------------------------------------------- configs

PY_CONFIG = """
name: "m"
backend: "python"
max_batch_size: 16
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { max_queue_delay_microseconds: 500 }
model_warmup { name: "b16" batch_size: 16 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }
"""

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


def manifest(backend: str, profile_set: ProfileSet, max_batch: int = 16):
    # build_space reads only these fields of a Manifest
    return SimpleNamespace(backend=backend, profiles=profile_set, max_batch_size=max_batch)


def test_apply_variant_clamps_to_the_plan_and_stays_valid():
    base = parse_config(PY_CONFIG)
    cfg = apply_variant(base, Variant(2, 2000), max_batch_size=8)
    assert cfg.max_batch_size == 8 and cfg.model_warmup[0].batch_size == 8
    assert cfg.instance_group[0].count == 2 and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    check_config(cfg)
    assert base.max_batch_size == 16 and base.instance_group[0].count == 1  # the base is not modified
    assert current_variant(cfg) == Variant(2, 2000)
    text = config_text(apply_variant(base, Variant(1, 0), 16), "tuned\nby a test")
    assert text.startswith("# tuned\n# by a test\n") and "max_queue_delay_microseconds: 0" in text
    assert parse_config(text) == apply_variant(base, Variant(1, 0), 16)


def test_build_space_preferred_only_for_multi_profile_plans(monkeypatch):
    opts = TuneOptions(instances=(1, 2, 4, 8), delays_us=(0, 500), concurrency=(2, 8))
    monkeypatch.setattr("aitune_triton.tune.search.usable_cores", lambda: 2)
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


def test_tune_options_validation():
    assert TuneOptions(instances=[1, 2]).instances == (1, 2)
    with pytest.raises(UserError):
        TuneOptions(objective="fastest")
    with pytest.raises(UserError, match="queue delays must be >= 0"):
        TuneOptions(delays_us=(-1,))
    with pytest.raises(UserError, match="finalists and rounds must be >= 1"):
        TuneOptions(rounds=0)
    with pytest.raises(UserError, match="max_measurements must be >= 1"):
        TuneOptions(max_measurements=0)


def test_lookahead_walks_over_a_concurrency_plateau():
    # measured shape of the CPU example: flat from 6 to 8, a step up at 12 (the batcher fills batches)
    thr = {1: 800, 2: 1200, 4: 1500, 6: 2200, 8: 2200, 12: 2750, 16: 2780, 24: 2350, 32: 2300}
    space = SearchSpace((1,), (0,), tuple(thr))

    def table(p: Point) -> Measurement:
        c = p.concurrency
        return Measurement(p, thr[c], 1000.0 * c / thr[c], 0, 2000.0 * c / thr[c])

    objective = Objective("max-throughput", budget_ms=20.0)
    start = Point(Variant(1, 0), 4)
    stuck = objective.best(hill_climb(space, table, objective, start=start, lookahead=()))
    assert stuck.point.concurrency == 6
    best = objective.best(hill_climb(space, table, objective, start=start))
    assert best.point.concurrency == 16 and best.p99_ms <= 20.0


def spread(point: Point, median: float, half: float, p99: float = 10.0) -> Measurement:
    """A measurement with a min-max spread of +-``half`` (relative) around ``median``."""
    return Measurement(point, median, p99 / 2, p99 / 1.2, p99, throughput_low=median * (1 - half),
                       throughput_high=median * (1 + half))


def test_better_needs_the_spreads_apart():
    o = Objective("max-throughput", budget_ms=20.0)
    a, b = Point(Variant(1, 0), 8), Point(Variant(2, 0), 8)
    assert not o.better(spread(a, 1200, 0.15), spread(b, 1000, 0.15))  # 1020 < 1150: overlap, noise
    assert o.better(spread(a, 1400, 0.05), spread(b, 1000, 0.15))  # 1330 > 1150
    assert not o.better(spread(a, 1400, 0.05), spread(b, 1000, 0.15, p99=25.0)) is False  # b infeasible
    assert o.best([spread(a, 1200, 0.15), spread(b, 1000, 0.01)]).point == a  # best is by median
    latency = Objective("min-latency")
    fast, slow = Measurement(a, 900, 3, 4, 5.0, p99_low=4.5, p99_high=5.5), Measurement(b, 900, 3, 4, 6.0,
                                                                                        p99_low=5.2, p99_high=6.8)
    assert not latency.better(fast, slow)  # 5.5 > 5.2: overlap
    assert latency.better(dataclasses.replace(fast, p99_high=5.1), slow)


def noisy(point: Point, seed: int, noise: float = 0.06) -> Measurement:
    """``synthetic`` with a window spread of +-``noise`` and a run-to-run wobble of the same size."""
    base = synthetic(point)
    digest = hashlib.sha256(repr((point, seed)).encode()).digest()
    median = base.throughput * (1.0 + noise * (digest[0] / 127.5 - 1.0))
    return dataclasses.replace(base, throughput=median, throughput_low=median * (1 - noise),
                               throughput_high=median * (1 + noise))


ISSUE_GRID = SearchSpace(instances=(1, 2), delays_us=(0, 500, 1000, 2000, 4000), concurrency=(1, 2, 4, 8, 16, 32))
DEFAULT_CPU_GRID = SearchSpace(instances=(1, 2), delays_us=(0, 100, 250, 500, 1000, 2000),
                               concurrency=(1, 2, 4, 8, 16, 32))


@pytest.mark.parametrize("space", [ISSUE_GRID, DEFAULT_CPU_GRID, SPACE], ids=["issue-60", "default-72", "147"])
def test_quick_search_measures_at_most_a_tenth_of_the_grid(space):
    objective = Objective("max-throughput", budget_ms=25.0)
    assert quick_budget(space.size) == space.size // 10
    brute = objective.best(brute_force(space, synthetic))
    for seed in range(4):
        table = []
        measured = hill_climb(space, lambda p: table.append(p) or noisy(p, seed), objective,
                              start=Point(Variant(1, space.delays_us[1]), space.concurrency[len(space.concurrency) // 2]),
                              max_measurements=quick_budget(space.size))
        assert len(table) == len(measured) <= space.size // 10
        best = objective.best(measured)
        assert best is not None and objective.feasible(best)
        assert best.throughput >= 0.85 * brute.throughput, (seed, best, brute)


def rounds(point: Point, values: list[float], p99: float = 10.0) -> Remeasured:
    return Remeasured(point, tuple(Measurement(point, v, p99 / 2, p99 / 1.2, p99) for v in values))


def test_finalists_are_the_top_configs_and_the_current_one():
    objective = Objective("max-throughput", budget_ms=20.0)
    current = Variant(1, 500)
    ms = [Measurement(Point(Variant(2, 0), 8), 1500, 4, 8, 12), Measurement(Point(Variant(2, 0), 16), 1800, 6, 9, 15),
          Measurement(Point(Variant(2, 1000), 16), 1700, 6, 9, 16), Measurement(Point(current, 8), 1000, 4, 8, 9),
          Measurement(Point(Variant(1, 0), 32), 2500, 9, 20, 30),  # over budget: never a finalist
          Measurement(Point(Variant(1, 2000), 16), 2600, status="unstable", throughput_low=1000,
                      throughput_high=4000)]  # unstable: never a finalist
    points = pick_finalists(ms, objective, current, 2)
    assert points == [Point(Variant(2, 0), 16), Point(Variant(2, 1000), 16), Point(current, 16)]
    assert pick_finalists(ms, objective, Variant(2, 0), 2) == points[:2]  # current config already in
    assert pick_finalists(ms[-2:], objective, current, 2) == []


def test_decide_keeps_the_current_config_within_the_spread_and_claims_only_measured_gains():
    objective = Objective("max-throughput", budget_ms=20.0)
    current, other, third = Variant(1, 500), Variant(2, 0), Variant(2, 1000)
    tie = decide([rounds(Point(other, 16), [1500, 1900, 1700]), rounds(Point(current, 16), [1400, 1800, 1600])],
                 objective, current)
    assert tie.chosen.point == Point(current, 16) and tie.kept and tie.improvement is None
    assert tie.ties == (Point(other, 16),)
    win = decide([rounds(Point(other, 16), [2500, 2700, 2600]), rounds(Point(third, 16), [2400, 2650, 2500]),
                  rounds(Point(current, 16), [1400, 1800, 1600])], objective, current)
    assert win.chosen.point == Point(other, 16) and not win.kept
    assert win.improvement == pytest.approx(2600 / 1600) and win.ties == (Point(third, 16),)
    assert (win.chosen.throughput_low, win.chosen.throughput_high) == (2500, 2700)
    # the current config stalled in the re-measurement: a choice, but no claim against it
    stalled = Remeasured(Point(current, 16), (Measurement(Point(current, 16), status="stalled"),) * 3)
    noclaim = decide([rounds(Point(other, 16), [2500, 2700, 2600]), stalled], objective, current)
    assert noclaim.chosen.point == Point(other, 16) and noclaim.improvement is None
    assert "no improvement is claimed" in noclaim.reason
    assert decide([rounds(Point(other, 16), [2500], p99=30.0)], objective, current).chosen is None


def test_placement_names_gpus_and_transport(tmp_path):
    from aitune_triton.triton.perf import PerfOptions
    from aitune_triton.tune.search import placement

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


def test_decide_never_keeps_a_current_config_outside_the_grid():
    objective = Objective("max-throughput", budget_ms=20.0)
    current, other = Variant(1, 500), Variant(1, 0)
    finalists = [rounds(Point(other, 4), [1500, 1900, 1700]), rounds(Point(current, 4), [1400, 1800, 1600])]
    assert decide(finalists, objective, current).chosen.point == Point(current, 4)  # in the grid: kept
    outside = decide(finalists, objective, current, keep_current=False)
    assert outside.chosen.point == Point(other, 4) and outside.improvement is None and not outside.kept
    assert "outside the searched grid" in outside.reason


# ---------------------------------------------------------------- GPU-aware search: instances per GPU, transports

GPU_PY_CONFIG = PY_CONFIG.replace("kind: KIND_CPU", "kind: KIND_GPU")


def test_gpu_space_searches_instances_per_gpu_and_the_client_transport(monkeypatch):
    monkeypatch.setattr("aitune_triton.tune.search.usable_cores", lambda: 2)
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


def test_quick_search_over_transports_finds_cuda_within_a_tenth_of_the_grid():
    space = SearchSpace((1, 2, 4), (0, 500, 1000, 2000), (1, 2, 4, 8, 16, 32), transports=("none", "system", "cuda"),
                        gpus=1)
    gain = {"none": 1.0, "system": 1.02, "cuda": 1.5}  # system shm alone gains nothing measurable

    def table(p: Point) -> Measurement:
        base = synthetic(dataclasses.replace(p, transport="none"))
        thr = base.throughput * gain[p.transport]
        return dataclasses.replace(base, point=p, throughput=thr, throughput_low=0.97 * thr, throughput_high=1.03 * thr)

    objective = Objective("max-throughput", budget_ms=25.0)
    brute = objective.best(brute_force(space, table))
    asked: list[Point] = []
    quick = hill_climb(space, lambda p: asked.append(p) or table(p), objective,
                       max_measurements=quick_budget(space.size))
    best = objective.best(quick)
    assert len(asked) <= space.size // 10
    assert brute.point.transport == "cuda" and best.point.transport == "cuda"
    assert best.throughput >= 0.85 * brute.throughput
    # the current config re-measured as a finalist uses the best point's transport too
    assert pick_finalists(quick, objective, Variant(4, 2000), 1)[-1].transport == "cuda"


def test_transport_and_gpu_options_parse_and_bad_values_are_one_line(tmp_path):
    from click.testing import CliRunner

    from aitune_triton.cli import main
    from aitune_triton.tune.search import parse_transports, parse_visible_gpus

    assert parse_transports("auto") is None and parse_transports("none, system") == ("none", "system")
    assert parse_visible_gpus("auto") is None and parse_visible_gpus("2") == 2
    assert TuneOptions(transports=["system"]).transports == ("system",)
    with pytest.raises(UserError, match="transports must be distinct values of none, system, cuda"):
        parse_transports("none,nvlink")
    with pytest.raises(UserError, match="transports must be distinct"):
        TuneOptions(transports=("none", "none"))
    with pytest.raises(UserError, match="needs a GPU visible"):
        TuneOptions(transports=("cuda",), visible_gpus=0)
    (tmp_path / "repo").mkdir()
    for args, message in ((["--transports", "tcp"], "transports must be distinct values of none, system, cuda"),
                          (["--visible-gpus", "two"], "--visible-gpus takes auto or a GPU count, got 'two'"),
                          (["--visible-gpus", "-1"], "--visible-gpus must be >= 0"),
                          (["--transports", "cuda", "--visible-gpus", "0"], "needs a GPU visible to the server")):
        out = CliRunner().invoke(main, ["tune", str(tmp_path / "repo"), "--model", "m"] + args)
        assert out.exit_code == 2, out.output
        assert len(out.output.strip().splitlines()) == 1 and message in out.output, out.output


def test_visible_gpus_follows_cuda_visible_devices(monkeypatch, tmp_path):
    from aitune_triton.tune.search import visible_gpus

    smi = tmp_path / "nvidia-smi"  # a stand-in that lists what `nvidia-smi -L` lists on a 4-GPU host
    smi.write_text("#!/bin/sh\nfor i in 0 1 2 3; do echo \"GPU $i: NVIDIA H200 (UUID: GPU-$i)\"; done\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path, os.environ["PATH"]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == 4
    for mask, count in (("1,3", 2), ("", 0), ("-1", 0), ("0,1,2,3,4,5", 4), ("2,-1,3", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
        assert visible_gpus() == count, mask


def test_report_says_which_transport_measured_the_chosen_point(tmp_path):
    from aitune_triton.triton.perf import PerfOptions
    from aitune_triton.tune.search import placement

    cfg = parse_config(GPU_PY_CONFIG)
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
