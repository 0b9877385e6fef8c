"""``accuracy_http`` / ``accuracy_grpc``: every reference case, served, reproduces the eager
outputs within the manifest's per-output tolerances."""

from __future__ import annotations

import time

import numpy as np

from aitune_triton.numerics import to_numpy
from aitune_triton.reference_data import ReferenceCase
from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import compare_output, infer, request_arrays


def _chunks(target: ModelTarget, case: ReferenceCase) -> list[tuple[int, int | None]]:
    if not target.batching:
        return [(0, None)]
    n = int(np.asarray(next(iter(case.inputs.values()))).shape[0])
    step = max(1, target.max_batch_size)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def check_accuracy(target: ModelTarget, session: Session, protocol: str) -> CheckResult:
    """Every reference case (split into requests of at most max_batch_size) reproduces the eager
    outputs within the manifest's per-output tolerances."""
    t0 = time.monotonic()
    name = "accuracy_%s" % protocol
    if not target.reference:
        return finished(name, CheckStatus.FAIL, "reference.npz holds no cases", t0)
    worst: dict[str, float] = {}
    requests = 0
    for i, case in enumerate(target.reference):
        for lo, hi in _chunks(target, case):
            got = infer(session, target, request_arrays(target, case.inputs, lo, hi), protocol)
            requests += 1
            for out_name, expected in case.outputs.items():
                ref = to_numpy(expected)[lo:hi] if target.batching else to_numpy(expected)
                if out_name not in got:
                    return finished(name, CheckStatus.FAIL, "output %r is missing from the response" % out_name, t0)
                comparison = compare_output(got[out_name], ref, target.manifest.tolerances.get(out_name))
                if not comparison.ok:
                    items = "items %d-%d" % (lo, (hi or 1) - 1) if target.batching else "whole case"
                    return finished(name, CheckStatus.FAIL, "output %r, reference case %d (%s): %s"
                                    % (out_name, i, items, comparison.reason), t0)
                worst[out_name] = max(worst.get(out_name, 0.0), comparison.max_abs)
    diffs = ", ".join("%s %.2g" % kv for kv in sorted(worst.items()))
    return finished(name, CheckStatus.PASS, "%d cases in %d requests within tolerance; max |diff|: %s"
                    % (len(target.reference), requests, diffs), t0)


register(Check("accuracy_http", 30, lambda ctx: check_accuracy(ctx.target, ctx.session, "http")))
register(Check("accuracy_grpc", 40, lambda ctx: check_accuracy(ctx.target, ctx.session, "grpc"), needs_grpc=True))
