"""A built plan read back: its I/O as TensorRT reports it and what it is tied to.

``engine_io_of`` reads a deserialized engine with the TensorRT 10 name-based API
(``num_io_tensors``, ``get_tensor_*``); ``PlanStamp`` records the TensorRT version, GPU and
compatibility the plan needs; ``PlanArtifact`` is what a build returns (and what the build child
sends back to its parent).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitune_triton.errors import ModelError, UserError

if TYPE_CHECKING:  # the type checker reads TensorRT's API from tensorrt-stubs; at run time it is imported lazily
    import tensorrt

    from aitune_triton.tensorrt.plan_check import PlanCheck

log = logging.getLogger(__name__)

# TensorRT DataType member name -> the dtype names used in spec.py
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of a plan as TensorRT reports it: ``shape`` has -1 for dynamic axes and
    ``profile_shapes[i]`` is (min, opt, max) of profile ``i`` (inputs only)."""

    name: str
    mode: str
    dtype: str
    shape: tuple[int, ...]
    profile_shapes: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()
    is_shape_tensor: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "dtype": self.dtype, "shape": list(self.shape),
                "profile_shapes": [[list(s) for s in p] for p in self.profile_shapes],
                "is_shape_tensor": self.is_shape_tensor}

    @classmethod
    def from_dict(cls, d: dict) -> "EngineTensor":
        return cls(d["name"], d["mode"], d["dtype"], tuple(d["shape"]),
                   tuple((tuple(p[0]), tuple(p[1]), tuple(p[2])) for p in d.get("profile_shapes", ())),
                   bool(d.get("is_shape_tensor", False)))


@dataclass(frozen=True)
class EngineIO:
    """The plan's I/O as built: what config.pbtxt must declare (Triton compares it with the engine)."""

    tensors: tuple[EngineTensor, ...]
    num_profiles: int

    @property
    def inputs(self) -> tuple[EngineTensor, ...]:
        return tuple(t for t in self.tensors if t.mode == "input")

    @property
    def outputs(self) -> tuple[EngineTensor, ...]:
        return tuple(t for t in self.tensors if t.mode == "output")

    def tensor(self, name: str) -> EngineTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"num_profiles": self.num_profiles, "tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def from_dict(cls, d: dict) -> "EngineIO":
        return cls(tuple(EngineTensor.from_dict(t) for t in d["tensors"]), int(d["num_profiles"]))


def _dims_tuple(dims: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def engine_io_of(engine: "tensorrt.ICudaEngine", trt: Any) -> EngineIO:
    """Read the I/O of a deserialized ``ICudaEngine`` (TensorRT 10 name-based API)."""
    tensors = []
    num_profiles = int(engine.num_optimization_profiles)
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name)
        if mode == trt.TensorIOMode.INPUT:
            mode_name = "input"
        elif mode == trt.TensorIOMode.OUTPUT:
            mode_name = "output"
        else:
            continue
        trt_dtype = engine.get_tensor_dtype(name)
        dtype_member = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
        if dtype_member not in TRT_DTYPES:
            raise ModelError("the plan's %s %r has TensorRT type %s, which Triton cannot serve (its TensorRT backend "
                             "maps FP8/INT4/FP4 I/O to TYPE_INVALID); keep the graph's I/O in a standard type (cast at "
                             "the graph edges)" % (mode_name, name, dtype_member))
        profiles: tuple = ()
        if mode_name == "input":
            profiles = tuple(tuple(_dims_tuple(s) for s in engine.get_tensor_profile_shape(name, p))
                             for p in range(num_profiles))
        tensors.append(EngineTensor(name, mode_name, TRT_DTYPES[dtype_member],
                                    _dims_tuple(engine.get_tensor_shape(name)), profiles,
                                    bool(engine.is_shape_inference_io(name))))
    return EngineIO(tuple(tensors), num_profiles)


def deserialize(plan_path: Path) -> "tensorrt.ICudaEngine":
    from polygraphy.backend.trt import EngineFromBytes

    if not Path(plan_path).is_file():
        raise UserError("no TensorRT plan at %s" % plan_path)
    # EngineFromBytes allows engine host code, which version-compatible plans need
    return EngineFromBytes(Path(plan_path).read_bytes())()


@dataclass(frozen=True)
class PlanStamp:
    """What the plan is tied to: Triton loads it only with a matching TensorRT (unless version
    compatible) on a GPU of the same compute capability (unless hardware compatible)."""

    tensorrt_version: str
    cuda_runtime_version: str | None
    cuda_driver_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    hardware_compatibility_level: str | None
    version_compatible: bool
    strongly_typed: bool
    build_seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "PlanStamp":
        return cls(**d)


@dataclass(frozen=True)
class PlanArtifact:
    """A built plan: where it is, its I/O as TensorRT reports it, what it is tied to, the key of
    the settings it was built with, and its check against eager PyTorch (None: not checked)."""

    path: Path
    engine_io: EngineIO
    stamp: PlanStamp
    config_key: str
    check: "PlanCheck | None" = None

    def stamp_dict(self) -> dict:
        return self.stamp.to_dict()

    def to_dict(self) -> dict:
        return {"path": str(self.path), "io": self.engine_io.to_dict(), "stamp": self.stamp.to_dict(),
                "config_key": self.config_key, "check": self.check.to_dict() if self.check else None}

    @classmethod
    def from_dict(cls, d: dict) -> "PlanArtifact":
        return cls(Path(d["path"]), EngineIO.from_dict(d["io"]), PlanStamp.from_dict(d["stamp"]), d["config_key"])


def _cuda_version(value: int) -> str:
    return "%d.%d" % (value // 1000, (value % 1000) // 10)


def gpu_facts() -> dict:
    """GPU 0 of the build process (the parent sets CUDA_VISIBLE_DEVICES) through the CUDA driver API.

    Best effort, for the record only: ``cuda_runtime_version`` is the libcudart Polygraphy finds in
    this environment, which need not be the CUDA that TensorRT itself was built against."""
    facts: dict = {"gpu_name": None, "compute_capability": None, "cuda_driver_version": None,
                   "cuda_runtime_version": None}
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        version, device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0:
            facts["cuda_driver_version"] = _cuda_version(version.value)
        if cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(device), 0) == 0:
            name = ctypes.create_string_buffer(256)
            if cuda.cuDeviceGetName(name, 256, device) == 0:
                facts["gpu_name"] = name.value.decode(errors="replace")
            # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
            if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device) == 0 and \
                    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) == 0:
                facts["compute_capability"] = "%d.%d" % (major.value, minor.value)
    except (OSError, AttributeError) as exc:
        log.debug("CUDA driver facts unavailable: %s", exc)
    try:
        from polygraphy import cuda as pcuda

        runtime = ctypes.c_int()
        if pcuda.wrapper().handle.cudaRuntimeGetVersion(ctypes.byref(runtime)) == 0:
            facts["cuda_runtime_version"] = _cuda_version(runtime.value)
    except Exception as exc:  # Polygraphy raises its own exception type when libcudart is missing
        log.debug("CUDA runtime version unavailable: %s", exc)
    return facts
