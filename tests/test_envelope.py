"""The serving envelope: ranges declared, taken from the model's config, probed beyond the samples,
and max_batch_size measured; the spec, the console lines and the manifest section built from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from aitune_triton.envelope import (AxisRange, BatchPoint, Envelope, Source, apply_envelope, choose_envelope,
                                    parse_axis_option, parse_axis_options)
from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, Sample, record_spec


class Tokens(nn.Module):
    """Embeds token ids with a position table of ``positions`` rows: longer sequences raise."""

    def __init__(self, positions: int = 40, with_config: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.pos = nn.Embedding(positions, 4)
        if with_config:
            self.config = SimpleNamespace(max_position_embeddings=positions)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = torch.arange(input_ids.shape[1])
        return (self.embed(input_ids) + self.pos(seq)) * attention_mask.unsqueeze(-1)


def _spec(model: nn.Module, shapes=((1, 8), (2, 16))):
    samples = [Sample((torch.randint(0, 50, s), torch.ones(s, dtype=torch.int64)), {}) for s in shapes]
    outputs = [model(*s.args) for s in samples]
    return record_spec(model, samples, outputs), samples


def test_probe_grows_an_axis_until_eager_fails_and_keeps_ids_and_mask_together():
    model = Tokens(positions=40).eval()
    spec, samples = _spec(model)
    env = choose_envelope(model, spec, samples, max_batch_size=4)
    ranges = {(r.input, r.axis): r for r in env.axes}
    assert set(ranges) == {("input_ids", 1), ("attention_mask", 1)}
    ids = ranges["input_ids", 1]
    assert (ids.lo, ids.hi, ids.source) == (1, 32, Source.PROBE)  # 16 -> 32 runs, 64 has no position row
    assert "64 fails: IndexError" in ids.detail
    assert (env.max_batch_size, env.batch_source) == (4, Source.DECLARED)
    served = apply_envelope(spec, env)
    axis = served.input("input_ids").axes[1]
    assert (axis.kind, axis.min, axis.max) == (AxisKind.DYNAMIC, 1, 32)


def test_the_model_configs_limit_is_used_where_it_states_one():
    model = Tokens(positions=100, with_config=True).eval()
    spec, samples = _spec(model)
    env = choose_envelope(model, spec, samples, max_batch_size=2)
    assert {(r.input, r.lo, r.hi, r.source, r.detail) for r in env.axes} == {
        ("input_ids", 1, 100, Source.MODEL_CONFIG, "max_position_embeddings=100"),
        ("attention_mask", 1, 100, Source.MODEL_CONFIG, "max_position_embeddings=100")}
    assert env.lines(spec) == ("input_ids: batch 1..2, axis 1: 1..100 (batch: declared; axis 1: model config)",
                               "attention_mask: batch 1..2, axis 1: 1..100 (batch: declared; axis 1: model config)")


def test_declared_ranges_win_and_a_range_eager_cannot_take_is_refused_in_one_line():
    model = Tokens(positions=40).eval()
    spec, samples = _spec(model)
    declared = {"input_ids": {1: (4, 24)}, "attention_mask": {1: (4, 24)}}
    env = choose_envelope(model, spec, samples, declared=declared, max_batch_size=2)
    assert {(r.input, r.lo, r.hi, r.source) for r in env.axes} == {("input_ids", 4, 24, Source.DECLARED),
                                                                   ("attention_mask", 4, 24, Source.DECLARED)}
    with pytest.raises(UserError, match=r"axis_ranges input_ids axis 1 = 1\.\.64: eager PyTorch fails at size 64 "
                                        r"\(IndexError"):
        choose_envelope(model, spec, samples, declared={"input_ids": {1: (1, 64)}, "attention_mask": {1: (1, 64)}},
                        max_batch_size=2)
    with pytest.raises(UserError, match=r"axis_ranges\['input_ids'\]\[1\] = 10\.\.12 leaves out sizes the samples "
                                        r"have \(8\.\.16\)"):
        choose_envelope(model, spec, samples, declared={"input_ids": {1: (10, 12)}})
    with pytest.raises(UserError, match=r"names axis 0, the batch axis: set max_batch_size"):
        choose_envelope(model, spec, samples, declared={"input_ids": {0: (1, 8)}})
    with pytest.raises(UserError, match=r"unknown input 'ids'"):
        choose_envelope(model, spec, samples, declared={"ids": {1: (1, 8)}})


def test_axes_whose_sizes_agree_claim_only_the_common_declared_range_that_was_run():
    model = Tokens(positions=40).eval()
    spec, samples = _spec(model)
    ran: list[int] = []
    forward = model.forward
    model.forward = lambda ids, mask: (ran.append(ids.shape[1]), forward(ids, mask))[1]
    env = choose_envelope(model, spec, samples, declared={"input_ids": {1: (1, 32)}, "attention_mask": {1: (4, 24)}},
                          max_batch_size=2)
    ranges = {r.input: r for r in env.axes}
    assert {(n, r.lo, r.hi) for n, r in ranges.items()} == {("input_ids", 4, 24), ("attention_mask", 4, 24)}
    assert max(ran) == 24 and min(ran) == 4  # nothing claimed that eager did not take
    assert ranges["input_ids"].detail == "declared 1..32, narrowed to 4..24 shared with attention_mask axis 1"
    assert ranges["attention_mask"].detail == ""


def test_a_declared_range_makes_a_static_axis_dynamic():
    model = Tokens(positions=40).eval()
    spec, samples = _spec(model, ((1, 8), (2, 8)))
    assert spec.input("input_ids").axes[1].kind is AxisKind.STATIC
    env = choose_envelope(model, spec, samples, declared={"input_ids": {1: (2, 30)}, "attention_mask": {1: (2, 30)}},
                          max_batch_size=2)
    axis = apply_envelope(spec, env).input("input_ids").axes[1]
    assert (axis.kind, axis.min, axis.max) == (AxisKind.DYNAMIC, 2, 30)


def test_max_batch_size_is_measured_and_the_curve_recorded():
    model = nn.Linear(8, 4).eval()
    samples = [Sample((torch.randn(b, 8),), {}) for b in (1, 2)]
    spec = record_spec(model, samples, [model(*s.args) for s in samples])
    env = choose_envelope(model, spec, samples)
    assert env.batch_source is Source.MEASUREMENT and env.axes == ()
    assert 2 <= env.max_batch_size <= 64  # never below the samples' batches, never above the CPU cap
    batches = [p.batch for p in env.curve]
    assert batches[:2] == [1, 2] and all(b == 2 * a for a, b in zip(batches, batches[1:], strict=False))
    assert all(p.latency_ms > 0 and p.rows_per_s > 0 for p in env.curve)
    assert env.lines(spec) == ("input: batch 1..%d, axis 1: 8 (batch: measurement)" % env.max_batch_size,)
    assert Envelope.from_dict(env.to_dict()).to_dict() == env.to_dict()


def test_rows_not_independent_keep_the_samples_batch():
    import dataclasses

    model = nn.Linear(8, 4).eval()
    samples = [Sample((torch.randn(b, 8),), {}) for b in (1, 3)]
    spec = dataclasses.replace(record_spec(model, samples, [model(*s.args) for s in samples]), rows_independent=False)
    env = choose_envelope(model, spec, samples)
    assert (env.max_batch_size, env.batch_source, env.curve) == (4, Source.SAMPLES, ())


def test_axis_option_parsing():
    assert parse_axis_option("input_ids:1=1..512") == ("input_ids", 1, (1, 512))
    assert parse_axis_option("x:2=7") == ("x", 2, (7, 7))
    assert parse_axis_options(["a:1=1..4", "a:2=2..3", "b:1=1..9"]) == {"a": {1: (1, 4), 2: (2, 3)}, "b": {1: (1, 9)}}
    for bad in ("input_ids=1..4", "input_ids:x=1..4", "input_ids:1=1..", "input_ids:1"):
        with pytest.raises(UserError, match=r"write INPUT:AXIS=LO\.\.HI, e\.g\. input_ids:1=1\.\.512"):
            parse_axis_option(bad)


def test_envelope_round_trips_and_judges_the_joint_corner():
    env = Envelope(64, Source.MEASUREMENT, "stopped at the cap 64", (AxisRange("x", 1, 1, 512, Source.PROBE, "why"),),
                   (BatchPoint(1, 1.0, 1000.0), BatchPoint(2, 1.5, 1333.3)), 1.2, corner_ms=9000.0)
    assert Envelope.from_dict(env.to_dict()) == dataclasses_replace_seconds(env)  # seconds are not written
    assert not env.joint_corner_ok() and Envelope(4, corner_ms=10.0).joint_corner_ok()
    with pytest.raises(UserError, match=r"need 1 <= lo <= hi, got 0\.\.4"):
        AxisRange("x", 1, 0, 4, Source.PROBE)


def dataclasses_replace_seconds(env: Envelope) -> Envelope:
    import dataclasses

    curve = tuple(BatchPoint(p.batch, round(p.latency_ms, 3), round(p.rows_per_s, 1)) for p in env.curve)
    return dataclasses.replace(env, seconds=0.0, curve=curve)
