"""The profile types of the TensorRT backend API: ``ProfileMode``, ``TensorRTProfile``, ``ProfileSet``.

A module with no heavy imports (Polygraphy is imported only when a ``TensorRTProfile`` is
created). They sit at the package's top level, beside ``spec.py``, because two steps use them:
the ONNX export (dynamic axes) and the TensorRT build; deriving profiles from samples is
``tensorrt/profiles.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from polygraphy.backend.trt import Profile

log = logging.getLogger(__name__)


class ProfileMode(str, Enum):
    """How profiles are generated: SINGLE (min/opt/max over samples) or one per sample shape."""

    SINGLE = "single"
    SAMPLES_USED = "samples_used"


class TensorRTProfile:
    """One optimization profile: per input, min/opt/max shapes. Backed by Polygraphy's ``Profile``."""

    def __init__(self) -> None:
        from polygraphy.backend.trt import Profile  # here, not at import: naming the type stays cheap

        self._profile = Profile()

    @property
    def profile(self) -> Profile:
        return self._profile

    def add_input_shape(self, name: str, min_shape: Sequence[int], opt_shape: Sequence[int],
                        max_shape: Sequence[int]) -> "TensorRTProfile":
        self._profile.add(name=name, min=tuple(int(d) for d in min_shape), opt=tuple(int(d) for d in opt_shape),
                          max=tuple(int(d) for d in max_shape))
        log.debug("profile input %s: min=%s opt=%s max=%s", name, min_shape, opt_shape, max_shape)
        return self

    def items(self) -> Any:
        return self._profile.items()

    def names(self) -> list[str]:
        return list(self._profile.keys())

    def shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        b = self._profile[name]
        return tuple(b.min), tuple(b.opt), tuple(b.max)

    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) of axis 0 across inputs: the batches every input can take."""
        mins, opts, maxs = zip(*[(s[0][0], s[1][0], s[2][0]) for s in (self.shapes(n) for n in self.names())],
                               strict=True)
        return max(mins), max(opts), min(maxs)

    @classmethod
    def profile_to_dict(cls, profile: Profile) -> dict:
        return {name: [list(b.min), list(b.opt), list(b.max)] for name, b in profile.items()}

    def to_dict(self) -> dict:
        return self.profile_to_dict(self._profile)

    @classmethod
    def from_dict(cls, data: dict) -> "TensorRTProfile":
        profile = cls()
        for name, (min_, opt_, max_) in data.items():
            profile.add_input_shape(name, tuple(min_), tuple(opt_), tuple(max_))
        return profile

    def _key(self) -> tuple:
        return tuple(sorted((n, tuple(b.min), tuple(b.opt), tuple(b.max)) for n, b in self._profile.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorRTProfile) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "TensorRTProfile(%s)" % self.to_dict()


@dataclass(frozen=True)
class ProfileSet:
    """The profiles a plan is built with and the largest batch Triton may send to them."""

    profiles: tuple[TensorRTProfile, ...]
    mode: str
    max_batch_size: int

    def opt_batches(self) -> list[int]:
        return sorted({p.batch_range()[1] for p in self.profiles})

    def to_dict(self) -> dict:
        return {"mode": self.mode, "max_batch_size": self.max_batch_size,
                "profiles": [p.to_dict() for p in self.profiles]}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileSet":
        return cls(tuple(TensorRTProfile.from_dict(p) for p in d["profiles"]), d["mode"], int(d["max_batch_size"]))


def profiles_from_dict(data: "str | list[dict]") -> "ProfileMode | list[TensorRTProfile]":
    if isinstance(data, list):
        return [TensorRTProfile.from_dict(p) for p in data]
    return ProfileMode(data)
