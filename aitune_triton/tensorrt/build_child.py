"""The TensorRT build itself, run in the child process that ``builder.build_plan`` starts.

A segfault, an abort or a hang inside TensorRT ends this process, not the CLI: ``build`` is called
through ``procs.run_child``, and whatever it raises comes back to the parent as one line.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from aitune_triton.errors import AituneError, ModelError
from aitune_triton.tensorrt.availability import import_tensorrt
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.tensorrt.plan import PlanArtifact, PlanStamp, deserialize, engine_io_of, gpu_facts
from aitune_triton.profile_set import ProfileSet
from aitune_triton.tensorrt.settings import create_config, timing_cache_save_path


@dataclass(frozen=True)
class BuildRequest:
    """What the parent sends: the ONNX to build from, where the plan goes, and the settings."""

    onnx_path: Path
    plan_path: Path
    trt_config: TensorRTBackendConfig
    profile_set: ProfileSet


def build(request: BuildRequest) -> PlanArtifact:
    """The child's entry point. TensorRT's own failures (Polygraphy raises ``PolygraphyException``)
    become one ``ModelError`` line, with the traceback left in the build log."""
    try:
        return build_in_process(request.onnx_path, request.plan_path, request.trt_config, request.profile_set)
    except AituneError:
        raise
    except Exception as exc:
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError("TensorRT could not build the plan: %s" % first) from None


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def build_in_process(onnx_path: Path, plan_path: Path, trt_config: TensorRTBackendConfig,
                     profile_set: ProfileSet) -> PlanArtifact:
    """The build itself: ``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``EngineBytesFromNetwork`` ->
    write beside the target -> read it back -> rename into place. Runs in the child; calling it
    directly means a TensorRT crash ends the caller too."""
    trt = import_tensorrt()
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
        engine = deserialize(tmp)
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
