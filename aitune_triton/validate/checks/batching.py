"""``dynamic_batching``: concurrent batch-1 requests are merged by the batcher into larger
executions, and each response is its own request's; plus the server statistics it reads."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import numpy as np

from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import (
    build_inputs,
    compare_output,
    read_outputs,
    request_arrays,
    requested_outputs,
    short,
    wire_dtype,
)
from aitune_triton.waiting import poll

Item = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def model_stats(session: Session, name: str) -> dict:
    stats = session.http.get_inference_statistics(name)
    for entry in stats.get("model_stats", []):
        if entry.get("name") == name:
            return entry
    return {}


def settled_stats(session: Session, name: str, wait_s: float = 2.0) -> dict:
    """Statistics once two reads agree: counts are updated only after a response is sent."""
    reads = [model_stats(session, name)]

    def agree() -> dict | None:
        reads.append(model_stats(session, name))
        return reads[-1] if reads[-1].get("inference_count") == reads[-2].get("inference_count") else None

    time.sleep(0.05)  # a read right after the first would agree before the last response is counted
    return poll(agree, wait_s, 0.05) or reads[-1]


def batch_histogram(stats: dict) -> dict[int, int]:
    """Executed batch size -> executions, from /v2/models/<m>/stats batch_stats."""
    return {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in stats.get("batch_stats", [])}


def _batch_items(target: ModelTarget) -> list[Item]:
    items = []
    for case in target.reference:
        n = int(np.asarray(next(iter(case.inputs.values()))).shape[0])
        for i in range(n):
            items.append((request_arrays(target, case.inputs, i, i + 1),
                          {k: np.asarray(v)[i:i + 1] for k, v in case.outputs.items()}))
    return items


def check_dynamic_batching(target: ModelTarget, session: Session, in_flight: int = 16, rounds: int = 4) -> CheckResult:
    """With ``in_flight`` concurrent gRPC requests of batch 1, the batcher forms larger batches
    (execution_count grows less than inference_count) and each response is its own request's."""
    t0 = time.monotonic()
    name = "dynamic_batching"
    if not target.batching:
        return finished(name, CheckStatus.SKIP, "max_batch_size is 0: the model does not batch", t0)
    if not target.config.HasField("dynamic_batching"):
        why = target.manifest.spec.row_dependence
        return finished(name, CheckStatus.SKIP, "config.pbtxt has no dynamic_batching%s"
                        % ("; generate left it off: rows are not independent (%s)" % why if why else ""), t0)
    grpc = session.grpc
    if grpc is None:
        return finished(name, CheckStatus.SKIP, "no gRPC endpoint", t0)
    items = _batch_items(target)
    if not items:
        return finished(name, CheckStatus.FAIL, "reference.npz holds no cases", t0)
    types = {n: wire_dtype(t.data_type) for n, t in target.inputs.items()}
    before = settled_stats(session, target.name)
    mismatches: list[str] = []
    errors: list[str] = []
    total = 0
    for r in range(rounds):
        done = threading.Semaphore(0)
        results: dict[int, tuple[Any, Any]] = {}

        def callback(result: Any, error: Any, key: int, results: dict = results,
                     done: threading.Semaphore = done) -> None:
            results[key] = (result, error)
            done.release()

        for j in range(in_flight):
            key = r * in_flight + j
            grpc.async_infer(target.name, build_inputs("grpc", items[key % len(items)][0], types),
                             callback=functools.partial(callback, key=key),
                             outputs=requested_outputs("grpc", target.outputs),
                             client_timeout=session.timeout_s)
        deadline = time.monotonic() + session.timeout_s + 5
        for _ in range(in_flight):
            if not done.acquire(timeout=max(0.1, deadline - time.monotonic())):
                return finished(name, CheckStatus.FAIL, "%d of %d responses did not arrive within %.0f s"
                                % (in_flight - len(results), in_flight, session.timeout_s), t0)
        for key, (result, error) in sorted(results.items()):
            total += 1
            if error is not None:
                errors.append(short(error))
                continue
            got = read_outputs(result, target)
            for out_name, ref in items[key % len(items)][1].items():
                comparison = compare_output(got[out_name], ref, target.manifest.tolerances.get(out_name))
                if not comparison.ok:
                    mismatches.append("request %d output %r: %s" % (key, out_name, comparison.reason))
    # the statistics are updated after the responses are sent: wait until they count every request
    reads: list[dict] = []

    def counted() -> bool:
        reads.append(model_stats(session, target.name))
        return int(reads[-1].get("inference_count", 0)) - int(before.get("inference_count", 0)) >= total

    poll(counted, 5.0, 0.1)
    after = reads[-1]
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    hist = {b: n - batch_histogram(before).get(b, 0) for b, n in batch_histogram(after).items()}
    sizes = ", ".join("%dx%d" % (n, b) for b, n in sorted(hist.items()) if n > 0)
    summary = "%d requests (%d in flight): %d inferences in %d executions [%s]" % (
        total, in_flight, inferences, executions, sizes)
    if errors or mismatches:
        detail = "; ".join((["%d errors, first: %s" % (len(errors), errors[0])] if errors else [])
                           + (["%d responses do not match their request, first: %s" % (len(mismatches),
                                                                                       mismatches[0])]
                              if mismatches else []))
        if mismatches and target.manifest.spec.row_dependence:  # dynamic batching enabled by hand
            detail += "; generate found the rows not independent (%s): remove dynamic_batching" \
                % target.manifest.spec.row_dependence
        return finished(name, CheckStatus.FAIL, "%s; %s" % (detail, summary), t0)
    if not 0 < executions < inferences:
        return finished(name, CheckStatus.FAIL, "no batches formed: %s" % summary, t0)
    return finished(name, CheckStatus.PASS, "%s; every response matched its request" % summary, t0)


register(Check("dynamic_batching", 70,
               lambda ctx: check_dynamic_batching(ctx.target, ctx.session, in_flight=ctx.batching_in_flight)))
