"""Comparing outputs with tolerances: the one place that decides whether two tensors "match".

Export checks (eager vs ONNX Runtime / AOTInductor), candidate selection in ``tune`` and the
live checks in ``validate`` all compare an output against a reference; they all call
:func:`compare`, which returns one :class:`Comparison`. The rule is element-wise
``|actual - expected| <= atol + rtol * |expected|`` in float64, NaN equal to NaN, and exact
equality for integer and bool outputs.

numpy only at import time: torch tensors are accepted (duck-typed through ``detach``) without
importing torch here, so ``export/``, ``triton/`` and ``validate/`` can share this module cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol}


# Per dtype: float16/bfloat16 carry ~3 significant digits; fp32 paths (ORT, AOTI) reorder sums.
DEFAULT_TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-3),
    "float16": Tolerance(1e-2, 1e-2),
    "bfloat16": Tolerance(5e-2, 5e-2),
}
EXACT = Tolerance(0.0, 0.0)


def tolerance_for(dtype: str, override: Tolerance | None = None) -> Tolerance:
    """The tolerance for an output of ``dtype``; ``override`` applies to float outputs only."""
    if override is not None and dtype in DEFAULT_TOLERANCES:
        return override
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


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
    bad: int
    total: int
    tolerance: Tolerance
    reason: str | None = None  # None when ok: one line naming the first shape/dtype/value difference

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0


def compare(actual: Any, expected: Any, tol: Tolerance, *, strict_dtype: bool = False,
            reshape_same_size: bool = False) -> Comparison:
    """Compare element-wise in float64. A shape difference fails outright (``reshape_same_size``
    first lets ``[batch, 1]`` meet ``[batch]``, as Triton returns reshaped tensors); with
    ``strict_dtype`` a dtype difference fails too. ``max_rel`` is relative to ``|expected|``
    floored at ``atol`` (1 for exact dtypes), so zeros do not blow it up."""
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
    n_bad = int(bad.sum())
    max_abs, max_rel = float(diff.max()), float(rel.max())
    if not n_bad:
        return Comparison(True, max_abs, max_rel, 0, a.size, tol)
    idx = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), a.shape)  # () for a scalar
    where = list(int(i) for i in idx)
    if floating:
        reason = ("%d/%d elements outside atol=%g rtol=%g, max |diff| %.3g at %s (got %r, expected %r)"
                  % (n_bad, a.size, tol.atol, tol.rtol, float(np.max(np.where(bad, diff, 0.0))), where,
                     a[idx].item(), e[idx].item()))
    else:
        reason = ("%d/%d values differ (exact dtype %s), first at %s (got %r, expected %r)"
                  % (n_bad, a.size, a.dtype, where, a[idx].item(), e[idx].item()))
    return Comparison(False, max_abs, max_rel, n_bad, a.size, tol, reason)
