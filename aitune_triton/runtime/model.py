"""Triton Python-backend model serving the PyTorch artifact in this version directory.

Copied verbatim by aitune-triton into each version directory next to ``aitune_runtime.py`` (its
pure helpers) and ``aitune_model.json`` (this model's data); regenerate instead of editing.

Before loading, ``initialize()`` checks that the stub's Python has a torch this artifact loads
with (one line naming what is missing and the fix) and that every artifact file matches the
SHA-256 recorded at generate time. Tensors move through DLPack in both directions, never numpy:
the 2.51 stub silently corrupts numpy I/O under numpy 2, bfloat16 has no numpy dtype, and DLPack
keeps GPU inputs on the GPU. The requests of one execute() call whose non-batch dims match run as
one forward and are split back; a request that is invalid or whose forward fails gets its own
error, the others still run.
"""

import importlib.util
import json
import os
import platform
import sys
import uuid

try:
    import torch
    import torch.utils.dlpack
    from torch.utils import _pytree as pytree
except ImportError:  # reported by initialize() with what to install
    torch = None

import triton_python_backend_utils as pb_utils

try:
    from . import aitune_runtime as rt  # the stub imports this file as "<version>.model"
except ImportError:  # loaded as a top-level module with the version directory on sys.path
    import aitune_runtime as rt

DTYPE_NAMES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")


class RequestError(Exception):
    """A request the model cannot take; answered with INVALID_ARG while the others run."""


def _log(level, msg):
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        getattr(logger, "log_" + level)(msg)
    else:
        print(msg, file=sys.stderr, flush=True)


def _error_response(msg, code):
    try:
        error = pb_utils.TritonError(msg, getattr(pb_utils.TritonError, code))
    except (AttributeError, TypeError):
        error = pb_utils.TritonError(msg)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _short(exc):
    lines = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, lines[0][:500] if lines else "")


def _rows(x, n):
    """``n`` rows of ``x``: its own rows repeated in order (padding with real rows keeps masks valid)."""
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n] if reps > 1 else x[:n]


def _export_schema_major():
    try:
        from torch._export.serde.schema import SCHEMA_VERSION
        return int(SCHEMA_VERSION[0])
    except Exception:  # noqa: BLE001  (a private module: absent or moved in some releases)
        return None


