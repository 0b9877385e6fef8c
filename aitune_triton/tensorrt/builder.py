"""Build a TensorRT plan from the exported ONNX with Polygraphy, and say how to do the same with trtexec.

Design points:

* The builder settings are computed once, by ``create_config_kwargs``, as plain data: TensorRT enums
  appear as ``TrtSymbol`` names, so the settings can be inspected (and tested) where TensorRT is not
  installed. ``create_config`` resolves them into Polygraphy's ``CreateConfig`` and
  ``trtexec_command`` renders the very same dict as trtexec flags, so the two cannot drift apart.
* The build runs in a child process (``python -m aitune_triton.tensorrt.builder --request FILE``):
  a segfault, an abort or a hang inside TensorRT ends that process, not the CLI, and comes back as
  one ``ModelError`` line.
* Everything written against the TensorRT 10 Python API (``get_tensor_*``, ``num_io_tensors``,
  ``MemoryPoolType``, ``HardwareCompatibilityLevel``) and Polygraphy 0.53's loaders.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from aitune_triton.errors import AituneError, ModelError, UserError
from aitune_triton.procs import die_with_parent
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.tensorrt.profiles import ProfileSet, TensorRTProfile

if TYPE_CHECKING:  # the type checker reads TensorRT's API from tensorrt-stubs; at run time it is imported lazily
    import tensorrt

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 0)
INSTALL_HINT = "pip install 'aitune-triton[tensorrt]' on a machine with an NVIDIA GPU"
_MIB = 1 << 20
# TensorRT DataType member name -> the dtype names used in spec.py
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
# compatibility_level -> (trt.HardwareCompatibilityLevel member, trtexec spelling, first TensorRT with it)
_HARDWARE_LEVELS = {"ampere_plus": ("AMPERE_PLUS", "ampere+", (8, 6)),
                    "same_compute_capability": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability", (10, 9))}
_PRECISION_FLAGS = ("fp16", "bf16", "int8", "fp8")


# ---------------------------------------------------------------------------------------------
# TensorRT availability
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorRTStatus:
    """Whether the full TensorRT builder can be used in this Python environment, and why not."""

    available: bool
    version: str | None
    reason: str


class TensorRTUnavailable(ModelError):
    """No usable TensorRT builder in this Python environment (not installed, runtime-only, too old)."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _import_tensorrt():
    """``import tensorrt`` as a builder, or a ``ModelError`` that says what is missing and how to get it.

    The lean and dispatch runtimes on PyPI install as ``tensorrt_lean`` / ``tensorrt_dispatch`` and
    cannot build; a ``tensorrt`` module without ``Builder`` (a stub, a runtime-only build) is refused too.
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or an OSError from a missing libnvinfer
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TensorRTUnavailable("TensorRT is not installed in this Python environment (import tensorrt failed: %s); "
                                  "%s, or run the generated build_plan.sh inside a TensorRT/Triton container"
                                  % (reason, INSTALL_HINT)) from None
    if getattr(trt, "__file__", None) is None and hasattr(trt, "__path__"):
        # a namespace package: only the type stubs (tensorrt-stubs, a dev tool) are installed
        raise TensorRTUnavailable("TensorRT is not installed in this Python environment (only its type stubs are); "
                                  "%s, or run the generated build_plan.sh inside a TensorRT/Triton container"
                                  % INSTALL_HINT)
    version = getattr(trt, "__version__", "unknown")
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable("the installed tensorrt %s has no Builder (a runtime-only package); %s"
                                  % (version, INSTALL_HINT))
    if _version_tuple(version) < MIN_TENSORRT:
        raise TensorRTUnavailable("TensorRT %s is too old: aitune-triton needs TensorRT >= %d.%d (the TensorRT 10 API)"
                                  % ((version,) + MIN_TENSORRT))
    return trt


def tensorrt_status() -> TensorRTStatus:
    """Check TensorRT without ever raising (used by ``generate`` and ``doctor`` to choose a path)."""
    try:
        trt = _import_tensorrt()
    except TensorRTUnavailable as exc:
        version = None
        try:
            import tensorrt as maybe
            version = getattr(maybe, "__version__", None)
        except Exception:
            pass
        return TensorRTStatus(False, version, str(exc))
    except Exception as exc:  # a broken install must not take the caller down
        return TensorRTStatus(False, None, "import tensorrt crashed: %s: %s" % (type(exc).__name__, exc))
    return TensorRTStatus(True, trt.__version__, "TensorRT %s builder available" % trt.__version__)


# ---------------------------------------------------------------------------------------------
# Builder settings as data
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrtSymbol:
    """A TensorRT enum member by name, e.g. ``TrtSymbol("MemoryPoolType", "WORKSPACE")``; resolved
    only when a config is really built, so the settings can be computed without TensorRT."""

    enum: str
    member: str

    def resolve(self, trt: Any) -> Any:
        try:
            return getattr(getattr(trt, self.enum), self.member)
        except AttributeError:
            raise ModelError("TensorRT %s has no %s.%s; upgrade TensorRT or change the setting that needs it"
                             % (getattr(trt, "__version__", "?"), self.enum, self.member)) from None

    def __str__(self) -> str:
        return "trt.%s.%s" % (self.enum, self.member)


def _profile_copy(profile: TensorRTProfile):
    from polygraphy.backend.trt import Profile

    out = Profile()
    for name in profile.names():
        lo, opt, hi = profile.shapes(name)
        out.add(name, min=tuple(lo), opt=tuple(opt), max=tuple(hi))
    return out


def polygraphy_profiles(profile_set: ProfileSet) -> list:
    """The profiles as fresh Polygraphy ``Profile`` objects, in plan order (profile index = list index)."""
    if not profile_set.profiles:
        raise UserError("the profile set is empty; a TensorRT plan needs at least one optimization profile")
    return [_profile_copy(p) for p in profile_set.profiles]


def precision_flags(trt_config: TensorRTBackendConfig) -> dict[str, bool]:
    """Builder precision flags. A strongly typed network takes its precision from the graph (AutoCast,
    Q/DQ): TensorRT rejects FP16/BF16/INT8/FP8 flags there (trtexec drops them with a warning), so
    none are set. A weakly typed build gets the flag of ``effective_precision`` (for a
    ``TorchQuantizationConfig`` the exported Q/DQ precision)."""
    flags = dict.fromkeys(_PRECISION_FLAGS, False)
    if not trt_config.strongly_typed and trt_config.effective_precision in flags:
        flags[trt_config.effective_precision] = True
    return flags


def create_config_kwargs(trt_config: TensorRTBackendConfig, profile_set: ProfileSet) -> dict[str, Any]:
    """The keyword arguments for Polygraphy's ``CreateConfig``, with TensorRT enums as ``TrtSymbol``.

    ``load_timing_cache`` is present only when the cache file exists (Polygraphy would warn and fall back
    otherwise); saving the cache after the build is ``EngineBytesFromNetwork(save_timing_cache=...)``,
    see ``timing_cache_save_path``.
    """
    kwargs: dict[str, Any] = {
        "profiles": polygraphy_profiles(profile_set),
        "tf32": bool(trt_config.enable_tf32 or trt_config.precision == "tf32"),
        **precision_flags(trt_config),
    }
    if trt_config.workspace_size is not None:
        kwargs["memory_pool_limits"] = {TrtSymbol("MemoryPoolType", "WORKSPACE"): int(trt_config.workspace_size)}
    if trt_config.optimization_level is not None:
        kwargs["builder_optimization_level"] = int(trt_config.optimization_level)
    if trt_config.compatibility_level is not None:
        member = _HARDWARE_LEVELS[trt_config.compatibility_level][0]
        kwargs["hardware_compatibility_level"] = TrtSymbol("HardwareCompatibilityLevel", member)
    if trt_config.version_compatible:
        kwargs["version_compatible"] = True
    if trt_config.timing_cache is not None and Path(trt_config.timing_cache).is_file():
        kwargs["load_timing_cache"] = str(trt_config.timing_cache)
    if not trt_config.strongly_typed and trt_config.quantization_config is None \
            and trt_config.precision in ("int8", "fp8"):
        log.warning("precision=%s without a quantization_config: the ONNX has no Q/DQ nodes and no calibrator is "
                    "given, so TensorRT keeps most layers in higher precision; use ONNXQuantizationConfig",
                    trt_config.precision)
    return kwargs


def timing_cache_save_path(trt_config: TensorRTBackendConfig) -> str | None:
    """Where the build writes the timing cache back (merged with what is there), or None."""
    return str(trt_config.timing_cache) if trt_config.timing_cache is not None else None


def _has_symbols(value: Any) -> bool:
    if isinstance(value, TrtSymbol):
        return True
    if isinstance(value, dict):
        return any(_has_symbols(k) or _has_symbols(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_symbols(v) for v in value)
    return False


def resolve_symbols(value: Any, trt: Any) -> Any:
    """Replace every ``TrtSymbol`` (also dict keys) by the real TensorRT enum member."""
    if isinstance(value, TrtSymbol):
        return value.resolve(trt)
    if isinstance(value, dict):
        return {resolve_symbols(k, trt): resolve_symbols(v, trt) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_symbols(v, trt) for v in value]
    return value


def create_config(trt_config: TensorRTBackendConfig, profile_set: ProfileSet):
    """Polygraphy's ``CreateConfig`` loader for these settings.

    ``CreateConfig`` itself is lazy (it touches TensorRT only when called with a builder and network);
    TensorRT is imported here only when an enum must be resolved (workspace, hardware compatibility).
    """
    from polygraphy.backend.trt import CreateConfig

    kwargs = create_config_kwargs(trt_config, profile_set)
    if _has_symbols(kwargs):
        trt = _import_tensorrt()
        if trt_config.compatibility_level is not None:
            member, _, since = _HARDWARE_LEVELS[trt_config.compatibility_level]
            if not hasattr(trt.HardwareCompatibilityLevel, member):
                raise ModelError("compatibility_level=%r needs TensorRT >= %d.%d; this is TensorRT %s"
                                 % ((trt_config.compatibility_level,) + since + (trt.__version__,)))
        kwargs = resolve_symbols(kwargs, trt)
    return CreateConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# trtexec and the build script
# ---------------------------------------------------------------------------------------------

def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _shape_flags(profile: TensorRTProfile) -> list[str]:
    names = profile.names()
    return ["--%sShapes=%s" % (which, ",".join("%s:%s" % (n, _dims(profile.shapes(n)[i])) for n in names))
            for i, which in enumerate(("min", "opt", "max"))]


def _mib(nbytes: int) -> str:
    """trtexec's ``--memPoolSize`` takes MiB. A bare number is read as MiB by every TensorRT 10 release;
    a unit suffix is not (10.0 multiplies it in twice), so none is written. Decimals are allowed."""
    if nbytes % _MIB == 0:
        return str(nbytes // _MIB)
    return ("%.6f" % (nbytes / _MIB)).rstrip("0").rstrip(".")


def trtexec_command(onnx_path: Path | str, plan_path: Path | str, trt_config: TensorRTBackendConfig,
                    profile_set: ProfileSet, trtexec: str = "trtexec") -> list[str]:
    """The trtexec (TensorRT 10.x) command line equivalent to ``create_config`` + ``build_plan``.

    Several profiles use trtexec's ``--profile=<i>`` groups: each ``--profile`` must be followed directly
    by its ``--minShapes/--optShapes/--maxShapes`` (repeating the shape flags without ``--profile`` is
    rejected: "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed").
    """
    kwargs = create_config_kwargs(trt_config, profile_set)
    args = [trtexec, "--onnx=%s" % onnx_path, "--saveEngine=%s" % plan_path]
    if len(profile_set.profiles) == 1:
        args += _shape_flags(profile_set.profiles[0])
    else:
        for index, profile in enumerate(profile_set.profiles):
            args += ["--profile=%d" % index] + _shape_flags(profile)
    if trt_config.strongly_typed:
        args.append("--stronglyTyped")
    args += ["--%s" % flag for flag in _PRECISION_FLAGS if kwargs[flag]]
    if not kwargs["tf32"]:
        args.append("--noTF32")
    for pool, nbytes in kwargs.get("memory_pool_limits", {}).items():
        if pool == TrtSymbol("MemoryPoolType", "WORKSPACE"):
            args.append("--memPoolSize=workspace:%s" % _mib(nbytes))
    if "builder_optimization_level" in kwargs:
        args.append("--builderOptimizationLevel=%d" % kwargs["builder_optimization_level"])
    if trt_config.compatibility_level is not None:
        args.append("--hardwareCompatibilityLevel=%s" % _HARDWARE_LEVELS[trt_config.compatibility_level][1])
    if kwargs.get("version_compatible"):
        args.append("--versionCompatible")
    if trt_config.timing_cache is not None:
        args.append("--timingCacheFile=%s" % trt_config.timing_cache)
    args.append("--skipInference")
    return args


def _comment_safe(text: object) -> str:
    """Values in ``#`` comments must stay on one line (a newline would end the comment)."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(text))


