"""Optimization profiles: ProfileMode.SINGLE / SAMPLES_USED / custom, validation, Polygraphy conversion."""

import pytest
import torch
from polygraphy.backend.trt import Profile
from torch import nn

from aitune_triton.errors import UserError
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.tensorrt.settings import polygraphy_profiles
from aitune_triton.profile_set import ProfileMode, ProfileSet, TensorRTProfile, profiles_from_dict
from aitune_triton.tensorrt.profiles import default_max_batch_size, derive_profiles


class Encoder(nn.Module):
    """Batch axis 0, dynamic sequence axis 1, static feature axis 2."""

    def forward(self, tokens, mask):
        return tokens * mask.unsqueeze(-1)


class Fixed(nn.Module):
    def forward(self, x):
        return x.sum(0)


def _record(model, raw):
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outs = [model(*s.args, **s.kwargs) for s in samples]
    return record_spec(model, samples, outs), samples


@pytest.fixture(scope="module")
def encoder():
    raw = [(torch.randn(b, s, 8), torch.ones(b, s)) for b, s in ((1, 4), (3, 16), (3, 16), (6, 8))]
    return _record(Encoder(), raw)


def test_single_profile_spans_the_samples(encoder):
    spec, samples = encoder
    ps = derive_profiles(spec, samples, ProfileMode.SINGLE)
    assert ps.mode == "single" and ps.max_batch_size == default_max_batch_size(spec) == 8
    (p,) = ps.profiles
    assert p.names() == ["tokens", "mask"]
    # batch 1..max (Triton may send any batch), dynamic axis min..max, opt = most common sample
    assert p.shapes("tokens") == ((1, 4, 8), (3, 16, 8), (8, 16, 8))
    assert p.shapes("mask") == ((1, 4), (3, 16), (8, 16))
    assert p.batch_range() == (1, 3, 8)


def test_samples_used_makes_one_profile_per_distinct_shape(encoder):
    spec, samples = encoder
    ps = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)
    assert ps.mode == "samples_used" and len(ps.profiles) == 3  # (3, 16) appears twice
    for p, (b, s) in zip(ps.profiles, ((1, 4), (3, 16), (6, 8)), strict=True):
        assert p.shapes("tokens") == ((1, s, 8), (b, s, 8), (8, s, 8))
    assert ps.opt_batches() == [1, 3, 6]


def test_samples_used_needs_more_than_one_sample(encoder):
    spec, samples = encoder
    with pytest.raises(UserError, match="SAMPLES_USED needs more than one sample"):
        derive_profiles(spec, samples[:1], ProfileMode.SAMPLES_USED)


def test_explicit_max_batch_size(encoder):
    spec, samples = encoder
    ps = derive_profiles(spec, samples, ProfileMode.SINGLE, max_batch_size=32)
    assert ps.max_batch_size == 32 and ps.profiles[0].shapes("tokens")[2][0] == 32
    with pytest.raises(UserError, match="max_batch_size must be >= 1 for a batching model, got 0"):
        derive_profiles(spec, samples, ProfileMode.SINGLE, max_batch_size=0)


def _custom(tokens, mask=((1, 4), (3, 16), (8, 16))):
    return TensorRTProfile().add_input_shape("tokens", *tokens).add_input_shape("mask", *mask)


def test_custom_profiles_valid(encoder):
    spec, samples = encoder
    profiles = [_custom(((1, 4, 8), (2, 8, 8), (8, 16, 8))),
                _custom(((1, 4, 8), (8, 16, 8), (8, 16, 8)))]
    ps = derive_profiles(spec, samples, profiles)
    assert ps.mode == "custom" and ps.max_batch_size == 8 and list(ps.profiles) == profiles


@pytest.mark.parametrize("tokens, mask, words", [
    (((1, 4, 8), (2, 16, 8), (8, 8, 8)), None, "need 1 <= min <= opt <= max"),          # min > max on axis 1
    (((1, 4), (2, 8), (8, 16)), None, "rank"),                                           # rank mismatch
    (((1, 4, 4), (2, 8, 8), (8, 16, 8)), None, "static"),                                # static axis changed
    (((2, 4, 8), (2, 8, 8), (8, 16, 8)), None, "batch axis covers 2..8"),                # min batch 2
    (((1, 4, 8), (2, 8, 8), (4, 16, 8)), None, "batch axis covers 1..4"),                # max batch < max_batch_size
])
def test_custom_profiles_invalid(encoder, tokens, mask, words):
    spec, samples = encoder
    profile = _custom(tokens) if mask is None else _custom(tokens, mask)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        derive_profiles(spec, samples, [profile], max_batch_size=8)


