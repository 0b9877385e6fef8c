"""Checks of one served model against its ``config.pbtxt``, manifest and reference data.

A generated repository claims things (names, dtypes, dims, max batch, accuracy within the
manifest's tolerances, shapes the profiles cover, a batcher that batches). Each check asks the
live server whether the claim holds and returns a ``CheckResult``; none raises for a model
problem, so one bad model never hides the results of the others. Every request carries a
timeout (HTTP ``network_timeout``, gRPC ``client_timeout``) so a wedged server cannot hang a run.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import re
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.errors import UserError
from aitune_triton.tensorrt.stamp import describe_stamp, tensorrt_problem
from aitune_triton.triton.manifest import REFERENCE, Manifest, ReferenceCase, load_reference
from aitune_triton.triton.mapping import tensor_config, triton_dtype
from aitune_triton.validate.edge_inputs import EDGE_INPUTS, edge_shapes_for, load_edge_inputs, stored_for

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "pass", "fail", "skip"
WARN = "warn"  # a problem of the server, not of the model: reported, does not fail the run
# what one check request may allocate: a hand-edited max_batch_size of 2**31-1 must not make the
# checks build tens of GiB of input; shapes above this are reported as not sent
MAX_REQUEST_BYTES = 256 << 20
# a shape whose byte size overflows 64 bits; Triton 2.51 segfaults on it (upstream)
OVERSIZED_SHAPE = (2147483648, 2147483648)
_PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
# Triton releases whose TensorRT is corroborated in ../shared/reference/triton.md §9; others are unknown.
KNOWN_TRT_FOR_TRITON = {"2.44": "8.6.3", "2.45": "8.6.3", "2.49": "10.3.0", "2.52": "10.6.0", "2.56": "10.9.0",
                        "2.64": "10.14.1"}


@dataclass(frozen=True)
class CheckResult:
    """One verdict: ``status`` is pass, fail or skip; ``detail`` says what was seen, naming the tensor."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        return cls(d["name"], d["status"], d.get("detail", ""), float(d.get("seconds", 0.0)))


@dataclass(frozen=True)
class ModelTarget:
    """What a model directory claims: its config as written, its manifest, its reference cases."""

    name: str
    model_dir: Path
    manifest: Manifest
    config: model_config_pb2.ModelConfig
    reference: tuple[ReferenceCase, ...]

    @classmethod
    def load(cls, model_dir: Path) -> "ModelTarget":
        """Raises UserError/ModelError/OSError with the file named when something is missing or broken."""
        model_dir = Path(model_dir)
        manifest = Manifest.load(model_dir)
        config = parse_config_file(model_dir / "config.pbtxt")
        reference = tuple(load_reference(model_dir / REFERENCE))
        return cls(model_dir.name, model_dir, manifest, config, reference)

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def inputs(self) -> dict[str, "model_config_pb2.ModelInput"]:
        return {t.name: t for t in self.config.input}

    @property
    def outputs(self) -> dict[str, "model_config_pb2.ModelOutput"]:
        return {t.name: t for t in self.config.output}


@dataclass(frozen=True)
class Endpoint:
    """Where the server answers; ``timeout_s`` bounds every request so a wedged server cannot hang a run."""

    http_url: str
    grpc_url: str | None
    timeout_s: float = 30.0


class Session:
    """One HTTP and one gRPC client, both with timeouts; close() when done."""

    def __init__(self, endpoint: Endpoint):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.endpoint = endpoint
        self.timeout_s = endpoint.timeout_s
        self.http = httpclient.InferenceServerClient(
            endpoint.http_url, connection_timeout=endpoint.timeout_s, network_timeout=endpoint.timeout_s)
        self.grpc = grpcclient.InferenceServerClient(endpoint.grpc_url) if endpoint.grpc_url else None

    def close(self) -> None:
        for client in (self.http, self.grpc):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a client of a dead server may raise anything
                    pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- tensors and requests


def wire_dtype(datatype: str) -> str:
    """Protocol datatype ("FP32") of a config data_type enum or its name ("TYPE_FP32")."""
    name = datatype if isinstance(datatype, str) else model_config_pb2.DataType.Name(datatype)
    name = name[5:] if name.startswith("TYPE_") else name
    return "BYTES" if name == "STRING" else name


