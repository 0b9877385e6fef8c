"""Triton Python-backend model serving the PyTorch artifact in this version directory.

Copied verbatim by aitune-triton into each version directory next to ``aitune_runtime.py`` (its
pure helpers) and ``aitune_model.json`` (this model's data); regenerate instead of editing.

Before loading, ``initialize()`` checks that the stub's Python has a torch this artifact loads
with, that the host has the CPU instruction set (and GPU) an AOTInductor package was compiled for
(one line naming what is missing and the fix: such a package dies with an invalid opcode, not an
error, on a CPU without it) and that every artifact file matches the SHA-256 recorded at generate
time. Tensors move through DLPack in both directions, never numpy: the 2.51 stub silently corrupts
numpy I/O under numpy 2, bfloat16 has no numpy dtype, and DLPack keeps GPU inputs on the GPU. The
requests of one execute() call whose non-batch dims match run as one forward and are split back; a
request that is invalid or whose forward fails gets its own error, the others still run.
"""

import importlib.util
import json
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Optional

# The repository may be a committed directory and the stub's interpreter ignores PYTHONDONTWRITEBYTECODE:
# nothing imported from here writes bytecode, and the cache the stub wrote for this file is removed.
sys.dont_write_bytecode = True


def _forget_own_bytecode():
    try:
        cached = importlib.util.cache_from_source(os.path.abspath(__file__))
        os.remove(cached)
        os.rmdir(os.path.dirname(cached))  # only when nothing else is cached there
    except (OSError, NotImplementedError, ValueError):  # nothing cached, read-only repository, or not empty
        pass


_forget_own_bytecode()

try:
    import torch
    import torch.utils.dlpack
    from torch.utils import _pytree as pytree

    TORCH_VERSION: Optional[str] = torch.__version__
except ImportError:  # reported by initialize() with what to install
    TORCH_VERSION = None

import triton_python_backend_utils as pb_utils  # noqa: E402 - after sys.dont_write_bytecode on purpose

if TYPE_CHECKING:  # the type checker sees the package; the stub imports the files either way below
    from . import aitune_runtime as rt
    from . import aitune_eager as eager
    from . import aitune_staging as staging
else:
    try:
        from . import aitune_runtime as rt  # the stub imports this file as "<version>.model"
    except ImportError:  # loaded as a top-level module with the version directory on sys.path
        import aitune_runtime as rt
    if TORCH_VERSION is not None:  # host staging for GPU instances, the eager format (import torch)
        try:
            from . import aitune_eager as eager
            from . import aitune_staging as staging
        except ImportError:
            import aitune_eager as eager
            import aitune_staging as staging

STAGE_TIMES_PERIOD_S = 1.0  # AITUNE_STAGE_TIMES=1: how often the stub logs its per-execute stage times
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


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _export_schema_major():
    try:
        from torch._export.serde.schema import SCHEMA_VERSION
        return int(SCHEMA_VERSION[0])
    except Exception:  # noqa: BLE001  (a private module: absent or moved in some releases)
        return None


def _to_device(program, device):
    """``program`` with its parameters, buffers and the device arguments baked into its graph (e.g. a
    ``torch.arange(..., device=x.device)`` records the export device) on ``device``: without this an
    instance on GPU 1 fails with "index is on cuda:0, different from other tensors on cuda:1"."""
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # older torch: parameters move with .to(); device constants stay
        return program
    return move_to_device_pass(program, device)


def _host_facts(on_gpu, device_id):
    """What this host offers an AOTInductor package (``rt.HostFacts``)."""
    gpu = capability = None
    if on_gpu and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device_id)
        capability = "%d.%d" % torch.cuda.get_device_capability(device_id)
    try:
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001  (older torch)
        cpu_capability = None
    return rt.HostFacts(platform.machine(), rt.cpu_flags_here(), cpu_capability, torch.version.cuda, gpu, capability)


