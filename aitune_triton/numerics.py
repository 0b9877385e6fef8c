"""Comparing outputs with tolerances: the one place that decides whether two tensors "match".

Export checks (eager vs ONNX Runtime / AOTInductor), candidate selection in ``tune`` and the
live checks in ``validate`` all compare an output against a reference; they all call
:func:`compare`, which returns one :class:`Comparison`. The rule is element-wise
``|actual - expected| <= atol + rtol * |expected|`` in float64, NaN equal to NaN, and exact
equality for integer and bool outputs.

float16 and bfloat16 outputs have a second way to pass: rounding error grows with a network's
depth, so a healthy ResNet-50 in float16 misses any per-element bound that would still mean
something on a shallow model (max |err| 0.06 on logits of magnitude ~10). Their tolerance carries
``rel_l2``: the output also passes when its relative L2 error ``||actual - expected|| / ||expected||``
is at most that. Healthy half-precision networks stay near 1e-3; a wrong export (a sign flip, a
row of another sample, a wrong weight) is 0.1 to 2. float32 keeps the per-element rule alone, and
so does any tolerance built without ``rel_l2`` (the quantization checks scale their own atol).

numpy only at import time: torch tensors are accepted (duck-typed through ``detach``) without
importing torch here, so ``export/``, ``triton/`` and ``validate/`` can share this module cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from aitune_triton import defaults


@dataclass(frozen=True)
class Tolerance:
    """Per element ``|actual - expected| <= atol + rtol * |expected|``; with ``rel_l2``, an output
    that misses that still passes when its relative L2 error is at most ``rel_l2``."""

    atol: float
    rtol: float
    rel_l2: float | None = None

    def to_dict(self) -> dict:
        d = {"atol": self.atol, "rtol": self.rtol}
        if self.rel_l2 is not None:
            d["rel_l2"] = self.rel_l2
        return d


@dataclass(frozen=True)
class ToleranceOverride:
    """The user's tolerance for float outputs (``--atol``/``--rtol``/``--rel-l2``). A field left
    None is not a value: :func:`tolerance_for` fills it from the output dtype's own default, so
    ``--atol 0.05`` alone loosens atol without dragging a float16 output's rtol down to float32's."""

    atol: float | None = None
    rtol: float | None = None
    rel_l2: float | None = None

    def describe(self) -> str:
        """``atol=0.05, rtol per dtype, rel_l2 per dtype``: the override in a rule's description."""
        return ", ".join("%s per dtype" % k if v is None else "%s=%g" % (k, v)
                         for k, v in (("atol", self.atol), ("rtol", self.rtol), ("rel_l2", self.rel_l2)))


# Per dtype: float16/bfloat16 carry ~3 significant digits; fp32 paths (ORT, AOTI) reorder sums.
DEFAULT_TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-3),
    "float16": Tolerance(1e-2, 1e-2, defaults.REL_L2_FLOAT16),
    "bfloat16": Tolerance(5e-2, 5e-2, defaults.REL_L2_BFLOAT16),
}
EXACT = Tolerance(0.0, 0.0)

# What loosens a failed check, for the messages that report one.
LOOSEN_HINT = ("if the difference is expected at this precision, loosen the check with generate --atol/--rtol "
               "(per element) or --rel-l2 (relative L2 error), or GenerateConfig(atol=, rtol=, rel_l2=)")


def tolerance_for(dtype: str, override: ToleranceOverride | Tolerance | None = None) -> Tolerance:
    """The tolerance for an output of ``dtype``. ``override`` applies to float outputs only; each of
    its fields left None keeps the dtype's own (so a partial override never tightens half precision:
    ``rtol`` alone keeps float16's atol and relative L2 rule). A full ``Tolerance`` overrides all of
    atol/rtol, and its ``rel_l2`` of None keeps the dtype's too."""
    base = DEFAULT_TOLERANCES.get(dtype, EXACT)
    if override is None or dtype not in DEFAULT_TOLERANCES:
        return base
    return Tolerance(base.atol if override.atol is None else override.atol,
                     base.rtol if override.rtol is None else override.rtol,
                     base.rel_l2 if override.rel_l2 is None else override.rel_l2)


def loosest_float(dtypes: Iterable[str]) -> str:
    """The float dtype among ``dtypes`` whose default tolerance is loosest ("float32" when none is
    float16/bfloat16): the precision a computation on a model with these outputs carries, for
    values derived from them in another dtype (a post-processing hook's float64 score of a float16
    model still holds float16's rounding)."""
    return max((d for d in dtypes if d in DEFAULT_TOLERANCES), default="float32",
               key=lambda d: (DEFAULT_TOLERANCES[d].atol, DEFAULT_TOLERANCES[d].rtol))


def to_numpy(value: Any) -> np.ndarray:
    """A contiguous numpy copy of a tensor or array, in the tensor's own shape (a scalar stays 0-d:
    ``np.ascontiguousarray`` would make it ``(1,)``). numpy has no bfloat16: it becomes float32
    (exact); the spec keeps the real dtype."""
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.contiguous().numpy().copy(order="C")
    return np.asarray(value)


