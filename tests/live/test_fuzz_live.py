"""Malformed requests against a generated fallback model on the real server: every one gets an
error response, none takes the model instance down, and a good request right after each burst
is answered correctly (issue: reliability)."""
import random

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from aitune_triton.api import generate
from aitune_triton.reference_data import load_reference
from aitune_triton.validate.checks.target import Endpoint, ModelTarget, Session
from aitune_triton.validate.checks.wire import build_inputs, infer, request_arrays, wire_dtype

pytestmark = pytest.mark.live
MODEL = "multi_io"
WRONG_TYPES = ["FP64", "INT8", "FP16", "UINT8", "INT16"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, triton_server_factory):
    from pathlib import Path

    repo = tmp_path_factory.mktemp("fuzz") / "repo"
    root = Path(__file__).resolve().parents[2]
    generate(root / "examples" / "multi_io" / "model.py", repo, {"fallback_format": "export", "backends": ("python",)})
    server = triton_server_factory(repo, load_models=(MODEL,))
    return repo, server


def _malformed(rng: random.Random, good: dict[str, np.ndarray], types: dict[str, str], max_batch: int):
    """One malformed request: (name -> (array, datatype)), chosen among the ways a client goes wrong."""
    req = {n: (a, types[n]) for n, a in good.items()}
    name = rng.choice(sorted(req))
    arr, dt = req[name]
    kind = rng.choice(["dtype", "rank_up", "rank_down", "dim", "huge_dim", "missing", "extra", "batch_over",
                       "empty_batch", "bytes"])
    if kind == "dtype":
        wrong = rng.choice([t for t in WRONG_TYPES if t != dt])
        req[name] = (arr.astype({"FP64": np.float64, "INT8": np.int8, "FP16": np.float16, "UINT8": np.uint8,
                                 "INT16": np.int16}[wrong]), wrong)
    elif kind == "rank_up":
        req[name] = (arr[..., None], dt)
    elif kind == "rank_down":
        req[name] = (arr.reshape(-1)[:1].reshape(()) if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)[:, 0], dt)
        if arr.ndim == 1:
            req[name] = (np.asarray(arr[0]), dt)
    elif kind == "dim":
        if arr.ndim < 2:
            req[name] = (arr[..., None].repeat(3, axis=-1), dt)
        else:
            req[name] = (np.concatenate([arr, arr], axis=-1), dt)
    elif kind == "huge_dim":
        req[name] = (np.zeros((1, 4096 * 64) if arr.ndim >= 2 else (1, 7), dtype=arr.dtype), dt)
    elif kind == "missing":
        del req[name]
    elif kind == "extra":
        req["not_an_input"] = (arr, dt)
    elif kind == "batch_over":
        over = max_batch + 1  # the served max_batch_size is measured: one past it, whatever it is
        req = {n: (np.concatenate([a] * over)[:over], d) for n, (a, d) in req.items()}
    elif kind == "empty_batch":
        req = {n: (a[:0], d) for n, (a, d) in req.items()}
    else:
        req[name] = (np.array([b"\x00\x01 not numbers"] * arr.shape[0], dtype=object), "BYTES")
    return kind, req


def _send(protocol, url, req):
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(url)
    else:
        client = httpclient.InferenceServerClient(url, network_timeout=30)
    inputs = build_inputs(protocol, {n: a for n, (a, _) in req.items()}, {n: d for n, (_, d) in req.items()})
    return client.infer(MODEL, inputs, client_timeout=30) if protocol == "grpc" else client.infer(MODEL, inputs)


def test_malformed_requests_all_fail_cleanly_and_server_keeps_answering(served):
    repo, server = served
    target = ModelTarget.load(repo / MODEL)
    case = load_reference(repo / MODEL / "reference.npz")[1]
    good = request_arrays(target, case.inputs)
    types = {n: wire_dtype(t.data_type) for n, t in target.inputs.items()}
    rng = random.Random(1234)
    sent, kinds = 0, {}
    with Session(Endpoint(server.http_url, server.grpc_url)) as session:
        for burst in range(6):
            for _ in range(50):
                kind, req = _malformed(rng, good, types, target.max_batch_size)
                protocol = rng.choice(["grpc", "http"])
                with pytest.raises(InferenceServerException, match=r"\w"):  # the message varies; it is never empty
                    _send(protocol, server.grpc_url if protocol == "grpc" else server.http_url, req)
                sent += 1
                kinds[kind] = kinds.get(kind, 0) + 1
            assert server.returncode is None and server.is_live() and server.model_ready(MODEL), \
                "burst %d took the model down" % burst
            got = infer(session, target, good, "grpc")
            for name, expected in case.outputs.items():
                want = np.asarray(expected).astype(np.float64)
                np.testing.assert_allclose(got[name].astype(np.float64).reshape(want.shape), want, atol=1e-4, rtol=1e-3)
    assert sent == 300 and len(kinds) == 10, kinds
