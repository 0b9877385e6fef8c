"""A stand-in for TensorRT 10's Python API, for tests on machines where TensorRT cannot be installed.

Put ``tests/tensorrt/fake_tensorrt`` on ``PYTHONPATH`` and ``import tensorrt`` finds this module; the
package's real code then drives it exactly as it drives TensorRT: Polygraphy's own loaders
(``NetworkFromOnnxPath``, ``CreateConfig``, ``EngineBytesFromNetwork``, ``EngineFromBytes``) call the
builder, network, parser, config, profile and runtime classes below, and the plan check calls the
execution context's name-based API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

What it does instead of TensorRT's work, and says so:

* the ONNX "parser" reads the graph's inputs and outputs with the ``onnx`` package (no layers);
* the "builder" validates the optimization profiles against the network as TensorRT does, and
  serializes a plan that is a JSON header (I/O, profiles, flags) followed by the ONNX bytes;
* the "engine" reports every I/O tensor in host memory (``TensorLocation.HOST``: there is no GPU),
  and ``execute_async_v3`` runs the ONNX on ONNX Runtime's CPU provider, reading and writing the
  addresses it was given; with the FP16 flag the outputs are rounded through float16.

Environment switches, read when each call happens, simulate the other machines and failures:

* ``FAKE_TENSORRT_GPU=0``: no usable GPU; ``Builder()`` fails as TensorRT's does (CUDA init error);
* ``FAKE_TENSORRT_FAIL=parse`` / ``build``: the parser reports an error / the build returns None;
* ``FAKE_TENSORRT_OUTPUT_OFFSET=<float>``: the engine adds this to every float output (a plan that
  computes the wrong thing, for the accuracy check).
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import sys

import numpy as np

__version__ = "10.9.0.34"

_MAGIC = b"FAKETRT1"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


class _Enum(enum.IntEnum):
    def __str__(self) -> str:
        return "%s.%s" % (type(self).__name__, self.name)


def _enum(name: str, members: list[str]) -> type[_Enum]:
    return _Enum(name, [(m, i) for i, m in enumerate(members)])


DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4",
                              "FP4"])
TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
TensorLocation = _enum("TensorLocation", ["DEVICE", "HOST"])
MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM",
                                          "TACTIC_DRAM", "TACTIC_SHARED_MEMORY"])
HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
BuilderFlag = _enum("BuilderFlag", ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
                                    "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS",
                                    "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
                                    "BF16", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
                                    "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY"])
NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
OnnxParserFlag = _enum("OnnxParserFlag", ["NATIVE_INSTANCENORM", "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA"])
PreviewFeature = _enum("PreviewFeature", ["PROFILE_SHARING_0806", "ALIASED_PLUGIN_IO_10_03"])
DeviceType = _enum("DeviceType", ["GPU", "DLA"])
ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
TacticSource = _enum("TacticSource", ["CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS",
                                      "JIT_CONVOLUTIONS"])
QuantizationFlag = _enum("QuantizationFlag", ["CALIBRATE_BEFORE_FUSION"])
LayerType = _enum("LayerType", ["CONVOLUTION", "SHAPE"])
EngineCapability = _enum("EngineCapability", ["STANDARD", "SAFETY", "DLA_STANDALONE"])
ExecutionContextAllocationStrategy = _enum("ExecutionContextAllocationStrategy",
                                           ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])

# ONNX TensorProto element type -> (TensorRT DataType, numpy dtype)
_ONNX_TYPES = {1: (DataType.FLOAT, np.float32), 10: (DataType.HALF, np.float16), 7: (DataType.INT64, np.int64),
               6: (DataType.INT32, np.int32), 3: (DataType.INT8, np.int8), 2: (DataType.UINT8, np.uint8),
               9: (DataType.BOOL, np.bool_)}
_NUMPY = {trt: dtype for trt, dtype in _ONNX_TYPES.values()}


class ILogger:
    class Severity(_Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:
        pass


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity, msg) -> None:
        if severity <= self.min_severity:
            print("[fake TRT] [%s] %s" % (severity.name[0], msg), file=sys.stderr)


def init_libnvinfer_plugins(logger, namespace) -> bool:
    return True


class Dims(tuple):
    pass


class ITensor:
    def __init__(self, name: str, dtype, shape) -> None:
        self.name, self.dtype, self.shape = name, dtype, Dims(shape)
        self.is_shape_tensor = False
        self.is_network_input = True
        self.location = TensorLocation.DEVICE


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.name = "fake network"
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self.onnx_bytes = b""

    def get_flag(self, flag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return 0

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def __iter__(self):
        return iter(())


class ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def code(self) -> int:
        return 1

    def __str__(self) -> str:
        return "In node -1 (parseGraph): INVALID_NODE: %s" % self._desc


def _dims(value_info) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger) -> None:
        self.network, self.logger = network, logger
        self.flags = 1 << int(OnnxParserFlag.NATIVE_INSTANCENORM)
        self._errors: list[ParserError] = []

    def clear_flag(self, flag) -> None:
        self.flags &= ~(1 << int(flag))

    def set_flag(self, flag) -> None:
        self.flags |= 1 << int(flag)

    def set_builder_config(self, config) -> bool:
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        if _env("FAKE_TENSORRT_FAIL") == "parse":
            self._errors.append(ParserError("fake parse failure (FAKE_TENSORRT_FAIL=parse)"))
            return False
        model = onnx.load(path)
        initializers = {i.name for i in model.graph.initializer}
        for value, into in [(v, self.network._inputs) for v in model.graph.input if v.name not in initializers] + \
                [(v, self.network._outputs) for v in model.graph.output]:
            elem = value.type.tensor_type.elem_type
            if elem not in _ONNX_TYPES:
                self._errors.append(ParserError("%s has ONNX type %d, which the fake does not support"
                                                % (value.name, elem)))
                return False
            into.append(ITensor(value.name, _ONNX_TYPES[elem][0], _dims(value)))
        self.network.onnx_bytes = model.SerializeToString()
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str):
        return [Dims(s) for s in self.shapes.get(input, ((), (), ()))]

    def set_shape_input(self, input: str, min, opt, max) -> None:
        self.set_shape(input, min, opt, max)

    def __bool__(self) -> bool:
        return True


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = json.loads(bytes(data).decode()) if data else []

    def combine(self, other, ignore_mismatch: bool) -> bool:
        self.entries = self.entries + [e for e in other.entries if e not in self.entries]
        return True

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps(self.entries).encode())


class IBuilderConfig:
    def __init__(self) -> None:
        self._flags: set = set()
        self._pools: dict = {}
        self.profiles: list[IOptimizationProfile] = []
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.engine_capability = EngineCapability.STANDARD
        self.DLA_core = -1
        self.default_device_type = DeviceType.GPU
        self.max_aux_streams = -1
        self._cache: ITimingCache | None = None

    def set_flag(self, flag) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self._flags

    def set_preview_feature(self, feature, enable: bool) -> None:
        pass

    def get_preview_feature(self, feature) -> bool:
        return False

    def get_quantization_flag(self, flag) -> bool:
        return False

    def get_tactic_sources(self) -> int:
        return 0

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self._pools[pool] = int(size)

    def get_memory_pool_limit(self, pool) -> int:
        return self._pools.get(pool, 1 << 34)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache


class Builder:
    def __init__(self, logger) -> None:
        if _env("FAKE_TENSORRT_GPU", "1") == "0":
            logger.log(ILogger.Severity.ERROR, "CUDA initialization failure with error: 100. Please check your CUDA "
                                               "installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux")
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self.logger = logger

    platform_has_fast_fp16 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        self.logger.log(ILogger.Severity.ERROR, msg)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        if _env("FAKE_TENSORRT_FAIL") == "build":
            self._error("IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (fake build failure, "
                        "FAKE_TENSORRT_FAIL=build)")
            return None
        dynamic = [t.name for t in network._inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            self._error("Error Code 4: API Usage Error (Network has dynamic or shape inputs, but no optimization "
                        "profile has been defined.)")
            return None
        for index, profile in enumerate(config.profiles):
            for t in network._inputs:
                if t.name not in profile.shapes:
                    self._error("Error Code 4: API Usage Error (%s: dynamic input is missing dimensions in profile "
                                "%d.)" % (t.name, index))
                    return None
                for shape in profile.shapes[t.name]:
                    if len(shape) != len(t.shape) or \
                            any(d != -1 and d != s for d, s in zip(t.shape, shape, strict=True)):
                        self._error("Error Code 4: API Usage Error (%s: profile %d shape %s does not match the "
                                    "network's %s)" % (t.name, index, list(shape), list(t.shape)))
                        return None
        if config._cache is not None:
            config._cache.entries.append("fake tactic for %s" % ",".join(t.name for t in network._inputs))
        header = {
            "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._inputs],
            "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._outputs],
            "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.shapes.items()}
                         for p in config.profiles],
            "flags": sorted(f.name for f in config._flags),
            "hardware_compatibility_level": config.hardware_compatibility_level.name,
        }
        text = json.dumps(header).encode()
        return IHostMemory(_MAGIC + len(text).to_bytes(8, "little") + text + network.onnx_bytes)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        self._header, self._onnx = header, onnx_bytes
        self._io = {name: (TensorIOMode.INPUT, DataType[dtype], tuple(shape))
                    for name, dtype, shape in header["inputs"]}
        self._io.update({name: (TensorIOMode.OUTPUT, DataType[dtype], tuple(shape))
                         for name, dtype, shape in header["outputs"]})
        self.hardware_compatibility_level = HardwareCompatibilityLevel[header["hardware_compatibility_level"]]
        self.name = "fake engine"

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def num_optimization_profiles(self) -> int:
        return max(len(self._header["profiles"]), 1)

    def get_tensor_name(self, index: int) -> str:
        return list(self._io)[index]

    def get_tensor_mode(self, name: str):
        return self._io[name][0] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str):
        return self._io[name][1]

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._io[name][2])

    def get_tensor_location(self, name: str):
        return TensorLocation.HOST  # the fake executes on the host (see the module docstring)

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [Dims(s) for s in self._header["profiles"][profile_index][name]]

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def create_execution_context(self, strategy=None) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        import onnxruntime

        self.engine = engine
        self.active_optimization_profile = 0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._session = onnxruntime.InferenceSession(engine._onnx, providers=["CPUExecutionProvider"])

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            return False
        self.active_optimization_profile = profile_index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        profiles = self.engine._header["profiles"]
        if profiles:
            lo, _, hi = profiles[self.active_optimization_profile][name]
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                print("[fake TRT] [E] IExecutionContext::setInputShape: Error Code 3: API Usage Error (%s: shape %s "
                      "is outside profile %d's range %s..%s)" % (name, list(shape), self.active_optimization_profile,
                                                                 lo, hi), file=sys.stderr)
                return False
        self._shapes[name] = shape
        return True

    def _feed(self, read) -> dict[str, np.ndarray]:
        feed = {}
        for name, (mode, dtype, _) in self.engine._io.items():
            if mode == TensorIOMode.INPUT:
                feed[name] = read(name, _NUMPY[dtype], self._shapes[name])
        return feed

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feed), strict=True))

    def get_tensor_shape(self, name: str) -> Dims:
        mode = self.engine.get_tensor_mode(name)
        if mode == TensorIOMode.INPUT:
            return Dims(self._shapes.get(name, self.engine.get_tensor_shape(name)))
        if any(n not in self._shapes for n, (m, _, _) in self.engine._io.items() if m == TensorIOMode.INPUT):
            return self.engine.get_tensor_shape(name)
        return Dims(self._run(self._feed(lambda n, dtype, shape: np.zeros(shape, dtype)))[name].shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._addresses[name] = int(memory)
        return True

    def infer_shapes(self) -> list[str]:
        return []

    def all_binding_shapes_specified(self) -> bool:
        return all(n in self._shapes for n, (m, _, _) in self.engine._io.items() if m == TensorIOMode.INPUT)

    def execute_async_v3(self, stream_handle: int) -> bool:
        def view(name: str, dtype, shape) -> np.ndarray:
            count = int(np.prod(shape)) if len(shape) else 1
            buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(self._addresses[name])
            return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)

        missing = [n for n in self.engine._io if n not in self._addresses]
        if missing:
            print("[fake TRT] [E] IExecutionContext::enqueueV3: Error Code 3: API Usage Error (no address set for %s)"
                  % missing, file=sys.stderr)
            return False
        outputs = self._run({k: v.copy() for k, v in self._feed(view).items()})
        offset = float(_env("FAKE_TENSORRT_OUTPUT_OFFSET", "0") or 0)
        half = BuilderFlag.FP16.name in self.engine._header["flags"]
        for name, (mode, dtype, _) in self.engine._io.items():
            if mode != TensorIOMode.OUTPUT:
                continue
            value = outputs[name]
            if value.dtype.kind == "f":
                if half:
                    value = value.astype(np.float16).astype(value.dtype)
                value = value + np.asarray(offset, value.dtype)
            view(name, _NUMPY[dtype], value.shape)[...] = value
        return True


class Runtime:
    def __init__(self, logger) -> None:
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized) -> ICudaEngine | None:
        data = bytes(serialized)
        if not data.startswith(_MAGIC):
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                                    "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
            return None
        size = int.from_bytes(data[8:16], "little")
        return ICudaEngine(json.loads(data[16:16 + size]), data[16 + size:])
