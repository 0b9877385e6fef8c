"""The TensorRT build itself, and the plan's accuracy check, run in the child process that
``builder.build_plan`` starts.

A segfault, an abort or a hang inside TensorRT ends this process, not the CLI: ``build`` is called
through ``procs.run_child``, and whatever it raises comes back to the parent as one line naming
the stage that failed (``parse``: the ONNX parser; ``build``: the builder; ``check``: the plan on
the samples against eager PyTorch). Each stage prints a ``STAGE_MARK`` line to the log first, so
a crash is attributed to its stage too.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from aitune_triton.errors import AituneError, ModelError
from aitune_triton.tensorrt.availability import import_tensorrt
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.tensorrt.plan import PlanArtifact, PlanStamp, deserialize, engine_io_of, gpu_facts
from aitune_triton.tensorrt.plan_check import PlanCheckRequest, check_plan
from aitune_triton.tensorrt.profiles import ProfileSet
from aitune_triton.tensorrt.settings import create_config, timing_cache_save_path


STAGE_MARK = "aitune-triton TensorRT stage:"


class PlanStage(str, Enum):
    """Where a plan build stands: the ONNX parsed into a network, the engine built, the plan checked."""

    PARSE = "parse"
    BUILD = "build"
    CHECK = "check"

    def __str__(self) -> str:
        return self.value


class PlanStageError(ModelError):
    """A stage of the build failed; the message starts with ``TensorRT <stage> stage failed:``."""


def stage_failed(stage: PlanStage | str, detail: str) -> str:
    return "TensorRT %s stage failed: %s" % (stage, detail)


@dataclass(frozen=True)
class BuildRequest:
    """What the parent sends: the ONNX to build from, where the plan goes, the settings, and what to
    check the plan against (None: no check)."""

    onnx_path: Path
    plan_path: Path
    trt_config: TensorRTBackendConfig
    profile_set: ProfileSet
    check: PlanCheckRequest | None = None


def build(request: BuildRequest) -> PlanArtifact:
    """The child's entry point. TensorRT's own failures (Polygraphy raises ``PolygraphyException``)
    become one ``PlanStageError`` line naming the stage, with the traceback left in the build log."""
    return build_in_process(request.onnx_path, request.plan_path, request.trt_config, request.profile_set,
                            request.check)


def _enter(stage: PlanStage) -> None:
    print("%s %s" % (STAGE_MARK, stage), flush=True)


def _run_stage(stage: PlanStage, step):
    _enter(stage)
    try:
        return step()
    except AituneError as exc:
        if isinstance(exc, PlanStageError) or not isinstance(exc, ModelError):
            raise
        raise PlanStageError(stage_failed(stage, str(exc)), log_path=exc.log_path, details=exc.details) from None
    except Exception as exc:
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlanStageError(stage_failed(stage, first)) from None


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def build_in_process(onnx_path: Path, plan_path: Path, trt_config: TensorRTBackendConfig,
                     profile_set: ProfileSet, check: PlanCheckRequest | None = None) -> PlanArtifact:
    """The build itself: ``NetworkFromOnnxPath`` (parse) -> ``CreateConfig`` + ``EngineBytesFromNetwork``
    (build) -> write beside the target -> read it back -> ``check_plan`` on the samples (check) ->
    rename into place. Runs in the child; calling it directly means a TensorRT crash ends the caller
    too. A failed stage raises ``PlanStageError`` and leaves no new plan behind."""
    _enter(PlanStage.PARSE)  # the settings and the parser are prepared for this stage
    trt = import_tensorrt()
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath

    config = create_config(trt_config, profile_set)
    network = _run_stage(PlanStage.PARSE, lambda: NetworkFromOnnxPath(
        str(onnx_path), strongly_typed=trt_config.strongly_typed)())
    save_cache = timing_cache_save_path(trt_config)
    if save_cache:
        Path(save_cache).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    serialized = _run_stage(PlanStage.BUILD, lambda: EngineBytesFromNetwork(
        network, config, save_timing_cache=save_cache)())
    seconds = time.monotonic() - start
    # the new plan replaces an old one only once it deserializes, its I/O is servable and it passed the check
    plan_path = Path(plan_path)
    tmp = plan_path.with_name(".%s.new-%d" % (plan_path.name, os.getpid()))
    result = None
    try:
        _write_synced(tmp, serialized)
        del serialized
        engine = _run_stage(PlanStage.BUILD, lambda: deserialize(tmp))
        io = _run_stage(PlanStage.BUILD, lambda: engine_io_of(engine, trt))
        if check is not None:
            result = _run_stage(PlanStage.CHECK, lambda: check_plan(engine, check))
            if not result.ok:
                raise PlanStageError(stage_failed(PlanStage.CHECK, "the plan does not match eager PyTorch: %s"
                                                  % result.summary()))
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
    return PlanArtifact(Path(plan_path), io, stamp, trt_config.key(), result)
