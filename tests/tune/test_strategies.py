"""Stage-1 selection: the decision rules exactly (pure), then real measurements of tiny CPU
candidates whose speed differs by 2x or more, so a noisy shared box cannot flip the answer."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from aitune_triton.numerics import Tolerance
from aitune_triton.errors import ModelError, UserError
from aitune_triton.tune.candidates import (
    AccuracyReport,
    Candidate,
    OutputError,
    Timing,
    check_accuracy,
    tile_batch,
)
from aitune_triton.tune.strategies import select_candidate, select_from_measurements, warm_up

FP32 = Tolerance(1e-4, 1e-3)


def _noop(feed):
    return feed


def cand(name: str, backend: str = "aoti", precision: str = "fp32") -> Candidate:
    return Candidate(name, backend, precision, _noop)


def ok(name: str) -> AccuracyReport:
    return AccuracyReport(name, FP32, (OutputError("out", 0.0, 0.0, 0.0, True),))


def bad(name: str) -> AccuracyReport:
    return AccuracyReport(name, FP32, (OutputError("out", 0.3, 0.5, 0.9, False),))


def timings(ms_by_batch: dict[int, float]) -> tuple[Timing, ...]:
    return tuple(Timing(b, ms, ms, 10) for b, ms in ms_by_batch.items())


# ---------------------------------------------------------------- the decision (pure)


@pytest.mark.parametrize("strategy", ["min-latency", "max-throughput"])
def test_margin_rule(strategy):
    cands = [cand("eager", "eager"), cand("export", "export")]
    acc = {"eager": ok("eager"), "export": ok("export")}
    # 3 % better than eager: not enough for the default 5 % margin
    t = {"eager": timings({1: 1.0, 8: 8.0}), "export": timings({1: 1.0 / 1.03, 8: 8.0 / 1.03})}
    result = select_from_measurements(cands, acc, t, strategy)
    assert result.chosen == "eager"
    assert "below the 5% margin" in result.row("export").why_not
    assert result.row("export").speedup == pytest.approx(1.03)
    # the same measurements with a 2 % margin choose the candidate
    result = select_from_measurements(cands, acc, t, strategy, margin=0.02)
    assert result.chosen == "export" and "is 1.03x better" in result.row("eager").why_not
    # 10 % better clears the default margin
    t["export"] = timings({1: 1.0 / 1.10, 8: 8.0 / 1.10})
    assert select_from_measurements(cands, acc, t, strategy).chosen == "export"


def test_inaccurate_candidate_is_never_chosen_even_when_fastest():
    cands = [cand("eager", "eager"), cand("trt_fp16", "tensorrt", "fp16"), cand("aoti")]
    acc = {"eager": ok("eager"), "trt_fp16": bad("trt_fp16"), "aoti": ok("aoti")}
    t = {"eager": timings({1: 4.0}), "trt_fp16": timings({1: 0.1}), "aoti": timings({1: 2.0})}
    for strategy in ("min-latency", "max-throughput"):
        result = select_from_measurements(cands, acc, t, strategy)
        assert result.chosen == "aoti"
        assert result.row("trt_fp16").why_not.startswith("inaccurate")
        assert result.row("trt_fp16").score is None


def test_latency_budget_excludes_candidates_over_budget():
    cands = [cand("eager", "eager"), cand("big_batch"), cand("small_batch")]
    acc = {n: ok(n) for n in ("eager", "big_batch", "small_batch")}
    t = {"eager": timings({1: 6.0, 8: 13.0}),       # over a 3 ms budget at every batch
         "big_batch": timings({1: 4.0, 8: 4.0}),    # best throughput, but never within 3 ms
         "small_batch": timings({1: 1.0, 8: 8.0})}  # 1000/s at batch 1 within budget
    result = select_from_measurements(cands, acc, t, "latency-budget", budget_ms=3.0)
    assert result.chosen == "small_batch" and result.row("small_batch").score_batch == 1
    assert result.row("big_batch").why_not.startswith("over budget")
    assert result.row("eager").why_not.startswith("over budget")
    assert select_from_measurements(cands, acc, t, "max-throughput").chosen == "big_batch"
    with pytest.raises(UserError, match="budget_ms"):
        select_from_measurements(cands, acc, t, "latency-budget")


def test_nothing_usable_and_serialisation():
    cands = [cand("eager", "eager"), cand("aoti")]
    result = select_from_measurements(cands, {"eager": bad("eager"), "aoti": bad("aoti")},
                                      {}, "max-throughput")
    assert result.chosen is None and result.chosen_row is None
    with pytest.raises(ModelError, match="no candidate is usable"):
        result.require()
    json.dumps(result.to_dict())
    assert "inaccurate" in result.to_text()
    with pytest.raises(UserError, match="unknown tuning strategy"):
        select_from_measurements(cands, {}, {}, "fastest")


def test_a_reason_quoting_an_exception_is_printed_as_it_is():
    """A candidate's error (``expected [batch, seq]``, ``[/docs]``) was parsed as rich markup."""
    cands = [cand("eager", "eager"), cand("aoti")]
    t = {"eager": timings({1: 1.0}), "aoti": (Timing(1, 0.0, 0.0, 0, "RuntimeError: [batch, seq] see [/docs]"),)}
    result = select_from_measurements(cands, {"eager": ok("eager"), "aoti": ok("aoti")}, t, "min-latency")
    assert "failed to run: RuntimeError: [batch, seq] see [/docs]" in result.to_text(width=300)