def _client_dtype(datatype: str):
    """The numpy dtype tritonclient wants for a datatype: BF16 is ml_dtypes.bfloat16 since r26.06
    (float32 truncation before), so ask tritonclient instead of assuming either."""
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(datatype)


def to_request(arr: np.ndarray, tensor, batching: bool) -> np.ndarray:
    """A reference array in the shape the inference API takes: a tensor declared ``dims: [1]`` with
    ``reshape: { shape: [] }`` is sent as [batch, 1] (the model itself sees [batch])."""
    if tensor.HasField("reshape") and all(d > 0 for d in tensor.dims):
        lead = arr.shape[:1] if batching else ()
        return arr.reshape(tuple(lead) + tuple(int(d) for d in tensor.dims))
    return arr


def build_inputs(protocol: str, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list:
    """InferInputs for ``arrays`` (float32 stands in for BF16, as in reference.npz)."""
    if protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    inputs = []
    for name, arr in arrays.items():
        datatype = datatypes[name]
        data = np.ascontiguousarray(arr).astype(_client_dtype(datatype), copy=False)
        inp = client.InferInput(name, list(data.shape), datatype)
        if protocol == "http":
            inp.set_data_from_numpy(data, binary_data=True)
        else:
            inp.set_data_from_numpy(data)
        inputs.append(inp)
    return inputs


def requested_outputs(protocol: str, names) -> list:
    if protocol == "http":
        import tritonclient.http as client

        return [client.InferRequestedOutput(n, binary_data=True) for n in names]
    import tritonclient.grpc as client

    return [client.InferRequestedOutput(n) for n in names]


def read_outputs(result, target: ModelTarget) -> dict[str, np.ndarray]:
    out = {}
    for name, tensor in target.outputs.items():
        value = result.as_numpy(name)
        if value is None:
            raise ValueError("the response has no output %r" % name)
        out[name] = value.astype(np.float32) if wire_dtype(tensor.data_type) == "BF16" else value
    return out


def infer(session: Session, target: ModelTarget, arrays: dict[str, np.ndarray], protocol: str = "grpc",
          datatypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """One synchronous request; raises tritonclient's InferenceServerException on a server error."""
    types = {n: wire_dtype(t.data_type) for n, t in target.inputs.items()}
    types.update(datatypes or {})
    inputs = build_inputs(protocol, arrays, types)
    outputs = requested_outputs(protocol, target.outputs)
    if protocol == "http":
        result = session.http.infer(target.name, inputs, outputs=outputs)
    else:
        if session.grpc is None:
            raise RuntimeError("no gRPC endpoint")
        result = session.grpc.infer(target.name, inputs, outputs=outputs, client_timeout=session.timeout_s)
    return read_outputs(result, target)


def request_arrays(target: ModelTarget, case_inputs: dict[str, np.ndarray], lo: int = 0,
                   hi: int | None = None) -> dict[str, np.ndarray]:
    """Inputs of one reference case (items lo:hi of the batch), in request shape and config dtype."""
    out = {}
    for name, tensor in target.inputs.items():
        arr = np.asarray(case_inputs[name])
        if target.batching:
            arr = arr[lo:hi]
        arr = to_request(arr, tensor, target.batching)
        dtype = _client_dtype(wire_dtype(tensor.data_type))
        out[name] = arr if wire_dtype(tensor.data_type) == "BF16" else arr.astype(dtype, copy=False)
    return out


def compare(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> str | None:
    """None when ``got`` matches ``expected`` (|got-exp| <= atol + rtol*|exp|, NaN==NaN), else why not."""
    expected = np.asarray(expected)
    if got.size == expected.size and got.shape != expected.shape:
        expected = expected.reshape(got.shape)  # reshape'd tensors come back as [batch, 1]
    if got.shape != expected.shape:
        return "shape %s, expected %s" % (list(got.shape), list(expected.shape))
    if got.dtype.kind in "fc" or expected.dtype.kind in "fc":
        g, e = got.astype(np.float64), expected.astype(np.float64)
        diff = np.abs(g - e)
        both_nan = np.isnan(g) & np.isnan(e)
        bad = ~both_nan & ~(diff <= atol + rtol * np.abs(e))
    else:
        g, e = got, expected
        diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
        bad = g != e
    if not bad.any():
        return None
    idx = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1.0))), got.shape)
    return ("%d/%d elements outside atol=%g rtol=%g, max |diff| %.3g at %s (got %r, expected %r)"
            % (int(bad.sum()), bad.size, atol, rtol, float(np.nanmax(np.where(bad, diff, 0.0))),
               list(int(i) for i in idx), g[idx].item(), e[idx].item()))


