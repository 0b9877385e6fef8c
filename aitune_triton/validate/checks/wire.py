"""Requests and responses as the inference API carries them: protocol dtypes, request shapes,
tritonclient inputs/outputs over HTTP or gRPC, and output comparison against the reference.

Every comparison goes through ``aitune_triton.numerics.compare``; a reshape'd output comes back
as ``[batch, 1]`` where the reference is ``[batch]``, hence ``reshape_same_size``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Union

import numpy as np
from tritonclient.grpc import model_config_pb2

from aitune_triton.numerics import EXACT, Comparison, Tolerance, compare, to_numpy
from aitune_triton.validate.checks.target import ModelTarget, Session

# what one check request may allocate: a hand-edited max_batch_size of 2**31-1 must not make the
# checks build tens of GiB of input; shapes above this are reported as not sent
MAX_REQUEST_BYTES = 256 << 20
_ITEMSIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "FP16": 2, "BF16": 2, "INT16": 2}

TensorConfig = Union[model_config_pb2.ModelInput, model_config_pb2.ModelOutput]


def wire_dtype(datatype: str | int) -> str:
    """Protocol datatype ("FP32") of a config data_type enum or its name ("TYPE_FP32")."""
    name = datatype if isinstance(datatype, str) else model_config_pb2.DataType.Name(datatype)
    name = name[5:] if name.startswith("TYPE_") else name
    return "BYTES" if name == "STRING" else name


def client_dtype(datatype: str) -> Any:
    """The numpy dtype tritonclient wants for a datatype: BF16 is ml_dtypes.bfloat16 since r26.06
    (float32 truncation before), so ask tritonclient instead of assuming either."""
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(datatype)


def to_request(arr: np.ndarray, tensor: TensorConfig, batching: bool) -> np.ndarray:
    """A reference array in the shape the inference API takes: a tensor declared ``dims: [1]`` with
    ``reshape: { shape: [] }`` is sent as [batch, 1] (the model itself sees [batch])."""
    if tensor.HasField("reshape") and all(d > 0 for d in tensor.dims):
        lead = arr.shape[:1] if batching else ()
        return arr.reshape(tuple(lead) + tuple(int(d) for d in tensor.dims))
    return arr


def build_inputs(protocol: str, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list:
    """InferInputs for ``arrays`` (float32 stands in for BF16, as in reference.npz)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    inputs: list = []
    for name, arr in arrays.items():
        datatype = datatypes[name]
        data = np.ascontiguousarray(arr).astype(client_dtype(datatype), copy=False)
        if protocol == "http":
            http_input = httpclient.InferInput(name, list(data.shape), datatype)
            http_input.set_data_from_numpy(data, binary_data=True)
            inputs.append(http_input)
        else:
            grpc_input = grpcclient.InferInput(name, list(data.shape), datatype)
            grpc_input.set_data_from_numpy(data)
            inputs.append(grpc_input)
    return inputs


def requested_outputs(protocol: str, names: Iterable[str]) -> list:
    if protocol == "http":
        import tritonclient.http as httpclient

        return [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
    import tritonclient.grpc as grpcclient

    return [grpcclient.InferRequestedOutput(n) for n in names]


def read_outputs(result: Any, target: ModelTarget) -> dict[str, np.ndarray]:
    """Every declared output of a response; BF16 arrives as float32, like the reference holds it."""
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
        dtype = wire_dtype(tensor.data_type)
        out[name] = arr if dtype == "BF16" else arr.astype(client_dtype(dtype), copy=False)
    return out


def request_bytes(target: ModelTarget, shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the inputs a request of ``shapes`` (model shapes) carries."""
    total = 0
    for name, tensor in target.inputs.items():
        itemsize = _ITEMSIZE.get(wire_dtype(tensor.data_type), 8)
        total += int(np.prod([max(int(d), 1) for d in shapes.get(name, ())], dtype=np.float64)) * itemsize
    return total


def compare_output(got: np.ndarray, expected: Any, tol: Tolerance | None) -> Comparison:
    """``got`` against the reference within the manifest's tolerance for that output (exact when
    the manifest has none); ``reason`` says why not, naming the count and the worst element."""
    return compare(got, to_numpy(expected), tol or EXACT, reshape_same_size=True)


def short(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, without tritonclient's request-id prefix."""
    message = getattr(exc, "message", None)
    msg = message() if callable(message) else str(exc)
    msg = " ".join(str(msg or type(exc).__name__).split())
    msg = re.sub(r"^\[request id: [^\]]*\] ", "", msg)
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