def test_custom_profile_unknown_or_missing_input(encoder):
    spec, samples = encoder
    bad = _custom(((1, 4, 8), (2, 8, 8), (8, 16, 8))).add_input_shape("nope", (1,), (1,), (1,))
    with pytest.raises(UserError, match="'nope', which the model does not have"):
        derive_profiles(spec, samples, [bad])
    only_tokens = TensorRTProfile().add_input_shape("tokens", (1, 4, 8), (2, 8, 8), (8, 16, 8))
    with pytest.raises(UserError, match="no shapes for input 'mask'"):
        derive_profiles(spec, samples, [only_tokens])
    with pytest.raises(UserError, match="empty list"):
        derive_profiles(spec, samples, [])


def test_unbatched_model_gets_static_profile():
    spec, samples = _record(Fixed(), [torch.randn(4, 3), torch.randn(4, 3)])
    assert not spec.batching
    ps = derive_profiles(spec, samples, ProfileMode.SINGLE)
    assert ps.max_batch_size == 0 and ps.profiles[0].shapes("x") == ((4, 3), (4, 3), (4, 3))


def test_polygraphy_profile_conversion(encoder):
    spec, samples = encoder
    ps = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)
    converted = polygraphy_profiles(ps)
    assert len(converted) == len(ps.profiles) and all(isinstance(p, Profile) for p in converted)
    for ours, theirs in zip(ps.profiles, converted, strict=True):
        assert list(theirs.keys()) == ours.names()
        for name in ours.names():
            shapes = theirs[name]
            assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ours.shapes(name)
    # fresh copies: editing them leaves the profile set alone
    converted[0].add("tokens", (9,), (9,), (9,))
    assert ps.profiles[0].shapes("tokens")[0] != (9,)
    with pytest.raises(UserError, match="the profile set is empty; a TensorRT plan needs at least one"):
        polygraphy_profiles(ProfileSet((), "custom", 0))


def test_tensorrt_profile_api():
    p = TensorRTProfile().add_input_shape("x", [1, 3], [2, 3], [4, 3])
    assert isinstance(p.profile, Profile) and p.profile["x"].max == (4, 3)
    assert TensorRTProfile.from_dict(p.to_dict()) == p and hash(TensorRTProfile.from_dict(p.to_dict())) == hash(p)
    assert p != TensorRTProfile().add_input_shape("x", (1, 3), (2, 3), (8, 3))
    assert "x" in repr(p)


def test_profile_set_round_trip(encoder):
    spec, samples = encoder
    ps = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)
    assert ProfileSet.from_dict(ps.to_dict()) == ps
    assert profiles_from_dict("single") is ProfileMode.SINGLE
    assert profiles_from_dict([p.to_dict() for p in ps.profiles]) == list(ps.profiles)


def test_staged_profiles_cover_the_declared_ranges_and_say_when_narrower_than_the_fallback(encoder):
    import dataclasses

    from aitune_triton.spec import AxisKind, AxisSpec
    from aitune_triton.tensorrt.profiles import narrower_than

    spec, samples = encoder
    declared = {"tokens": {1: (2, 64)}, "mask": {1: (2, 64)}}
    ps = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED, 8, declared=declared)
    for p in ps.profiles:  # each sample shape stays the opt; every profile takes the declared 2..64
        (lo, opt, hi) = p.shapes("tokens")
        assert (lo[1], hi[1]) == (2, 64) and opt[1] in (4, 8, 16)
    assert narrower_than(spec, ps) == []
    # the fallback's envelope (the spec's range) reaching beyond what the profiles take is named
    wide = dataclasses.replace(spec, inputs=tuple(
        dataclasses.replace(t, axes=(t.axes[0], AxisSpec(AxisKind.DYNAMIC, 1, 512, 16)) + t.axes[2:])
        for t in spec.inputs))
    narrow = derive_profiles(spec, samples, ProfileMode.SAMPLES_USED, 8)
    assert narrower_than(wide, narrow)[0] == "input 'tokens' axis 1: 4..4, 8..8, 16..16 of the fallback's 1..512"
    short = TensorRTProfile().add_input_shape("tokens", (1, 4, 8), (4, 16, 8), (8, 32, 8)) \
        .add_input_shape("mask", (1, 4), (4, 16), (8, 32))
    with pytest.raises(UserError, match=r"do not cover input 'tokens' axis 1 = 2\.\.64 declared in axis_ranges "
                                        r"\(size 2 is in no profile\)"):
        derive_profiles(spec, samples, [short], declared={"tokens": {1: (2, 64)}})
