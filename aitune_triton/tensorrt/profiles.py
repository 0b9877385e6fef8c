"""TensorRT optimization profiles (AITune's ``TensorRTProfile`` / ``ProfileMode``) and
their derivation from the recorded samples.

Triton's dynamic batcher can send any batch from 1 to ``max_batch_size`` to any instance, so
derived profiles start at batch 1 and the profiles together cover 1..max_batch_size. User
profiles that leave a gap are rejected with the input and axis named (not silently widened):
a plan that cannot serve a batch the batcher forms fails at request time, far from the cause.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, IOSpec, Sample, sample_feed
from aitune_triton.profile_set import (
    ProfileMode,
    ProfileSet,
    TensorRTProfile,
)

log = logging.getLogger(__name__)


Declared = Mapping[str, Mapping[int, tuple[int, int]]]


def default_max_batch_size(spec: IOSpec) -> int:
    """The largest sample batch rounded up to a power of two (samples rarely hit the real max)."""
    if not spec.batching:
        return 0
    largest = spec.max_sample_batch
    power = 1
    while power < largest:
        power *= 2
    return power


def _single(spec: IOSpec, max_batch: int) -> TensorRTProfile:
    profile = TensorRTProfile()
    for t in spec.inputs:
        lo, opt, hi = list(t.shape("min")), list(t.shape("common")), list(t.shape("max"))
        if t.has_batch:
            lo[0], hi[0] = 1, max_batch
            opt[0] = min(max(opt[0], 1), max_batch)
        profile.add_input_shape(t.name, lo, opt, hi)
    return profile


def _from_samples(spec: IOSpec, samples: Sequence[Sample], max_batch: int,
                  declared: Declared | None = None) -> list[TensorRTProfile]:
    """One profile per distinct sample shape; each profile's batch axis spans 1..max so any
    instance can take any batch the batcher forms, and each declared axis range (``axis_ranges``)
    is covered by every profile (optimised at the sample's own size)."""
    seen: dict[tuple, TensorRTProfile] = {}
    for sample in samples:
        feed = sample_feed(spec, sample)
        profile = TensorRTProfile()
        for t in spec.inputs:
            shape = list(feed[t.name].shape)
            lo, hi = list(shape), list(shape)
            for axis, (a, b) in (declared or {}).get(t.name, {}).items():
                lo[axis], hi[axis] = min(a, shape[axis]), max(b, shape[axis])
            if t.has_batch:
                lo[0], hi[0] = 1, max_batch
                shape[0] = min(shape[0], max_batch)
            profile.add_input_shape(t.name, lo, shape, hi)
        seen.setdefault(profile._key(), profile)
    return list(seen.values())


def validate_profile(spec: IOSpec, profile: TensorRTProfile, index: int, max_batch: int) -> None:
    """User profiles: names exist, ranks match, min <= opt <= max, static axes fixed, batch covers 1..max."""
    known = {t.name for t in spec.inputs}
    for name in profile.names():
        if name not in known:
            raise UserError("profile %d names input %r, which the model does not have (inputs: %s)"
                            % (index, name, ", ".join(sorted(known))))
    for t in spec.inputs:
        if t.name not in profile.names():
            raise UserError("profile %d has no shapes for input %r; give min/opt/max for every input" % (index, t.name))
        lo, opt, hi = profile.shapes(t.name)
        if not (len(lo) == len(opt) == len(hi) == t.rank):
            raise UserError("profile %d, input %r: shapes have rank %d/%d/%d but the input has rank %d"
                            % (index, t.name, len(lo), len(opt), len(hi), t.rank))
        for axis, (a, o, b, spec_axis) in enumerate(zip(lo, opt, hi, t.axes, strict=True)):
            if not (1 <= a <= o <= b):
                raise UserError("profile %d, input %r, axis %d: need 1 <= min <= opt <= max, got %d/%d/%d"
                                % (index, t.name, axis, a, o, b))
            if spec_axis.kind is AxisKind.STATIC and not (a == o == b == spec_axis.max):
                raise UserError("profile %d, input %r, axis %d is static (%d) in the samples but the profile gives "
                                "%d/%d/%d" % (index, t.name, axis, spec_axis.max, a, o, b))
        if t.has_batch and max_batch and (lo[0] != 1 or hi[0] < max_batch):
            raise UserError("profile %d, input %r: batch axis covers %d..%d but Triton may send any batch 1..%d; "
                            "set min batch 1 and max batch >= max_batch_size (or lower max_batch_size)"
                            % (index, t.name, lo[0], hi[0], max_batch))


def check_covers(spec: IOSpec, profiles: Sequence[TensorRTProfile], declared: Declared) -> None:
    """User profiles must take every size of a declared axis range (some profile each size)."""
    for name, axes in declared.items():
        for axis, (lo, hi) in axes.items():
            spans = sorted((p.shapes(name)[0][axis], p.shapes(name)[2][axis]) for p in profiles if name in p.names())
            reach = lo
            for a, b in spans:
                if a <= reach:
                    reach = max(reach, b + 1)
            if reach <= hi:
                raise UserError("the TensorRT profiles do not cover input %r axis %d = %d..%d declared in axis_ranges "
                                "(size %d is in no profile); widen the profiles or the declared range"
                                % (name, axis, lo, hi, reach))


def narrower_than(spec: IOSpec, profile_set: ProfileSet) -> list[str]:
    """Enveloped axes the profiles cover only in part: ``input 'x' axis 1: 16..32 of the fallback's 1..512``."""
    out = []
    for t in spec.inputs:
        for axis, a in enumerate(t.axes):
            if a.kind is not AxisKind.DYNAMIC or (axis == 0 and t.has_batch):
                continue
            spans = [(p.shapes(t.name)[0][axis], p.shapes(t.name)[2][axis]) for p in profile_set.profiles
                     if t.name in p.names()]
            if spans and (min(s[0] for s in spans) > a.min or max(s[1] for s in spans) < a.max):
                out.append("input %r axis %d: %s of the fallback's %d..%d"
                           % (t.name, axis, ", ".join("%d..%d" % s for s in sorted(set(spans))), a.min, a.max))
    return out


def derive_profiles(spec: IOSpec, samples: Sequence[Sample], profiles: "ProfileMode | Sequence[TensorRTProfile]",
                    max_batch_size: int | None = None, declared: Declared | None = None) -> ProfileSet:
    """Profiles for the plan from the mode (or the user's list), and the served max batch.
    ``declared`` (``GenerateConfig.axis_ranges``): every profile set covers those ranges."""
    if max_batch_size is not None and spec.batching and max_batch_size < 1:
        raise UserError("max_batch_size must be >= 1 for a batching model, got %d" % max_batch_size)
    if max_batch_size is not None and max_batch_size < 0:
        raise UserError("max_batch_size must be >= 0, got %d" % max_batch_size)
    if not spec.batching:
        max_batch = 0
    elif max_batch_size is not None:
        max_batch = max_batch_size
    elif not isinstance(profiles, ProfileMode):
        max_batch = min(p.batch_range()[2] for p in profiles) if profiles else default_max_batch_size(spec)
    else:
        max_batch = default_max_batch_size(spec)
    if isinstance(profiles, ProfileMode):
        if profiles is ProfileMode.SINGLE:
            return ProfileSet((_single(spec, max(max_batch, 1)),), profiles.value, max_batch)
        if len(samples) <= 1:
            raise UserError("ProfileMode.SAMPLES_USED needs more than one sample (it makes one profile per distinct "
                            "sample shape); return more samples from get_samples() or use ProfileMode.SINGLE")
        return ProfileSet(tuple(_from_samples(spec, samples, max(max_batch, 1), declared)), profiles.value,
                          max_batch)
    user = list(profiles)
    if not user:
        raise UserError("profiles is an empty list; give at least one TensorRTProfile or use ProfileMode.SINGLE")
    for i, p in enumerate(user):
        validate_profile(spec, p, i, max_batch)
    check_covers(spec, user, declared or {})
    return ProfileSet(tuple(user), "custom", max_batch)