def max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    if got.size == 0 or got.size != np.asarray(expected).size:
        return 0.0
    d = np.abs(got.astype(np.float64).ravel() - np.asarray(expected, np.float64).ravel())
    return float(np.nanmax(d)) if np.isfinite(d).any() else 0.0


def short(exc: BaseException, limit: int = 200) -> str:
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    msg = " ".join(str(msg or type(exc).__name__).split())
    msg = re.sub(r"^\[request id: [^\]]*\] ", "", msg)
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _result(name: str, status: str, detail: str, t0: float) -> CheckResult:
    return CheckResult(name, status, detail, time.monotonic() - t0)


# ---------------------------------------------------------------- the checks


def check_ready(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    if session.http.is_model_ready(target.name):
        return _result("ready", PASS, "model %s is ready" % target.name, t0)
    return _result("ready", FAIL, "model %s is not ready on the server" % target.name, t0)


def _normalized(cfg: dict) -> dict:
    """Names, dtypes, dims, reshape, max batch and backend of a config in JSON (server) form."""
    def tensors(items):
        return {t["name"]: (wire_dtype(t.get("data_type", "TYPE_INVALID")), [int(d) for d in t.get("dims", [])],
                            [int(d) for d in t["reshape"].get("shape", [])] if "reshape" in t else None)
                for t in items}
    platform = cfg.get("platform") or ""
    return {"max_batch_size": int(cfg.get("max_batch_size", 0)),
            "backend": cfg.get("backend") or _PLATFORM_BACKENDS.get(platform, platform),
            "input": tensors(cfg.get("input", [])), "output": tensors(cfg.get("output", []))}


def _config_json(config: model_config_pb2.ModelConfig) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _diff_configs(a: dict, b: dict, a_name: str, b_name: str, dtypes: bool = True) -> list[str]:
    problems = []
    if a["max_batch_size"] != b["max_batch_size"]:
        problems.append("max_batch_size %d in %s but %d in %s" % (a["max_batch_size"], a_name, b["max_batch_size"],
                                                                  b_name))
    if a.get("backend") and b.get("backend") and a["backend"] != b["backend"]:
        problems.append("backend %r in %s but %r in %s" % (a["backend"], a_name, b["backend"], b_name))
    for kind in ("input", "output"):
        if set(a[kind]) != set(b[kind]):
            problems.append("%ss %s in %s but %s in %s" % (kind, sorted(a[kind]), a_name, sorted(b[kind]), b_name))
        for name in sorted(set(a[kind]) & set(b[kind])):
            (da, dims_a, ra), (db, dims_b, rb) = a[kind][name], b[kind][name]
            if dtypes and da != db:
                problems.append("%s %r: dtype %s in %s but %s in %s" % (kind, name, da, a_name, db, b_name))
            if dims_a != dims_b:
                problems.append("%s %r: dims %s in %s but %s in %s" % (kind, name, dims_a, a_name, dims_b, b_name))
            if ra != rb and ra is not None and rb is not None:
                problems.append("%s %r: reshape %s in %s but %s in %s" % (kind, name, ra, a_name, rb, b_name))
    return problems


def _manifest_view(manifest: Manifest) -> dict:
    def tensors(specs):
        out = {}
        for t in specs:
            tc = tensor_config(t)
            out[t.name] = (wire_dtype(triton_dtype(t.dtype)), list(tc.dims), list(tc.reshape)
                           if tc.reshape is not None else None)
        return out
    return {"max_batch_size": manifest.max_batch_size, "backend": manifest.backend,
            "input": tensors(manifest.spec.inputs), "output": tensors(manifest.spec.outputs)}


def metadata_problems(target: ModelTarget, server_config: dict, metadata: dict) -> list[str]:
    """Differences between the server's config/metadata (JSON), config.pbtxt and the manifest.
    TensorRT dtypes come from the engine, so they are not held to the torch dtypes."""
    local = _normalized(_config_json(target.config))
    problems = _diff_configs(local, _normalized(server_config), "config.pbtxt", "the server's config")
    problems += _diff_configs(_manifest_view(target.manifest), local, "manifest.json", "config.pbtxt",
                              dtypes=target.manifest.backend != "tensorrt")
    lead = [-1] if target.batching else []
    for kind, declared in (("inputs", local["input"]), ("outputs", local["output"])):
        seen = {t["name"]: t for t in metadata.get(kind, [])}
        if set(seen) != set(declared):
            problems.append("metadata %s %s but config.pbtxt declares %s" % (kind, sorted(seen), sorted(declared)))
        for name in sorted(set(seen) & set(declared)):
            dtype, dims, _ = declared[name]
            shape = [int(d) for d in seen[name].get("shape", [])]
            if seen[name].get("datatype") != dtype:
                problems.append("metadata %s %r: datatype %s, config.pbtxt says %s"
                                % (kind[:-1], name, seen[name].get("datatype"), dtype))
            if shape != lead + dims:
                problems.append("metadata %s %r: shape %s, config.pbtxt implies %s"
                                % (kind[:-1], name, shape, lead + dims))
    return problems


def check_metadata(target: ModelTarget, session: Session) -> CheckResult:
    """The server's effective config and metadata agree with config.pbtxt, and config.pbtxt with the manifest."""
    t0 = time.monotonic()
    problems = metadata_problems(target, session.http.get_model_config(target.name),
                                 session.http.get_model_metadata(target.name))
    if problems:
        return _result("metadata", FAIL, "; ".join(problems), t0)
    return _result("metadata", PASS, "%d inputs, %d outputs, max_batch_size %d agree with config.pbtxt and the "
                   "manifest" % (len(target.inputs), len(target.outputs), target.max_batch_size), t0)


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
        return _result(name, FAIL, "reference.npz holds no cases", t0)
    worst: dict[str, float] = {}
    requests = 0
    for i, case in enumerate(target.reference):
        for lo, hi in _chunks(target, case):
            got = infer(session, target, request_arrays(target, case.inputs, lo, hi), protocol)
            requests += 1
            for out_name, expected in case.outputs.items():
                ref = np.asarray(expected)[lo:hi] if target.batching else np.asarray(expected)
                tol = target.manifest.tolerances.get(out_name)
                atol, rtol = (tol.atol, tol.rtol) if tol else (0.0, 0.0)
                if out_name not in got:
                    return _result(name, FAIL, "output %r is missing from the response" % out_name, t0)
                why = compare(got[out_name], ref, atol, rtol)
                if why:
                    items = "items %d-%d" % (lo, (hi or 1) - 1) if target.batching else "whole case"
                    return _result(name, FAIL, "output %r, reference case %d (%s): %s"
                                   % (out_name, i, items, why), t0)
                worst[out_name] = max(worst.get(out_name, 0.0), max_abs_diff(got[out_name], ref))
    diffs = ", ".join("%s %.2g" % kv for kv in sorted(worst.items()))
    return _result(name, PASS, "%d cases in %d requests within tolerance; max |diff|: %s"
                   % (len(target.reference), requests, diffs), t0)


def value_ranges(target: ModelTarget) -> dict[str, tuple[float, float]]:
    """Per input, the smallest and largest value in the reference inputs."""
    ranges = {}
    for name in target.inputs:
        values = [np.asarray(c.inputs[name]) for c in target.reference if name in c.inputs]
        flat = np.concatenate([v.ravel().astype(np.float64) for v in values]) if values else np.zeros(1)
        ranges[name] = (float(flat.min()), float(flat.max())) if flat.size else (0.0, 1.0)
    return ranges


def random_inputs(target: ModelTarget, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator,
                  ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of ``shapes`` (model shapes) within the reference value ranges; ints stay
    within the reference min..max so token ids stay inside the vocabulary."""
    ranges = ranges or value_ranges(target)
    out = {}
    for name, tensor in target.inputs.items():
        lo, hi = ranges[name]
        dtype = wire_dtype(tensor.data_type)
        shape = shapes[name]
        if dtype == "BOOL":
            arr = rng.integers(int(lo), int(hi) + 1, size=shape).astype(bool)
        elif dtype in ("FP32", "FP16", "FP64", "BF16"):
            arr = rng.uniform(lo, hi, size=shape).astype(np.float32)
        else:
            arr = rng.integers(int(lo), int(hi) + 1, size=shape)
        arr = to_request(np.asarray(arr), tensor, target.batching)
        out[name] = arr if dtype == "BF16" else arr.astype(_client_dtype(dtype), copy=False)
    return out


def _crops_and_distance(case: ReferenceCase, shapes: dict[str, tuple[int, ...]], lead: int) -> tuple[int, int, int]:
    """How badly ``case`` fits ``shapes``: non-batch axes to crop, total size difference, then
    fewer rows (more distinct rows make a more varied batch)."""
    crops = distance = 0
    for name, shape in shapes.items():
        have = np.asarray(case.inputs[name]).shape
        for axis in range(lead, min(len(have), len(shape))):
            crops += int(have[axis] > shape[axis])
            distance += abs(have[axis] - shape[axis])
    rows = max((np.asarray(v).shape[0] for v in case.inputs.values() if np.asarray(v).ndim), default=0) if lead else 0
    return crops, distance, -rows


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``arr`` cropped or tiled (its items repeated in order) to ``shape``, axis by axis."""
    for axis, size in enumerate(shape):
        if arr.shape[axis] == size:
            continue
        if arr.shape[axis] == 0:
            return np.zeros(shape, arr.dtype)
        arr = np.take(arr, np.arange(size) % arr.shape[axis], axis=axis)
    return arr


def sample_inputs(target: ModelTarget, shapes: dict[str, tuple[int, ...]],
                  ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
    """Inputs of ``shapes`` (model shapes) cut from one recorded reference case, in request shape.

    Every axis is cropped or tiled, so the values are real ones and inputs that describe each
    other (tokens and their ``lengths``, ids and their mask) stay paired: drawing each input at
    random broke an LSTM whose lengths exceeded the drawn sequence. The case needing the fewest
    crops of non-batch axes is taken (tiling a sequence keeps its lengths valid, cropping may
    not). ``ranges`` (``GenerateConfig.input_ranges``) clip values the model declared valid.
    """
    lead = 1 if target.batching else 0
    case = min(target.reference, key=lambda c: _crops_and_distance(c, shapes, lead))
    ranges = ranges or {}
    out = {}
    for name, tensor in target.inputs.items():
        arr = _fit(np.asarray(case.inputs[name]), tuple(shapes[name]))
        if name in ranges:
            arr = np.clip(arr, *ranges[name]).astype(arr.dtype, copy=False)
        arr = to_request(arr, tensor, target.batching)
        dtype = wire_dtype(tensor.data_type)
        out[name] = arr if dtype == "BF16" else arr.astype(_client_dtype(dtype), copy=False)
    return out


def edge_inputs(target: ModelTarget, shapes: dict[str, tuple[int, ...]], stored=(),
                ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
    """Request inputs for ``shapes``: the model's own (``GenerateConfig.make_inputs``, stored by
    generate in edge_inputs.npz) where they exist, else cut from the recorded samples."""
    case = stored_for(stored, shapes)
    return request_arrays(target, case) if case is not None else sample_inputs(target, shapes, ranges)


def edge_shapes(target: ModelTarget) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """(label, model shapes) at the min and max of every profile, at batch 1 and max batch;
    a shape several corners share is tried once, with all their names."""
    return edge_shapes_for(target.manifest.spec, target.manifest.profiles, target.max_batch_size)


def _output_shape_problem(target: ModelTarget, got: dict[str, np.ndarray], batch: int | None) -> str | None:
    for name, tensor in target.outputs.items():
        shape = list(got[name].shape)
        dims = [int(d) for d in tensor.dims]
        expected_rank = len(dims) + (1 if target.batching else 0)
        if len(shape) != expected_rank:
            return "output %r has shape %s, expected rank %d" % (name, shape, expected_rank)
        rest = shape[1:] if target.batching else shape
        if target.batching and batch is not None and shape[0] != batch:
            return "output %r has batch %d for a request of batch %d" % (name, shape[0], batch)
        if any(d > 0 and d != s for d, s in zip(dims, rest)):
            return "output %r has shape %s but config.pbtxt declares dims %s" % (name, shape, dims)
    return None


def check_edge_shapes(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    ranges = target.manifest.config.get("input_ranges") or {}
    stored = load_edge_inputs(target.model_dir / EDGE_INPUTS)
    done = []
    for label, shapes in edge_shapes(target):
        batch = shapes[target.manifest.spec.inputs[0].name][0] if target.batching else None
        size = request_bytes(target, shapes)
        if size > MAX_REQUEST_BYTES:
            done.append("%s not sent (%.1f GiB, over the %d MiB cap)"
                        % (label, size / (1 << 30), MAX_REQUEST_BYTES >> 20))
            continue
        try:
            got = infer(session, target, edge_inputs(target, shapes, stored, ranges))
        except Exception as exc:  # noqa: BLE001 - the server's message is the result
            return _result("edge_shapes", FAIL, "%s (%s) failed: %s"
                           % (label, ", ".join("%s %s" % (n, list(s)) for n, s in shapes.items()), short(exc)), t0)
        problem = _output_shape_problem(target, got, batch)
        if problem:
            return _result("edge_shapes", FAIL, "%s: %s" % (label, problem), t0)
        done.append("%s (%s)" % (label, ", ".join("%s %s" % (n, "x".join(map(str, s))) for n, s in shapes.items())))
    return _result("edge_shapes", PASS, "%d shapes served: %s" % (len(done), "; ".join(done)), t0)


def bad_requests(target: ModelTarget) -> list[tuple[str, dict[str, np.ndarray], dict[str, str]]]:
    """(label, arrays, datatype overrides) that a correct server must reject."""
    if not target.reference:
        return []
    good = request_arrays(target, target.reference[0].inputs, 0, 1)
    first = next(iter(target.inputs))
    tensor = target.inputs[first]
    dtype = wire_dtype(tensor.data_type)
    cases = []
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
        return _result("bad_requests", FAIL, "; ".join(problems + rejected), t0)
    return _result("bad_requests", PASS, "%d rejected, server and model still ready: %s" % (len(rejected), " | ".join(rejected)),
                   t0)


def model_stats(session: Session, name: str) -> dict:
    stats = session.http.get_inference_statistics(name)
    for entry in stats.get("model_stats", []):
        if entry.get("name") == name:
            return entry
    return {}


def settled_stats(session: Session, name: str, wait_s: float = 2.0) -> dict:
    """Statistics once two reads agree: counts are updated only after a response is sent."""
    last = model_stats(session, name)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = model_stats(session, name)
        if now.get("inference_count") == last.get("inference_count"):
            return now
        last = now
    return last


def batch_histogram(stats: dict) -> dict[int, int]:
    """Executed batch size -> executions, from /v2/models/<m>/stats batch_stats."""
    return {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in stats.get("batch_stats", [])}


def _batch_items(target: ModelTarget) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
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
    if not target.batching:
        return _result("dynamic_batching", SKIP, "max_batch_size is 0: the model does not batch", t0)
    if not target.config.HasField("dynamic_batching"):
        why = target.manifest.spec.row_dependence
        return _result("dynamic_batching", SKIP, "config.pbtxt has no dynamic_batching%s"
                       % ("; generate left it off: rows are not independent (%s)" % why if why else ""), t0)
    if session.grpc is None:
        return _result("dynamic_batching", SKIP, "no gRPC endpoint", t0)
    items = _batch_items(target)
    if not items:
        return _result("dynamic_batching", FAIL, "reference.npz holds no cases", t0)
    types = {n: wire_dtype(t.data_type) for n, t in target.inputs.items()}
    before = settled_stats(session, target.name)
    mismatches, errors, total = [], [], 0
    for r in range(rounds):
        done = threading.Semaphore(0)
        results: dict[int, tuple] = {}

        def callback(result, error, key, results=results, done=done):
            results[key] = (result, error)
            done.release()

        for j in range(in_flight):
            key = r * in_flight + j
            session.grpc.async_infer(target.name, build_inputs("grpc", items[key % len(items)][0], types),
                                     callback=functools.partial(callback, key=key),
                                     outputs=requested_outputs("grpc", target.outputs),
                                     client_timeout=session.timeout_s)
        deadline = time.monotonic() + session.timeout_s + 5
        for _ in range(in_flight):
            if not done.acquire(timeout=max(0.1, deadline - time.monotonic())):
                return _result("dynamic_batching", FAIL, "%d of %d responses did not arrive within %.0f s"
                               % (in_flight - len(results), in_flight, session.timeout_s), t0)
        for key, (result, error) in sorted(results.items()):
            total += 1
            if error is not None:
                errors.append(short(error))
                continue
            got = read_outputs(result, target)
            for out_name, ref in items[key % len(items)][1].items():
                tol = target.manifest.tolerances.get(out_name)
                why = compare(got[out_name], ref, tol.atol if tol else 0.0, tol.rtol if tol else 0.0)
                if why:
                    mismatches.append("request %d output %r: %s" % (key, out_name, why))
    # the statistics are updated after the responses are sent: wait until they count every request
    deadline = time.monotonic() + 5
    while True:
        after = model_stats(session, target.name)
        inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
        executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
        if inferences >= total or time.monotonic() > deadline:
            break
        time.sleep(0.1)
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
        return _result("dynamic_batching", FAIL, "%s; %s" % (detail, summary), t0)
    if not 0 < executions < inferences:
        return _result("dynamic_batching", FAIL, "no batches formed: %s" % summary, t0)
    return _result("dynamic_batching", PASS, "%s; every response matched its request" % summary, t0)


def _release(version: str | None) -> str | None:
    parts = str(version or "").split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def version_verdict(manifest: Manifest, server_version: str | None) -> tuple[str, str]:
    """(status, detail) for a plan's stamp against the serving container's Triton version.

    Reads the stamp ``build-plan`` writes (``tensorrt_version``, ``compute_capability``,
    ``version_compatible``, ``hardware_compatibility_level``; a ``triton_version`` when known). A plan
    only loads on the TensorRT it was built with (or a newer one of the same major when version
    compatible); the Triton release pins that, so the release is compared first, then TensorRT where
    the pairing is known (``tensorrt/stamp.py`` holds the rules). A staged model's quantization is
    reported alongside.
    """
    trt = manifest.tensorrt
    quantized = "; quantization: %s" % trt.quantization.summary() if trt and trt.quantization else ""
    if manifest.backend != "tensorrt":
        return SKIP, "not a TensorRT plan (%s backend)%s" % (manifest.backend, quantized)
    if trt and not trt.stamp:
        return SKIP, "no plan built yet (TensorRT model %s)%s" % (trt.status.value, quantized)
    stamp = dict(trt.stamp or {}) if trt else {}
    built_triton = stamp.get("triton_version")
    built_trt = stamp.get("tensorrt_version")
    if not server_version:
        return SKIP, "the server does not report its version"
    if _release(built_triton):
        if _release(built_triton) != _release(server_version):
            return FAIL, ("plan built for Triton %s but the server is %s: rebuild the plan in the matching container"
                          % (built_triton, server_version))
        return PASS, "plan built for Triton %s, server %s%s" % (built_triton, server_version, quantized)
    expected = KNOWN_TRT_FOR_TRITON.get(_release(server_version) or "")
    if built_trt and expected:
        problem = tensorrt_problem(built_trt, bool(stamp.get("version_compatible")), expected)
        where = "Triton %s (TensorRT %s)" % (server_version, expected)
        if problem:
            return FAIL, ("%s: rebuild the plan there (aitune-triton build-plan inside the Triton %s container)"
                          % (problem.format(where=where), server_version))
        loads = ("version-compatible plan built with TensorRT %s, Triton %s ships %s (same major; start the server "
                 "with --backend-config=tensorrt,version-compatible=true)" % (built_trt, server_version, expected)
                 if stamp.get("version_compatible") and not str(built_trt).startswith(expected)
                 else "plan built with TensorRT %s, Triton %s ships %s" % (built_trt, server_version, expected))
        return PASS, "%s; stamp: %s%s" % (loads, describe_stamp(stamp), quantized)
    return SKIP, "no usable version stamp (TensorRT %s) for Triton %s" % (built_trt or "unknown", server_version)


def check_version_stamp(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    if target.manifest.backend != "tensorrt":
        return _result("version_stamp", *version_verdict(target.manifest, None), t0)
    server = session.http.get_server_metadata().get("version")
    return _result("version_stamp", *version_verdict(target.manifest, server), t0)


def parse_config_file(path: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton's ModelConfig; UserError naming the file, line and column otherwise."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("cannot read %s: %s" % (path, exc)) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        where = "line %s, column %s" % (exc.GetLine(), exc.GetColumn()) if exc.GetLine() else "somewhere"
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise UserError("%s does not parse as a Triton ModelConfig at %s: %s" % (path, where, reason)) from None


def request_bytes(target: ModelTarget, shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the inputs a request of ``shapes`` (model shapes) carries."""
    total = 0
    for name, tensor in target.inputs.items():
        itemsize = {"BOOL": 1, "INT8": 1, "UINT8": 1, "FP16": 2, "BF16": 2, "INT16": 2}.get(
            wire_dtype(tensor.data_type), 8)
        total += int(np.prod([max(int(d), 1) for d in shapes.get(name, ())], dtype=np.float64)) * itemsize
    return total


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


def check_oversized_shape(target: ModelTarget, session: Session, server_version: str | None = None) -> CheckResult:
    """A request declaring a shape whose byte size overflows must be refused and leave the server up.

    Triton 2.51 segfaults on it (upstream; we cannot patch the server), so this runs last in a run,
    on a server the run started, and a crash is a WARN naming the version rather than a model failure.
    """
    t0 = time.monotonic()
    first = next(iter(target.inputs))
    body = json.dumps({"inputs": [{"name": first, "shape": list(OVERSIZED_SHAPE), "data": [0],
                                   "datatype": wire_dtype(target.inputs[first].data_type)}]}).encode()
    url = session.endpoint.http_url
    status, text = _http(url, "POST", "/v2/models/%s/infer" % target.name, body, session.timeout_s)
    alive = False
    for attempt in range(4):
        if _http(url, "GET", "/v2/health/live", None, 2.0)[0] == 200:
            alive = True
            break
        time.sleep(0.5 * (attempt + 1))
    shape = "x".join(map(str, OVERSIZED_SHAPE))
    if not alive:
        return _result("oversized_shape", WARN, "this Triton version (%s) dies on oversized shapes: a request for %r "
                       "with shape %s crashed the server (an upstream bug); keep such a server behind a proxy that "
                       "rejects huge shapes, or use a release that refuses them" % (server_version or "unknown",
                                                                                   first, shape), t0)
    if status is not None and 400 <= status < 500:
        return _result("oversized_shape", PASS, "shape %s refused with HTTP %d (%s); server still live"
                       % (shape, status, short(Exception(text), 120)), t0)
    return _result("oversized_shape", FAIL, "shape %s for %r was answered with HTTP %s instead of a 4xx"
                   % (shape, first, status), t0)


CheckFn = Callable[[ModelTarget, Session], CheckResult]
CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("ready", check_ready),
    ("metadata", check_metadata),
    ("accuracy_http", lambda t, s: check_accuracy(t, s, "http")),
    ("accuracy_grpc", lambda t, s: check_accuracy(t, s, "grpc")),
    ("edge_shapes", check_edge_shapes),
    ("bad_requests", check_bad_requests),
    ("dynamic_batching", check_dynamic_batching),
    ("version_stamp", check_version_stamp),
)
NEEDS_GRPC = {"accuracy_grpc"}


def run_check(name: str, fn: CheckFn, target: ModelTarget, session: Session) -> CheckResult:
    """Run one check; an exception (a refused connection, a timeout, a bug) becomes a failure."""
    t0 = time.monotonic()
    if name in NEEDS_GRPC and session.grpc is None:
        return CheckResult(name, SKIP, "no gRPC endpoint", 0.0)
    try:
        return fn(target, session)
    except Exception as exc:  # noqa: BLE001 - reported, with the traceback in the debug log
        log.debug("check %s of %s raised:\n%s", name, target.name, traceback.format_exc())
        return CheckResult(name, FAIL, "%s: %s" % (type(exc).__name__, short(exc, 400)), time.monotonic() - t0)