# ---------------------------------------------------------------- real measurements


def sleeper(fixed_ms: float, per_item_ms: float):
    """A candidate whose latency is ``fixed + per_item * batch`` and whose output is exact."""
    def run(feed):
        x = feed["x"]
        time.sleep((fixed_ms + per_item_ms * x.shape[0]) / 1000.0)
        return {"y": x * 2}
    return run


def sleep_setup():
    feeds = [{"x": torch.randn(b, 4, generator=torch.Generator().manual_seed(b))} for b in (1, 8)]
    refs = [{"y": f["x"] * 2} for f in feeds]
    cands = [
        Candidate("eager", "eager", "fp32", sleeper(5.0, 1.0)),     # b1 6 ms, b8 13 ms
        Candidate("batchy", "aoti", "fp32", sleeper(4.0, 0.0)),     # b1 4 ms, b8 4 ms: 2000/s
        Candidate("snappy", "export", "fp32", sleeper(0.0, 1.0)),   # b1 1 ms, b8 8 ms: 1000/s
    ]
    return cands, feeds, refs


@pytest.mark.parametrize("strategy,budget,winner", [
    ("min-latency", None, "snappy"),
    ("max-throughput", None, "batchy"),
    ("latency-budget", 3.0, "snappy"),
])
def test_measured_strategies_pick_the_fast_candidate(strategy, budget, winner):
    cands, feeds, refs = sleep_setup()
    result = select_candidate(cands, feeds, refs, strategy, budget_ms=budget, batch_sizes=(1, 8),
                              warmup=1, rounds=3, per_round=2, warmup_s=0.0)
    assert result.chosen == winner, result.to_text()
    assert result.row("eager").why_not
    assert all(r.accuracy.ok for r in result.rows)
    assert {t.batch for t in result.row(winner).timings} == {1, 8}
    json.dumps(result.to_dict())


class ColdStart:
    """Slow (3 ms a call) until ``cold_s`` after its first call, then instant: a process still
    busy after loading (compile workers, thread pools) made batch 1, timed first, look ~30x slow."""

    def __init__(self, cold_s: float):
        self.cold_s, self.first = cold_s, None

    def __call__(self, feed):
        now = time.monotonic()
        self.first = self.first if self.first is not None else now
        if now - self.first < self.cold_s:
            time.sleep(0.003)
        return {"y": feed["x"] * 2}


