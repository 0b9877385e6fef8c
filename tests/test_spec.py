import pytest
import torch
from torch import nn

from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, IOSpec, normalize_sample, record_spec


def _spec(model, raw, batch_axis=None):
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outs = [model(*s.args, **s.kwargs) for s in samples]
    return record_spec(model, samples, outs, batch_axis)


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, image):
        return self.c(image)


def test_cnn_dynamic_batch():
    spec = _spec(Conv(), [torch.randn(b, 3, 8, 8) for b in (1, 2, 2)])
    (inp,) = spec.inputs
    assert inp.name == "image" and inp.binding == "arg:0" and spec.batching
    assert [a.kind for a in inp.axes] == [AxisKind.BATCH, AxisKind.STATIC, AxisKind.STATIC, AxisKind.STATIC]
    assert inp.axes[0].min == 1 and inp.axes[0].max == 2 and inp.axes[0].common == 2
    assert inp.triton_dims() == (3, 8, 8)
    assert spec.outputs[0].name == "output_0" and spec.outputs[0].triton_dims() == (4, 6, 6)


class DictModel(nn.Module):
    def forward(self, input_ids, attention_mask):
        return {"hidden": input_ids.float().unsqueeze(-1) * 2, "mask sum": attention_mask.sum(-1)}


def test_dict_inputs_outputs_dynamic_sequence():
    raw = [{"input_ids": torch.ones(b, s, dtype=torch.int64), "attention_mask": torch.ones(b, s, dtype=torch.int64)}
           for b, s in ((1, 4), (2, 8))]
    spec = _spec(DictModel(), raw)
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    assert spec.inputs[0].binding == "kwarg:input_ids" and spec.inputs[0].dtype == "int64"
    assert spec.inputs[0].axes[1].kind is AxisKind.DYNAMIC and spec.inputs[0].triton_dims() == (-1,)
    assert [t.name for t in spec.outputs] == ["hidden", "mask_sum"]
    assert spec.outputs[0].triton_dims() == (-1, 1)
    assert IOSpec.from_dict(spec.to_dict()) == spec


class KwOnly(nn.Module):
    def forward(self, x, *, flag):
        return x * flag.to(x.dtype).unsqueeze(-1), (x.sum(-1) > 0, x.argmax(-1))


def test_keyword_only_and_nested_tuple_outputs():
    raw = [((torch.randn(b, 3),), {"flag": torch.ones(b, dtype=torch.bool)}) for b in (1, 4)]
    spec = _spec(KwOnly(), raw)
    assert [(t.name, t.binding) for t in spec.inputs] == [("x", "arg:0"), ("flag", "kwarg:flag")]
    assert [(t.name, t.dtype) for t in spec.outputs] == [("output_0", "float32"), ("output_1_0", "bool"),
                                                         ("output_1_1", "int64")]


class VarArgs(nn.Module):
    def forward(self, *xs):
        return sum(xs)


def test_varargs_names():
    spec = _spec(VarArgs(), [(torch.ones(1, 2), torch.ones(1, 2)), (torch.ones(3, 2), torch.ones(3, 2))])
    assert [t.name for t in spec.inputs] == ["args_0", "args_1"]


class Seq(nn.Module):
    def forward(self, tokens):
        return tokens.cumsum(-1)


def test_only_dynamic_axis_is_not_batch():
    spec = _spec(Seq(), [torch.ones(2, s) for s in (3, 5)])
    assert not spec.batching
    assert spec.inputs[0].triton_dims() == (2, -1)


def test_declared_batch_with_single_batch_size():
    spec = _spec(Seq(), [torch.ones(4, 3)], batch_axis=True)
    assert spec.batching and spec.inputs[0].triton_dims() == (3,)


def test_batch_declared_but_outputs_do_not_follow():
    class Reduce(nn.Module):
        def forward(self, x):
            return x.sum(0)

    with pytest.raises(UserError, match="leading size"):
        _spec(Reduce(), [torch.ones(2, 3), torch.ones(4, 3)], batch_axis=True)


@pytest.mark.parametrize("raw, match", [
    ([[1, 2]], "not a tensor"),
    ([torch.ones(2, dtype=torch.complex64)], "unsupported dtype"),
    (["text"], "sample 0 is a str"),
])
def test_bad_samples(raw, match):
    with pytest.raises(UserError, match=match):
        [normalize_sample(r, i) for i, r in enumerate(raw)]


def test_structure_mismatch():
    with pytest.raises(UserError, match="same arguments"):
        _spec(VarArgs(), [(torch.ones(1, 2),), (torch.ones(1, 2), torch.ones(1, 2))])