def render_build_script(onnx_path: Path | str, plan_path: Path | str, trt_config: TensorRTBackendConfig,
                        profile_set: ProfileSet, model_name: str, repository: str = "REPO",
                        home_model: str | None = None, quantization: str | None = None) -> str:
    """A bash script that builds the plan with trtexec inside a TensorRT/Triton container.

    ``onnx_path``/``plan_path`` are taken relative to the script's directory (the script ``cd``s
    there). A timing cache is referred to by its file name only: the host path rarely exists inside
    the container, and trtexec creates the file when it is missing. ``quantization`` is the one-line
    summary of what was applied to the ONNX (``QuantizationRecord.summary``), written as a comment.
    """
    from aitune_triton import __version__
    from aitune_triton.templating import render

    script_config = trt_config
    if trt_config.timing_cache is not None:
        script_config = trt_config.replace(timing_cache=Path(Path(trt_config.timing_cache).name))
    args = trtexec_command(onnx_path, plan_path, script_config, profile_set, trtexec="trtexec")[1:]
    alternative = shlex.join(["aitune-triton", "build-plan", str(repository), "--model", home_model or model_name])
    compat = {"ampere_plus": "hardware compatible: runs on any Ampere or newer GPU",
              "same_compute_capability": "hardware compatible: runs on GPUs of the build GPU's compute capability",
              None: "not hardware compatible: build it on the GPU model that serves it",
              }[trt_config.compatibility_level]
    version = ("version compatible: newer TensorRT 10.x loads it too (start Triton with "
               "--backend-config=tensorrt,version-compatible=true)" if trt_config.version_compatible
               else "not version compatible: needs exactly this TensorRT version")
    return render("build_plan.sh.j2", tool_version=__version__, model_name=model_name,
                  model_comment=_comment_safe(model_name), onnx=str(onnx_path), plan=str(plan_path),
                  onnx_comment=_comment_safe(onnx_path), alternative=alternative,
                  alternative_comment=_comment_safe(alternative), compat_comments=[compat, version],
                  settings_comment=_comment_safe(trt_config.describe() or "defaults"),
                  quantization_comment=_comment_safe(quantization) if quantization else None,
                  args=args)