@dataclass(frozen=True)
class Comparison:
    """How ``actual`` compares with ``expected``: the worst errors and, when it fails, why."""

    ok: bool
    max_abs: float
    max_rel: float
    bad: int  # elements outside atol/rtol (an output may pass on its relative L2 error all the same)
    total: int
    tolerance: Tolerance
    reason: str | None = None  # None when ok: one line naming the first shape/dtype/value difference
    rel_l2: float = 0.0  # ||actual - expected|| / ||expected|| (float outputs; inf for a NaN mismatch)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0


def compare(actual: Any, expected: Any, tol: Tolerance, *, strict_dtype: bool = False,
            reshape_same_size: bool = False) -> Comparison:
    """Compare element-wise in float64. A shape difference fails outright (``reshape_same_size``
    first lets ``[batch, 1]`` meet ``[batch]``, as Triton returns reshaped tensors); with
    ``strict_dtype`` a dtype difference fails too. ``max_rel`` is relative to ``|expected|``
    floored at ``atol`` (1 for exact dtypes), so zeros do not blow it up. A float output outside
    ``atol``/``rtol`` still passes when ``tol.rel_l2`` is set and its relative L2 error is within it."""
    a, e = to_numpy(actual), to_numpy(expected)
    if reshape_same_size and a.size == e.size and a.shape != e.shape:
        e = e.reshape(a.shape)
    if a.shape != e.shape:
        return Comparison(False, float("inf"), float("inf"), max(a.size, e.size, 1), max(a.size, e.size, 1), tol,
                          "shape %s, expected %s" % (list(a.shape), list(e.shape)))
    if strict_dtype and a.dtype != e.dtype:
        return Comparison(False, float("inf"), float("inf"), a.size, a.size, tol,
                          "dtype %s, expected %s" % (a.dtype, e.dtype))
    if a.size == 0:
        return Comparison(True, 0.0, 0.0, 0, 0, tol)
    floating = a.dtype.kind in "fc" or e.dtype.kind in "fc"
    a64, e64 = a.astype(np.float64).reshape(-1), e.astype(np.float64).reshape(-1)  # 1-d: a 0-d result is no array
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        diff[(a64 == e64) | (np.isnan(a64) & np.isnan(e64))] = 0.0
        diff[np.isnan(a64) != np.isnan(e64)] = np.inf
        if floating:
            bad = ~(diff <= tol.atol + tol.rtol * np.abs(np.nan_to_num(e64)))
        else:
            bad = a.reshape(-1) != e.reshape(-1)
        rel = diff / np.maximum(np.abs(np.nan_to_num(e64)), tol.atol or 1.0)
        rel_l2 = relative_l2(diff, e64) if floating else 0.0
    n_bad = int(bad.sum())
    max_abs, max_rel = float(diff.max()), float(rel.max())
    if not n_bad:
        return Comparison(True, max_abs, max_rel, 0, a.size, tol, rel_l2=rel_l2)
    if floating and tol.rel_l2 is not None and rel_l2 <= tol.rel_l2:
        return Comparison(True, max_abs, max_rel, n_bad, a.size, tol, rel_l2=rel_l2)
    idx = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), a.shape)  # () for a scalar
    where = list(int(i) for i in idx)
    if floating:
        reason = ("%d/%d elements outside atol=%g rtol=%g, max |diff| %.3g at %s (got %r, expected %r)"
                  % (n_bad, a.size, tol.atol, tol.rtol, float(np.max(np.where(bad, diff, 0.0))), where,
                     a[idx].item(), e[idx].item()))
        if tol.rel_l2 is not None:
            reason = "relative L2 error %.3g > %g and %s" % (rel_l2, tol.rel_l2, reason)
    else:
        reason = ("%d/%d values differ (exact dtype %s), first at %s (got %r, expected %r)"
                  % (n_bad, a.size, a.dtype, where, a[idx].item(), e[idx].item()))
    return Comparison(False, max_abs, max_rel, n_bad, a.size, tol, reason, rel_l2 if floating else 0.0)


def relative_l2(diff: np.ndarray, expected: np.ndarray) -> float:
    """``||diff|| / ||expected||`` in float64: 0 when both are zero, inf when only ``diff`` is not
    (or holds an inf, a NaN mismatch); norms are scaled by the largest value so float16's range
    never overflows the sum of squares."""
    d = np.abs(diff).ravel()
    if not d.size or not np.any(d):
        return 0.0
    if not np.all(np.isfinite(d)):
        return float("inf")
    e = np.abs(np.nan_to_num(expected, posinf=0.0, neginf=0.0)).ravel()
    scale = max(float(d.max()), float(e.max()))
    num, den = float(np.linalg.norm(d / scale)), float(np.linalg.norm(e / scale))
    return num / den if den > 0 else float("inf")