def _load(data, version_dir, device):
    files = data.files
    if data.format == "aoti":
        index = device.index if device.type == "cuda" else -1
        return torch._inductor.aoti_load_package(os.path.join(version_dir, files["aoti"]), device_index=index)
    if data.format == "export":
        program = torch.export.load(os.path.join(version_dir, files["export"]))
        if device.type == "cuda" and device.index:  # exported on cuda:0; its device constants move too
            program = _to_device(program, device)
        return program.module().to(device)
    model = eager.import_user_module(os.path.join(version_dir, files["source"])).get_model()
    if data.max_detections:  # one dict per image, served padded (the state_dict was saved from this wrapper)
        model = eager.PaddedDetections(model, data.max_detections)
    model.load_state_dict(eager.load_state_dict(os.path.join(version_dir, files["state_dict"]), device))
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
        problem = reqs.problem(name, platform.python_version(), TORCH_VERSION,
                               _export_schema_major() if TORCH_VERSION else None,
                               TORCH_VERSION is not None and torch.cuda.is_available(), on_gpu)
        if problem:
            raise pb_utils.TritonModelException(problem)
        problem = reqs.host_problem(name, _host_facts(on_gpu, int(args.get("model_instance_device_id") or 0)), on_gpu)
        if problem:  # before the package is loaded: on a CPU without its ISA it dies with an invalid opcode
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
        else:  # gathering inputs with every core, per stub, made two GPU instances 4-18x slower than one
            torch.set_num_threads(staging.gpu_instance_threads(config, _usable_cpus(), torch.cuda.device_count()))
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
        self.staging = staging.HostStaging(self.device, data.max_batch_size or 1) if on_gpu else None
        self.name = name
        self.stage_times = {} if params.get("AITUNE_STAGE_TIMES") == "1" else None

    def execute(self, requests):
        t0 = time.perf_counter()
        responses = [None] * len(requests)
        groups = {}
        batched = bool(self.data.max_batch_size)
        if self.staging is not None:
            self.staging.begin()
        for i, request in enumerate(requests):
            try:
                feed, batch = self._read(request)
            except RequestError as exc:
                responses[i] = _error_response(str(exc), "INVALID_ARG")
                continue
            key = tuple(tuple(feed[n].shape[1:]) for n in self.names) if batched else i
            groups.setdefault(key, []).append((i, feed, batch))
        t1 = time.perf_counter()
        done = []
        with torch.inference_mode():
            for members in groups.values():
                self._run_group(members, done)
            t2 = time.perf_counter()
            if self.device.type == "cuda":
                # one wait per execute(): the forwards, and the output copies to host, of every group
                torch.cuda.current_stream(self.device).synchronize()
        t3 = time.perf_counter()
        for members, outs in done:
            self._respond(members, outs, responses)
        if self.stage_times is not None:
            self._account(len(requests), t0, t1, t2, t3, time.perf_counter())
        return responses

    def finalize(self):
        self.graphs.clear()
        self.staging = None
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
            if not binding.ranges and x.dim() == 1:  # a scalar input, sent as [1] (Triton has no scalars)
                x = x.reshape(())
            if binding.batched:
                if batch is not None and x.shape[0] != batch:
                    raise RequestError("input %r has batch %d but another input has %d" % (name, x.shape[0], batch))
                batch = x.shape[0]
            feed[name] = x
        return feed, batch

    def _run_group(self, members, done):
        """Queue one group's forward; appends ``(members, per-request outputs or the exception)`` to ``done``."""
        try:
            outs = self._forward_group([m[1] for m in members], [m[2] for m in members])
        except Exception as exc:
            if len(members) > 1:  # find the request(s) at fault; the others still get answers
                for member in members:
                    self._run_group([member], done)
                return
            done.append((members, exc))
            return
        done.append((members, outs))

    def _respond(self, members, outs, responses):
        if not isinstance(outs, Exception):
            try:
                built = [[pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(y.contiguous()))
                          for (name, _), y in zip(self.data.outputs, per)] for per in outs]
            except Exception as exc:
                outs = exc
            else:
                for (i, _, _), tensors in zip(members, built):
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                return
        for i, _, _ in members:
            responses[i] = _error_response("forward failed: %s" % _short(outs), "INTERNAL")

    def _forward_group(self, feeds, sizes):
        """One forward over the requests of a group. On a GPU instance with a batching model, the batch is
        assembled straight into the forward's input buffers (a captured graph's static inputs when one
        fits): host inputs through the pinned staging, GPU inputs by one concatenation; outputs of host
        requests come back in one device-to-host copy per output, split into per-request views."""
        data = self.data
        if self.staging is None or not data.max_batch_size or not all(b.batched for b in data.inputs):
            return self._forward_plain(feeds, sizes)
        total = sum(sizes)
        target = rt.pad_target(data.graph_batches, total) if self.pad else total
        host = all(f[n].device.type == "cpu" for f in feeds for n in self.names)
        shapes = tuple((target,) + tuple(feeds[0][n].shape[1:]) for n in self.names)
        entry = self.graphs.get(shapes) if self.use_graphs else None
        if entry is not None:
            dst = entry[0]
        else:
            dst = {n: torch.empty(s, dtype=feeds[0][n].dtype, device=self.device) for n, s in zip(self.names, shapes)}
        for name in self.names:
            parts = [f[name] for f in feeds]
            if host:
                self.staging.upload(name, parts, dst[name])
            elif len(parts) == 1:
                dst[name][:total].copy_(parts[0])
            else:
                torch.cat([p.to(self.device) for p in parts], out=dst[name][:total])
            if target > total:
                staging.fill_padding(dst[name], total)
        if entry is not None:
            entry[2].replay()
            flat, static = entry[1], True
        else:
            flat, static = self._forward(dst)
        if len(flat) != len(data.outputs):
            raise RuntimeError("the model returned %d outputs, expected %d" % (len(flat), len(data.outputs)))
        if host:
            flat = [self.staging.download(name, y[:total]) for (name, _), y in zip(data.outputs, flat)]
        else:  # static outputs are overwritten by the next replay
            flat = [y[:total].clone() if static else y[:total] for y in flat]
        return list(zip(*[y.split(sizes) for y in flat]))

    def _forward_plain(self, feeds, sizes):
        """CPU instances, models without a batch axis and models with unbatched inputs."""
        batch = {}
        for name in self.names:
            parts = [f[name] for f in feeds]
            batch[name] = torch.cat([p.to(self.device) for p in parts]) if len(parts) > 1 else parts[0].to(self.device)
        batched = bool(self.data.max_batch_size)
        total = sum(sizes) if batched else None
        if self.pad:
            target = rt.pad_target(self.data.graph_batches, total)
            if target > total:
                batch = {b.name: _rows(batch[b.name], target) if b.batched else batch[b.name]
                         for b in self.data.inputs}
        flat, static = self._forward(batch)
        if len(flat) != len(self.data.outputs):
            raise RuntimeError("the model returned %d outputs, expected %d" % (len(flat), len(self.data.outputs)))
        flat = [y.clone() if static else y for y in flat]  # the next replay overwrites the static outputs
        if not batched:  # a scalar output leaves as [1]: Triton has no scalar tensors
            return [[y.reshape(1) if y.dim() == 0 else y for y in flat]]
        return list(zip(*[y[:total].split(sizes) for y in flat]))

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
        """``(outputs, static)``: static outputs belong to a captured graph and change at its next replay."""
        if not self.use_graphs:
            return self._call(batch), False
        key = tuple(tuple(batch[n].shape) for n in self.names)
        entry = self.graphs.get(key)
        if entry is None and len(self.graphs) < self.data.max_graphs:
            entry = self._capture(key, batch)
            if entry is not None:  # its static inputs were cloned from this batch
                entry[2].replay()
                return entry[1], True
        if entry is None:
            return self._call(batch), False
        static_in, static_out, graph = entry
        for name in self.names:
            if static_in[name].data_ptr() != batch[name].data_ptr():
                static_in[name].copy_(batch[name])
        graph.replay()
        return static_out, True

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

    def _account(self, requests, t0, t1, t2, t3, t4):
        """AITUNE_STAGE_TIMES=1: where execute() spends its time, logged as per-call averages about once a
        second (read: requests to tensors; launch: gathers, copies and forwards queued; gpu wait: what the
        GPU still had to do; respond: response objects)."""
        s = self.stage_times
        for k, v in (("read", t1 - t0), ("launch", t2 - t1), ("gpu_wait", t3 - t2), ("respond", t4 - t3)):
            s[k] = s.get(k, 0.0) + v
        s["calls"] = s.get("calls", 0) + 1
        s["requests"] = s.get("requests", 0) + requests
        s.setdefault("since", t0)
        if s["calls"] >= 20 and t4 - s["since"] >= STAGE_TIMES_PERIOD_S:
            n = s["calls"]
            _log("info", "aitune stage times (%s) over %d executes: %.1f requests each; read %.0f us, launch %.0f us, "
                 "gpu wait %.0f us, respond %.0f us" % (self.name, n, s["requests"] / n, 1e6 * s["read"] / n,
                                                        1e6 * s["launch"] / n, 1e6 * s["gpu_wait"] / n,
                                                        1e6 * s["respond"] / n))
            s.clear()