def _load(data, version_dir, device):
    files = data.files
    if data.format == "aoti":
        index = device.index if device.type == "cuda" else -1
        return torch._inductor.aoti_load_package(os.path.join(version_dir, files["aoti"]), device_index=index)
    if data.format == "export":
        return torch.export.load(os.path.join(version_dir, files["export"])).module().to(device)
    name = "aitune_user_model_%s" % uuid.uuid4().hex[:8]
    spec = importlib.util.spec_from_file_location(name, os.path.join(version_dir, files["source"]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_model()
    state = torch.load(os.path.join(version_dir, files["state_dict"]), map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = args.get("model_name", "?")
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        try:
            data = rt.ModelData.load(version_dir)
        except rt.DataError as exc:
            raise pb_utils.TritonModelException("model %s: %s" % (name, exc)) from None
        on_gpu = args.get("model_instance_kind") == "GPU"
        if ("cuda" if on_gpu else "cpu") != data.artifact_device:
            if data.format == "aoti":
                raise pb_utils.TritonModelException(
                    "the AOTInductor package of model %r was compiled for %s but instance %s is KIND_%s; regenerate "
                    "for device %s or set instance_group kind to KIND_%s"
                    % (name, data.artifact_device, args.get("model_instance_name"),
                       "GPU" if on_gpu else "CPU", "cuda" if on_gpu else "cpu",
                       "GPU" if data.artifact_device == "cuda" else "CPU"))
            _log("warn", "the %s artifact was checked on %s; moving it to %s"
                 % (data.format, data.artifact_device, "cuda" if on_gpu else "cpu"))
        reqs = data.requirements
        problem = reqs.problem(name, platform.python_version(), torch.__version__ if torch else None,
                               _export_schema_major() if torch else None,
                               bool(torch) and torch.cuda.is_available(), on_gpu)
        if problem:
            raise pb_utils.TritonModelException(problem)
        note = reqs.python_note(platform.python_version())
        if note:
            _log("warn", "model %s: %s" % (name, note))
        self.data = data
        self.dtypes = {n: getattr(torch, n) for n in DTYPE_NAMES}
        params = rt.config_parameters(config)
        if params.get("TORCH_NUM_THREADS"):
            torch.set_num_threads(int(params["TORCH_NUM_THREADS"]))
        elif not on_gpu:
            torch.set_num_threads(rt.instance_threads(config, os.cpu_count() or 1))
        if on_gpu:
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        problem = rt.artifact_problem(version_dir, data)
        if problem:
            raise pb_utils.TritonModelException("model %s: %s" % (name, problem))
        try:
            self.model = _load(data, version_dir, self.device)
        except Exception as exc:
            raise pb_utils.TritonModelException("cannot load the %s artifact from %s: %s"
                                                % (data.format, version_dir, _short(exc))) from exc
        self.names = data.input_names
        self.use_graphs = data.cuda_graphs and on_gpu
        self.pad = bool(data.max_batch_size) and (on_gpu if data.pad_to_buckets is None else data.pad_to_buckets)
        self.graphs = {}
        self.pinned = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        batched = bool(self.data.max_batch_size)
        for i, request in enumerate(requests):
            try:
                feed, batch = self._read(request)
            except RequestError as exc:
                responses[i] = _error_response(str(exc), "INVALID_ARG")
                continue
            key = tuple(tuple(feed[n].shape[1:]) for n in self.names) if batched else i
            groups.setdefault(key, []).append((i, feed, batch))
        with torch.inference_mode():
            for members in groups.values():
                self._run_group(members, responses)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        return responses

    def finalize(self):
        self.graphs.clear()
        self.model = None

    def _read(self, request):
        feed, batch = {}, None
        for binding in self.data.inputs:
            name = binding.name
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError("input %r is missing" % name)
            x = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
            want = self.dtypes[binding.dtype]
            if x.dtype != want:
                if not (want == torch.bool and x.dtype == torch.uint8):
                    raise RequestError("input %r has dtype %s, the model takes %s" % (name, x.dtype, binding.dtype))
                x = x.view(torch.bool)
            problem = rt.shape_problem(binding, tuple(x.shape))
            if problem:
                raise RequestError(problem)
            if binding.batched:
                if batch is not None and x.shape[0] != batch:
                    raise RequestError("input %r has batch %d but another input has %d" % (name, x.shape[0], batch))
                batch = x.shape[0]
            feed[name] = x
        return feed, batch

    def _run_group(self, members, responses):
        try:
            outs = self._forward_group([m[1] for m in members], [m[2] for m in members])
            built = [[pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(y.contiguous()))
                      for (name, _), y in zip(self.data.outputs, per)] for per in outs]
        except Exception as exc:
            if len(members) > 1:  # find the request(s) at fault; the others still get answers
                for member in members:
                    self._run_group([member], responses)
                return
            responses[members[0][0]] = _error_response("forward failed: %s" % _short(exc), "INTERNAL")
            return
        for (i, _, _), tensors in zip(members, built):
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _forward_group(self, feeds, sizes):
        batch = {}
        for name in self.names:
            parts = [f[name] for f in feeds]
            if self.device.type == "cuda" and all(p.device.type == "cpu" for p in parts):
                batch[name] = self._upload(name, parts)
            elif len(parts) > 1:
                batch[name] = torch.cat([p.to(self.device) for p in parts])
            else:
                batch[name] = parts[0].to(self.device)
        batched = bool(self.data.max_batch_size)
        total = sum(sizes) if batched else None
        if self.pad:
            target = rt.pad_target(self.data.graph_batches, total)
            if target > total:
                batch = {b.name: _rows(batch[b.name], target) if b.batched else batch[b.name]
                         for b in self.data.inputs}
        flat = self._forward(batch)
        if len(flat) != len(self.data.outputs):
            raise RuntimeError("the model returned %d outputs, expected %d" % (len(flat), len(self.data.outputs)))
        if not batched:
            return [flat]
        return list(zip(*[y[:total].split(sizes) for y in flat]))

    def _upload(self, name, parts):
        """Gather CPU request tensors into one pinned buffer and copy it to the GPU in one
        asynchronous transfer (execute() synchronises before the buffer is reused)."""
        max_batch = self.data.max_batch_size
        if not max_batch:
            return parts[0].to(self.device)
        rows = sum(p.shape[0] for p in parts)
        key = (name, tuple(parts[0].shape[1:]), parts[0].dtype)
        buf = self.pinned.get(key)
        if buf is None or buf.shape[0] < rows:
            if len(self.pinned) >= 64:
                self.pinned.clear()
            capacity = max(rows, max_batch)
            buf = torch.empty((capacity,) + key[1], dtype=key[2]).pin_memory()
            self.pinned[key] = buf
        if len(parts) > 1:
            torch.cat(parts, out=buf[:rows])
        else:
            buf[:rows].copy_(parts[0])
        return buf[:rows].to(self.device, non_blocking=True)

    def _call(self, batch):
        if self.data.flat_io:
            return list(self.model(*[batch[n] for n in self.names]))
        args, kwargs = [], {}
        for binding in self.data.inputs:
            if binding.kind == "arg":
                args.append(batch[binding.name])
            else:
                kwargs[binding.key] = batch[binding.name]
        return pytree.tree_leaves(self.model(*args, **kwargs))

    def _forward(self, batch):
        if not self.use_graphs:
            return self._call(batch)
        key = tuple(tuple(batch[n].shape) for n in self.names)
        entry = self.graphs.get(key)
        if entry is None and len(self.graphs) < self.data.max_graphs:
            entry = self._capture(key, batch)
        if entry is None:
            return self._call(batch)
        static_in, static_out, graph = entry
        for name in self.names:
            static_in[name].copy_(batch[name])
        graph.replay()
        return [y.clone() for y in static_out]  # the next replay overwrites the static outputs

    def _capture(self, key, batch):
        static_in = {n: batch[n].clone() for n in self.names}
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(2):  # lazy initialisation (handles, autotuning) must happen outside capture
                    self._call(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = self._call(static_in)
        except Exception as exc:
            self.use_graphs = False
            _log("warn", "CUDA graph capture failed for shapes %s, running without graphs: %s" % (key, _short(exc)))
            return None
        self.graphs[key] = (static_in, static_out, graph)
        _log("info", "captured a CUDA graph for input shapes %s" % (key,))
        return self.graphs[key]