# ---------------------------------------------------------------------------------------------
# Engine I/O read-back
# ---------------------------------------------------------------------------------------------

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
        if dtype_member not in _TRT_DTYPES:
            raise ModelError("the plan's %s %r has TensorRT type %s, which Triton cannot serve (its TensorRT backend "
                             "maps FP8/INT4/FP4 I/O to TYPE_INVALID); keep the graph's I/O in a standard type (cast at "
                             "the graph edges)" % (mode_name, name, dtype_member))
        profiles: tuple = ()
        if mode_name == "input":
            profiles = tuple(tuple(_dims_tuple(s) for s in engine.get_tensor_profile_shape(name, p))
                             for p in range(num_profiles))
        tensors.append(EngineTensor(name, mode_name, _TRT_DTYPES[dtype_member],
                                    _dims_tuple(engine.get_tensor_shape(name)), profiles,
                                    bool(engine.is_shape_inference_io(name))))
    return EngineIO(tuple(tensors), num_profiles)


def _deserialize(plan_path: Path) -> "tensorrt.ICudaEngine":
    from polygraphy.backend.trt import EngineFromBytes

    if not Path(plan_path).is_file():
        raise UserError("no TensorRT plan at %s" % plan_path)
    # EngineFromBytes allows engine host code, which version-compatible plans need
    return EngineFromBytes(Path(plan_path).read_bytes())()


