"""``bad_requests`` and ``oversized_shape``: malformed requests get an error response and leave
the server and the model ready.

The oversized shape (a byte size that overflows 64 bits) crashes Triton 2.51 (upstream; the
server cannot be patched here), so it is a final check: sent once, last in a run, and only to a
server the run started; a crash is a WARN naming the version rather than a model failure.
"""

from __future__ import annotations

import http.client
import json
import time

import numpy as np

from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session
from aitune_triton.validate.checks.wire import MAX_REQUEST_BYTES, infer, request_arrays, short, wire_dtype
from aitune_triton.waiting import poll

# a shape whose byte size overflows 64 bits; Triton 2.51 segfaults on it (upstream)
OVERSIZED_SHAPE = (2147483648, 2147483648)
BadRequest = tuple[str, dict[str, np.ndarray], dict[str, str]]


def bad_requests(target: ModelTarget) -> list[BadRequest]:
    """(label, arrays, datatype overrides) that a correct server must reject."""
    if not target.reference:
        return []
    good = request_arrays(target, target.reference[0].inputs, 0, 1)
    first = next(iter(target.inputs))
    tensor = target.inputs[first]
    dtype = wire_dtype(tensor.data_type)
    cases: list[BadRequest] = []
    if dtype in ("FP32", "FP16", "BF16", "FP64"):
        cases.append(("wrong dtype (INT32 for %s %r)" % (dtype, first),
                      {**good, first: good[first].astype(np.int32)}, {first: "INT32"}))
    else:
        cases.append(("wrong dtype (FP32 for %s %r)" % (dtype, first),
                      {**good, first: good[first].astype(np.float32)}, {first: "FP32"}))
    cases.append(("wrong rank (%r with an extra dim)" % first, {**good, first: good[first][..., None]}, {}))
    lead = 1 if target.batching else 0
    for name, t in target.inputs.items():
        fixed = [i for i, d in enumerate(t.dims) if d > 0]
        if fixed and not t.HasField("reshape"):
            axis = fixed[-1]
            shape = list(good[name].shape)
            shape[lead + axis] += 1
            arr = np.resize(good[name], shape).astype(good[name].dtype)
            cases.append(("dim outside the config (%r axis %d = %d, fixed at %d)"
                          % (name, lead + axis, shape[lead + axis], t.dims[axis]), {**good, name: arr}, {}))
            break
    if target.batching:
        big = target.max_batch_size + 1
        # not sent when too large to build (a hand-edited max_batch_size near 2**31)
        if big * sum(a.nbytes for a in good.values()) <= MAX_REQUEST_BYTES:
            cases.append(("batch %d > max_batch_size %d" % (big, target.max_batch_size),
                          {n: np.repeat(a, big, axis=0) for n, a in good.items()}, {}))
    missing = list(target.inputs)[-1]
    cases.append(("missing input %r" % missing, {n: a for n, a in good.items() if n != missing}, {}))
    return cases


def check_bad_requests(target: ModelTarget, session: Session) -> CheckResult:
    """Malformed requests get an error response and leave the server and the model ready."""
    t0 = time.monotonic()
    accepted, rejected = [], []
    for label, arrays, types in bad_requests(target):
        try:
            infer(session, target, arrays, "http", datatypes=types)
            accepted.append(label)
        except Exception as exc:  # noqa: BLE001 - an error response is the expected outcome
            rejected.append("%s: %s" % (label, short(exc, 120)))
    problems = ["accepted %s" % label for label in accepted]
    try:
        # "live", not "ready": the server reports not-ready while another model of the run unloads
        if not session.http.is_server_live():
            problems.append("the server is not live afterwards")
        elif not session.http.is_model_ready(target.name):
            problems.append("the model is not ready afterwards")
        else:
            infer(session, target, request_arrays(target, target.reference[0].inputs, 0, 1), "http")
    except Exception as exc:  # noqa: BLE001
        problems.append("a good request failed afterwards: %s" % short(exc))
    if problems:
        return finished("bad_requests", CheckStatus.FAIL, "; ".join(problems + rejected), t0)
    return finished("bad_requests", CheckStatus.PASS, "%d rejected, server and model still ready: %s"
                    % (len(rejected), " | ".join(rejected)), t0)


def _http(url: str, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int | None, str]:
    host, _, port = url.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


def _server_version(session: Session) -> str | None:
    try:
        return session.http.get_server_metadata().get("version")
    except Exception:  # noqa: BLE001 - the version only names the release in the warning
        return None


def check_oversized_shape(target: ModelTarget, session: Session, server_version: str | None = None) -> CheckResult:
    """A request declaring a shape whose byte size overflows must be refused and leave the server up.

    Triton 2.51 segfaults on it (upstream), so a crash is a WARN naming the version rather than a
    model failure; the registry makes it the run's last request, on a server the run started.
    """
    t0 = time.monotonic()
    first = next(iter(target.inputs))
    body = json.dumps({"inputs": [{"name": first, "shape": list(OVERSIZED_SHAPE), "data": [0],
                                   "datatype": wire_dtype(target.inputs[first].data_type)}]}).encode()
    url = session.endpoint.http_url
    status, text = _http(url, "POST", "/v2/models/%s/infer" % target.name, body, session.timeout_s)
    alive = bool(poll(lambda: _http(url, "GET", "/v2/health/live", None, 2.0)[0] == 200, 20.0, 0.5, backoff=1.5,
                      attempts=4))
    shape = "x".join(map(str, OVERSIZED_SHAPE))
    if not alive:
        return finished("oversized_shape", CheckStatus.WARN, "this Triton version (%s) dies on oversized shapes: a "
                        "request for %r with shape %s crashed the server (an upstream bug); keep such a server behind "
                        "a proxy that rejects huge shapes, or use a release that refuses them"
                        % (server_version or "unknown", first, shape), t0)
    if status is not None and 400 <= status < 500:
        return finished("oversized_shape", CheckStatus.PASS, "shape %s refused with HTTP %d (%s); server still live"
                        % (shape, status, short(Exception(text), 120)), t0)
    return finished("oversized_shape", CheckStatus.FAIL, "shape %s for %r was answered with HTTP %s instead of a 4xx"
                    % (shape, first, status), t0)


register(Check("bad_requests", 60, lambda ctx: check_bad_requests(ctx.target, ctx.session)))
register(Check("oversized_shape", 900,
               lambda ctx: check_oversized_shape(ctx.target, ctx.session, _server_version(ctx.session)),
               final=True, needs_own_server=True,
               why="not sent to a server this run did not start (Triton 2.51 crashes on it; see Troubleshooting in "
                   "the README)"))
