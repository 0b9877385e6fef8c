"""Probing tiny models: batch dependence, data-dependent output sizes, declared output dims."""
import pytest
import torch
from torch import nn

from aitune_triton.errors import UserError
from aitune_triton.probe import probe
from aitune_triton.spec import AxisKind, IOSpec, normalize_sample, record_spec
from aitune_triton.triton.mapping import MappingOptions, client_shape_notes, plan_model_config


def _probe(model, raw, **kwargs):
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outs = [model(*s.args, **s.kwargs) for s in samples]
    return probe(model, record_spec(model, samples, outs), samples, **kwargs)


def _batches(*sizes, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, width, generator=g) for b in sizes]


class SumBranch(nn.Module):
    """Batch-dependent: one branch for the whole batch, chosen by the batch's sum."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class RowWise(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.where(x.sum(-1, keepdim=True) > 0, self.lin(x), -self.lin(x))  # a branch per row


class BatchNormalised(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def _plan(spec):
    return plan_model_config(spec, None, MappingOptions("m", "python", 8))


def test_data_dependent_branch_gets_no_dynamic_batching():
    result = _probe(SumBranch(), _batches(1, 2, 4))
    assert result.spec.batching and result.spec.rows_independent is False
    assert "differs inside a batch" in result.spec.row_dependence
    assert any(n.startswith("dynamic batching is off") for n in result.notes)
    assert result.checks.to_dict()["batching"]["dynamic_batching"] is False
    plan = _plan(result.spec)
    assert plan.max_batch_size == 8 and plan.dynamic_batching is None


def test_branch_per_row_keeps_dynamic_batching():
    result = _probe(RowWise(), _batches(1, 2, 4))
    assert result.spec.rows_independent is True and result.notes == ()
    assert _plan(result.spec).dynamic_batching is not None
    assert len(result.checks.to_dict()["batching"]["probe_rows"]) == 8


def test_statistics_over_the_batch_are_batch_dependent():
    result = _probe(BatchNormalised(), _batches(2, 3))
    assert result.spec.rows_independent is False


def test_single_sample_of_batch_one_still_probed():
    # only with a declared batch axis is a single batch-1 sample batching; negated copies still flip the branch
    samples = [normalize_sample(torch.ones(1, 4), 0)]
    model = SumBranch()
    spec = record_spec(model, samples, [model(torch.ones(1, 4))], batch_axis=True)
    assert probe(model, spec, samples).spec.rows_independent is False


def test_spec_round_trip_keeps_the_verdict():
    spec = _probe(SumBranch(), _batches(1, 2)).spec
    assert IOSpec.from_dict(spec.to_dict()) == spec
    legacy = {k: v for k, v in spec.to_dict().items() if k not in ("rows_independent", "row_dependence")}
    assert IOSpec.from_dict(legacy).dynamic_batching_ok  # manifests written before probing existed


class Detector(nn.Module):
    """Per image: the scores above a threshold (how many depends on the pixels) and their count."""

    def forward(self, image):
        s = image.flatten()
        keep = s[s > 0.5]
        return {"scores": keep, "count": torch.tensor(keep.numel())}


def _images():
    out = []
    for seed in (0, 1):
        x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.4
        x.view(-1)[:10] = 0.9  # every sample happens to give exactly 10 scores
        out.append(x)
    return out


def test_output_size_that_follows_the_values_is_minus_one():
    result = _probe(Detector(), _images())
    scores = next(t for t in result.spec.outputs if t.name == "scores")
    assert scores.axes[0].kind is AxisKind.DYNAMIC and scores.triton_dims() == (-1,)
    assert result.checks.to_dict()["data_dependent_axes"] == {"scores": [0]}
    assert any("'scores': axis 0 changes size" in n for n in result.notes)


class FixedBoxes(nn.Module):
    def forward(self, image):
        return image.flatten()[:8].reshape(2, 4)


def test_declared_output_dims_apply_where_probing_cannot_tell():
    result = _probe(FixedBoxes(), _images(), output_dims={"output_0": (-1, 4)})
    assert result.spec.outputs[0].triton_dims() == (-1, 4)


@pytest.mark.parametrize("dims, match", [
    ({"boxes": (-1, 4)}, r"unknown output\(s\) \['boxes'\]"),
    ({"output_0": (-1,)}, "has 1 dims but the output has 2"),
    ({"output_0": (3, 4)}, "declares axis 0 as 3 but the model returned sizes 2..2"),
])
def test_declared_output_dims_must_fit(dims, match):
    with pytest.raises(UserError, match=match):
        _probe(FixedBoxes(), _images(), output_dims=dims)


def test_batch_only_output_note_says_what_clients_receive():
    class ArgMax(nn.Module):
        def forward(self, x):
            return x.argmax(-1)

    spec = _probe(ArgMax(), _batches(1, 3)).spec
    (note,) = client_shape_notes(spec)
    assert "'output_0'" in note and "receive shape [batch, 1] where eager PyTorch returns [batch]" in note
