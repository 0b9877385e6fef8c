"""Triton Python-backend model running the user's pre- or post-processing hook of a raw-data pipeline.

Copied verbatim by aitune-triton into the version directory of ``<name>_pre`` and ``<name>_post``
as ``model.py``, next to ``user_model.py`` (a copy of the user's model.py, whose SHA-256 is checked
here before it is imported) and ``aitune_pipeline.json`` (the role, the hook and the tensors).

Both hooks are row-wise: the preprocess hook maps one raw row (``bytes``: UTF-8 text or an encoded
image) to a dict of the model's input tensors for that row (no batch axis); the postprocess hook
maps one row of the model's outputs (a dict of arrays, no batch axis) to a dict of values (arrays,
numbers, ``str``/``bytes`` or lists of them). A request's rows are processed one by one and stacked,
so the batch any request or dynamic batch forms is served the same way. A row the hook cannot
process fails its own request with the hook's message; the other requests still run. Numeric tensors
move through DLPack (the 2.51 stub's numpy I/O is wrong under numpy 2); BYTES tensors go through
numpy object arrays, the only form Triton's Python backend has for them.
"""

import hashlib
import importlib.util
import json
import os
import sys

sys.dont_write_bytecode = True

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.dlpack  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

DATA_FILE = "aitune_pipeline.json"
USER_FILE = "user_model.py"
RAW = "raw"


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _as_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    return str(value).encode("utf-8")


def _row_array(value, dtype):
    """A hook's value for one row as an array of ``dtype`` (``"bytes"``: an object array of bytes)."""
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    if dtype == "bytes":
        items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        return np.array([v.encode("utf-8") if isinstance(v, str) else _as_bytes(v)
                         for v in np.asarray(items, dtype=object).reshape(-1)], dtype=object)
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return arr.astype(np.dtype(dtype), copy=False)


def _stack(rows, name):
    shapes = {r.shape for r in rows}
    if len(shapes) > 1:
        raise ValueError("the rows of one request give %s of different shapes %s; send them in separate requests "
                         "or make the hook return one shape" % (name, sorted(shapes)))
    return np.stack(rows)


def _to_tensor(name, arr):
    if arr.dtype == object:
        return pb_utils.Tensor(name, arr)
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(arr))))


def _from_tensor(tensor):
    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, DATA_FILE)) as f:
            self.data = json.load(f)
        user = os.path.join(here, USER_FILE)
        if _sha256(user) != self.data["user_sha256"]:
            raise pb_utils.TritonModelException("%s does not match the SHA-256 recorded at generate time; regenerate "
                                                "the pipeline" % user)
        spec = importlib.util.spec_from_file_location("aitune_pipeline_user_%s" % self.data["role"], user)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: @dataclass and pickle look the module up there
        sys.path.insert(0, here)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(spec.name, None)
            raise
        finally:
            sys.path.remove(here)
        self.fn = getattr(module, self.data["hook"])()
        self.role = self.data["role"]
        self.outputs = [(o["name"], o["dtype"]) for o in self.data["outputs"]]
        self.inputs = list(self.data["inputs"])

    def _rows_in(self, request):
        if self.role == "pre":
            raw = pb_utils.get_input_tensor_by_name(request, RAW).as_numpy()
            return [_as_bytes(v) for v in raw.reshape(raw.shape[0], -1)[:, 0]]
        arrays = {name: _from_tensor(pb_utils.get_input_tensor_by_name(request, name)) for name in self.inputs}
        batch = next(iter(arrays.values())).shape[0]
        return [{name: arr[i] for name, arr in arrays.items()} for i in range(batch)]

    def _run(self, request):
        rows = []
        for i, row in enumerate(self._rows_in(request)):
            if self.role == "pre" and not row:
                raise ValueError("row %d is empty; send non-empty raw data" % i)
            try:
                result = self.fn(row)
            except Exception as exc:  # the hook's own message, for this request only
                raise ValueError("%s hook failed on row %d: %s: %s" % (self.role, i, type(exc).__name__, exc)) \
                    from None
            if not isinstance(result, dict) or set(result) != {n for n, _ in self.outputs}:
                raise ValueError("%s hook returned %s for row %d; expected a dict with keys %s" % (
                    self.role, sorted(result) if isinstance(result, dict) else type(result).__name__, i,
                    [n for n, _ in self.outputs]))
            rows.append({name: _row_array(result[name], dtype) for name, dtype in self.outputs})
        return [_to_tensor(name, _stack([r[name] for r in rows], name)) for name, _ in self.outputs]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except Exception as exc:  # one bad request fails alone
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)[:1000])))
        return responses
