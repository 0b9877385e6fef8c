"""Checks of a raw-data pipeline (the ensemble ``aitune_triton.pipeline`` writes): raw rows in,
the recorded answers out, over HTTP and gRPC; bad raw rows fail their own request and the
pipeline keeps answering.

The ensemble's ``reference.npz`` holds each raw sample as a uint8 array (read without pickle) and
the answers generate computed in process (hooks + eager model); text answers are stored as bytes.
"""

from __future__ import annotations

import time

import numpy as np

from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import compare_output, infer, short
from aitune_triton.validate.result import CheckResult, CheckStatus, finished

RAW = "raw"
# a row no UTF-8 decoder or image decoder accepts
UNDECODABLE = b"\xff\xfe\xfa\x00\x81"


def raw_request(rows: list[bytes]) -> dict[str, np.ndarray]:
    """The ensemble's input for ``rows``: BYTES of shape [len(rows), 1]."""
    return {RAW: np.array([[r] for r in rows], dtype=object)}


def _mismatch(target: ModelTarget, got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str | None:
    for name, want in expected.items():
        have = got[name]
        if want.dtype.kind in "SU":
            a = [bytes(x) if not isinstance(x, str) else x.encode() for x in np.asarray(have).reshape(-1)]
            b = [bytes(x) if not isinstance(x, str) else x.encode() for x in want.reshape(-1)]
            if a != b:
                return "%s: got %r, expected %r" % (name, a[:4], b[:4])
            continue
        cmp = compare_output(have, want, target.manifest.tolerances.get(name))
        if not cmp.ok:
            return "%s: %s" % (name, cmp.reason)
    return None


def check_raw_answers(target: ModelTarget, session: Session, protocol: str) -> CheckResult:
    """Each raw sample alone, then (over HTTP) all of them in one request, against the recorded answers."""
    t0 = time.monotonic()
    name = "raw_answers_" + protocol
    cases = [(case.inputs[RAW].tobytes(), case.outputs) for case in target.reference]
    for i, (raw, expected) in enumerate(cases):
        got = infer(session, target, raw_request([raw]), protocol)
        problem = _mismatch(target, got, expected)
        if problem:
            return finished(name, CheckStatus.FAIL, "raw sample %d: %s" % (i, problem), t0)
    detail = "%d raw samples answered as recorded" % len(cases)
    if protocol == "http" and 1 < len(cases) <= target.max_batch_size:
        joined = {k: np.concatenate([c[1][k] for c in cases]) for k in cases[0][1]}
        got = infer(session, target, raw_request([c[0] for c in cases]), protocol)
        problem = _mismatch(target, got, joined)
        if problem:
            return finished(name, CheckStatus.FAIL, "all %d raw samples in one request: %s" % (len(cases), problem), t0)
        detail += ", one by one and in one request"
    return finished(name, CheckStatus.PASS, detail, t0)


def check_raw_bad_input(target: ModelTarget, session: Session) -> CheckResult:
    """An empty row must fail its request; undecodable bytes may fail it (or be answered, if the
    hook accepts them); either way the next good request is answered as recorded."""
    from tritonclient.utils import InferenceServerException

    t0 = time.monotonic()
    seen = []
    for what, row in (("an empty row", b""), ("undecodable bytes", UNDECODABLE)):
        try:
            infer(session, target, raw_request([row]), "http")
        except InferenceServerException as exc:
            seen.append("%s refused (%s)" % (what, short(exc, 120)))
            continue
        if not row:
            return finished("raw_bad_input", CheckStatus.FAIL, "%s was answered; it should fail its request" % what,
                            t0)
        seen.append("%s answered (the hooks accept them)" % what)
    case = target.reference[0]
    problem = _mismatch(target, infer(session, target, raw_request([case.inputs[RAW].tobytes()]), "http"),
                        case.outputs)
    if problem:
        return finished("raw_bad_input", CheckStatus.FAIL, "after bad rows, raw sample 0: %s" % problem, t0)
    return finished("raw_bad_input", CheckStatus.PASS, "; ".join(seen) + "; the pipeline still answers", t0)


register(Check("raw_answers_http", 32, lambda ctx: check_raw_answers(ctx.target, ctx.session, "http"),
               targets=("pipeline",)))
register(Check("raw_answers_grpc", 42, lambda ctx: check_raw_answers(ctx.target, ctx.session, "grpc"),
               needs_grpc=True, targets=("pipeline",)))
register(Check("raw_bad_input", 62, lambda ctx: check_raw_bad_input(ctx.target, ctx.session), targets=("pipeline",)))


STEP_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


def step_totals(session: Session, target: ModelTarget) -> dict[str, tuple[int, int]]:
    """Per step of the pipeline (pre, model, post): (successful requests, total ns spent in the
    queue and computing), from Triton's per-model statistics of the ensemble's composing models."""
    from aitune_triton.validate.checks.batching import model_stats

    totals = {}
    for role in ("pre", "model", "post"):
        name = str(target.manifest.pipeline[role])
        stats = model_stats(session, name).get("inference_stats", {})
        count = int(stats.get("success", {}).get("count", 0))
        totals[role] = (count, sum(int(stats.get(f, {}).get("ns", 0)) for f in STEP_FIELDS))
    return totals


def step_times_result(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> CheckResult:
    """The mean time per request in each step between two ``step_totals`` (the perf run)."""
    parts, ms = [], {}
    for role, (count, ns) in after.items():
        n, spent = count - before[role][0], ns - before[role][1]
        if n <= 0:
            return CheckResult("step_times", CheckStatus.SKIP, "no requests reached the %s step" % role)
        ms[role] = spent / n / 1e6
        parts.append("%s %.3f ms" % (role, ms[role]))
    return CheckResult("step_times", CheckStatus.PASS, "per request (queue + compute): %s; %d requests"
                       % (" / ".join(parts), after["model"][0] - before["model"][0]))