def test_every_format_and_batch_is_warmed_up_before_the_first_timing():
    feeds = [{"x": torch.ones(b, 4)} for b in (1, 8)]
    refs = [{"y": f["x"] * 2} for f in feeds]
    runs = {"export": ColdStart(0.15), "eager": ColdStart(0.15)}
    made = warm_up(runs, lambda b: tile_batch(feeds[0], b), (8, 1), calls=2, min_seconds=0.1)
    assert set(made["export"]) == {1, 8} and all(n >= 2 for n in made["eager"].values())
    cands = [Candidate(name, name, "fp32", ColdStart(0.15)) for name in ("export", "eager")]
    result = select_candidate(cands, feeds, refs, "min-latency", batch_sizes=(1, 8), rounds=3, per_round=2,
                              warmup_s=0.1)
    for row in result.rows:  # batch 1 is timed warm: not the 3 ms of the cold start
        assert row.timing(1).median_ms < 1.0, result.to_text()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, x):
        return self.net(x)


def test_real_models_accuracy_gate_and_slow_eager():
    torch.manual_seed(0)
    model = MLP().eval()
    waste = torch.randn(384, 384)

    def slow_eager(feed):
        # the reference path doing needless work (think: an unfused eager graph)
        acc = waste
        for _ in range(12):
            acc = acc @ waste * 1e-3
        return model(feed["x"]) + 0 * acc[0, 0]

    bf16 = MLP().eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    feeds = [{"x": torch.randn(b, 16, generator=torch.Generator().manual_seed(b))} for b in (1, 4)]
    with torch.inference_mode():
        refs = [{"out": model(f["x"])} for f in feeds]
    cands = [
        Candidate("eager", "eager", "fp32", slow_eager),
        Candidate("export", "export", "fp32", lambda f: model(f["x"])),
        # fast but bf16 while claiming fp32: must fail the fp32 tolerance
        Candidate("bf16_as_fp32", "aoti", "fp32", lambda f: bf16(f["x"].bfloat16()).float()),
        Candidate("broken", "aoti", "fp32", lambda f: 1 / 0),
    ]
    result = select_candidate(cands, feeds, refs, "min-latency", batch_sizes=(1, 4), warmup=1, rounds=3, per_round=2,
                              warmup_s=0.0)
    assert result.chosen == "export", result.to_text()
    assert result.row("export").speedup > 1.05
    assert not result.row("bf16_as_fp32").accuracy.ok
    assert result.row("bf16_as_fp32").accuracy.outputs[0].max_abs > 1e-4
    assert result.row("bf16_as_fp32").timings == ()  # inaccurate candidates are never timed
    assert "ZeroDivisionError" in result.row("broken").why_not
    # the same bf16 run declared as bf16 passes the bf16 tolerance
    declared = Candidate("bf16", "aoti", "bf16", lambda f: bf16(f["x"].bfloat16()).float())
    assert check_accuracy(declared, feeds, refs).ok


def test_check_accuracy_shapes_and_positional_outputs():
    feeds = [{"x": torch.ones(2, 3)}]
    refs = [{"a": torch.ones(2, 3), "b": torch.zeros(2)}]
    good = Candidate("pos", "export", "fp32", lambda f: (f["x"], torch.zeros(2)))
    assert check_accuracy(good, feeds, refs).ok
    wrong_shape = Candidate("shape", "export", "fp32", lambda f: (f["x"], torch.zeros(3)))
    report = check_accuracy(wrong_shape, feeds, refs)
    assert not report.ok and "shape" in report.summary()
    too_few = check_accuracy(Candidate("few", "export", "fp32", lambda f: f["x"]), feeds, refs)
    assert not too_few.ok and "2 expected" in too_few.error


def test_tile_batch_cycles_items():
    x = torch.arange(3).reshape(3, 1)
    assert tile_batch({"x": x, "s": torch.tensor(5)}, 5)["x"].flatten().tolist() == [0, 1, 2, 0, 1]