def read_engine_io(plan_path: Path | str) -> EngineIO:
    """Deserialize the plan (needs TensorRT and a GPU) and read its I/O tensors and profiles."""
    trt = _import_tensorrt()
    return engine_io_of(_deserialize(Path(plan_path)), trt)


# ---------------------------------------------------------------------------------------------
# The build (child process) and its parent
# ---------------------------------------------------------------------------------------------

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
    """A built plan: where it is, its I/O as TensorRT reports it, what it is tied to, and the key of
    the settings it was built with."""

    path: Path
    engine_io: EngineIO
    stamp: PlanStamp
    config_key: str

    def stamp_dict(self) -> dict:
        return self.stamp.to_dict()

    def to_dict(self) -> dict:
        return {"path": str(self.path), "io": self.engine_io.to_dict(), "stamp": self.stamp.to_dict(),
                "config_key": self.config_key}

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


def _write_synced(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: Any) -> None:
    """Write next to the target, fsync, then rename: a crash never leaves half a file behind."""
    tmp = path.with_name(".%s.tmp-%d" % (path.name, os.getpid()))
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_in_process(onnx_path: Path, plan_path: Path, trt_config: TensorRTBackendConfig,
                     profile_set: ProfileSet) -> PlanArtifact:
    """The build itself: ``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork`` ->
    write beside the target -> read it back -> rename into place. Runs in the child; calling it
    directly means a TensorRT crash ends the caller too."""
    trt = _import_tensorrt()
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath

    config = create_config(trt_config, profile_set)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=trt_config.strongly_typed)
    save_cache = timing_cache_save_path(trt_config)
    if save_cache:
        Path(save_cache).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    serialized = EngineBytesFromNetwork(network, config, save_timing_cache=save_cache)()
    seconds = time.monotonic() - start
    # the new plan replaces an old one only once it deserializes and its I/O is servable
    plan_path = Path(plan_path)
    tmp = plan_path.with_name(".%s.new-%d" % (plan_path.name, os.getpid()))
    try:
        _write_synced(tmp, serialized)
        del serialized
        engine = _deserialize(tmp)
        io = engine_io_of(engine, trt)
        os.replace(tmp, plan_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    level = engine.hardware_compatibility_level.name
    facts = gpu_facts()
    stamp = PlanStamp(tensorrt_version=trt.__version__, cuda_runtime_version=facts["cuda_runtime_version"],
                      cuda_driver_version=facts["cuda_driver_version"], gpu_name=facts["gpu_name"],
                      compute_capability=facts["compute_capability"],
                      hardware_compatibility_level=None if level == "NONE" else level.lower(),
                      version_compatible=trt_config.version_compatible, strongly_typed=trt_config.strongly_typed,
                      build_seconds=round(seconds, 3))
    return PlanArtifact(Path(plan_path), io, stamp, trt_config.key())


def _child_env(device: str) -> dict[str, str]:
    """The child's environment: the package importable as in the parent, never Polygraphy's
    auto-install, and ``cuda:N`` mapped onto CUDA_VISIBLE_DEVICES so TensorRT builds on GPU N."""
    env = dict(os.environ)
    env.pop("POLYGRAPHY_AUTOINSTALL_DEPS", None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        raise UserError("TensorRT builds need a GPU; TensorRTBackendConfig.device is 'cpu'")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise UserError("TensorRTBackendConfig.device must be 'cuda' or 'cuda:<index>', got %r" % device)
    if match.group(1) is not None:
        index = int(match.group(1))
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible:
            if index >= len(visible):
                raise UserError("device %s: CUDA_VISIBLE_DEVICES=%s has only %d device(s)"
                                % (device, env["CUDA_VISIBLE_DEVICES"], len(visible)))
            env["CUDA_VISIBLE_DEVICES"] = visible[index].strip()
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
    return env


def _tail_error(log_path: Path) -> str | None:
    """The last error TensorRT/Polygraphy printed (``[E]``/``[!]`` lines, or an ``Error`` line)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for pattern in (r"\[E\]|\[!\]", r"(?i)error"):
        for line in reversed(lines):
            if re.search(pattern, line) and line.strip():
                return re.sub(r"\s+", " ", line).strip()[:400]
    return None


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _kill_group(proc: subprocess.Popen) -> None:
    """End the build child (it leads its own process group, which holds only what it started)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait(proc: subprocess.Popen, timeout_s: float, progress: Callable[[str], None] | None,
          label: str) -> int | None:
    """Wait for the child, showing elapsed time; None when the timeout hit (the child is then killed)."""
    start = time.monotonic()

    def loop(tick: Callable[[float], None]) -> int | None:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > timeout_s:
                    _kill_group(proc)
                    return None
                tick(elapsed)

    if progress is not None:
        progress("%s (timeout %.0f s)" % (label, timeout_s))
        state = {"next": 15.0}

        def tick(elapsed: float) -> None:
            if elapsed >= state["next"]:
                progress("%s: %.0f s" % (label, elapsed))
                state["next"] += 15.0

        return loop(tick)
    from rich.console import Console

    with Console(stderr=True).status(label) as status:
        return loop(lambda elapsed: status.update("%s: %.0f s" % (label, elapsed)))


def _child_command(request_path: Path) -> list[str]:
    """The build child: this module run as a script by the same interpreter (no shell)."""
    return [sys.executable, "-m", "aitune_triton.tensorrt.builder", "--request", str(request_path)]


def build_plan(onnx_path: Path | str, plan_path: Path | str, trt_config: TensorRTBackendConfig,
               profile_set: ProfileSet, timeout_s: float | None = None,
               progress: Callable[[str], None] | None = None) -> PlanArtifact:
    """Build the plan in a child process and return it with its I/O and stamp.

    Failures come back as one-line ``ModelError``s: TensorRT missing, the builder's own error, a
    crash (signal) or the timeout (``timeout_s``, else ``trt_config.build_timeout_s``). The child's
    full log is kept on failure and named in the message.
    """
    onnx_path, plan_path = Path(onnx_path).resolve(), Path(plan_path).resolve()
    if not onnx_path.is_file():
        raise UserError("no ONNX model at %s; export it first" % onnx_path)
    timeout = float(trt_config.build_timeout_s if timeout_s is None else timeout_s)
    if timeout <= 0:
        raise UserError("the build timeout must be positive, got %r" % timeout)
    env = _child_env(trt_config.device)
    work = Path(tempfile.mkdtemp(prefix="aitune-trt-build-"))
    request_path, result_path, log_path = work / "request.json", work / "result.json", work / "build.log"
    request_path.write_text(json.dumps({
        "onnx_path": str(onnx_path), "plan_path": str(plan_path), "result_path": str(result_path),
        "trt_config": trt_config.to_dict(), "profile_set": profile_set.to_dict()}, indent=2))
    cmd = _child_command(request_path)
    log.info("building TensorRT plan %s from %s (%s)", plan_path, onnx_path, trt_config.describe() or "defaults")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=die_with_parent)
    try:
        rc = _wait(proc, timeout, progress, "building TensorRT plan %s" % plan_path.name)
    except BaseException:
        _kill_group(proc)
        raise
    result = None
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
        except ValueError:
            result = None
    if rc is None:
        raise ModelError("TensorRT build timed out after %.0f s and was stopped; raise build_timeout_s or lower "
                         "optimization_level" % timeout, log_path=str(log_path))
    if result is not None and result.get("ok"):
        shutil.rmtree(work, ignore_errors=True)
        artifact = PlanArtifact.from_dict(result["artifact"])
        log.info("built %s in %.1f s with TensorRT %s", plan_path, artifact.stamp.build_seconds,
                 artifact.stamp.tensorrt_version)
        return artifact
    if result is not None and result.get("kind") == "missing":
        shutil.rmtree(work, ignore_errors=True)
        raise TensorRTUnavailable(_one_line(result.get("error") or "TensorRT is not available"))
    detail = _tail_error(log_path)
    if result is not None:
        message = _one_line(result.get("error") or "unknown error")
        if detail and detail not in message:
            message += " (TensorRT: %s)" % detail
        raise ModelError(message, log_path=str(log_path))
    if rc < 0:
        try:
            signame = signal.Signals(-rc).name
        except ValueError:
            signame = "signal %d" % -rc
        raise ModelError("TensorRT build crashed with %s%s" % (signame, "; last error: %s" % detail if detail else ""),
                         log_path=str(log_path))
    raise ModelError("TensorRT build process exited with code %d without a result%s"
                     % (rc, "; last error: %s" % detail if detail else ""), log_path=str(log_path))


def _child_main(request_path: Path) -> int:
    request = json.loads(request_path.read_text())
    result_path = Path(request["result_path"])
    try:
        artifact = build_in_process(Path(request["onnx_path"]), Path(request["plan_path"]),
                                    TensorRTBackendConfig.from_dict(request["trt_config"]),
                                    ProfileSet.from_dict(request["profile_set"]))
        result = {"ok": True, "artifact": artifact.to_dict()}
    except TensorRTUnavailable as exc:
        result = {"ok": False, "kind": "missing", "error": str(exc)}
    except ModelError as exc:
        result = {"ok": False, "kind": "model", "error": str(exc)}
    except AituneError as exc:
        result = {"ok": False, "kind": "user", "error": str(exc)}
    except Exception as exc:  # Polygraphy reports builder failures as PolygraphyException
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result = {"ok": False, "kind": "build", "error": "TensorRT could not build the plan: %s" % first}
    _write_atomic(result_path, json.dumps(result, indent=2).encode())
    return 0 if result["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aitune_triton.tensorrt.builder",
                                     description="Build one TensorRT plan (the child process of build_plan).")
    parser.add_argument("--request", required=True, type=Path, help="request JSON written by build_plan")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return _child_main(args.request)


if __name__ == "__main__":
    sys.exit(main())
