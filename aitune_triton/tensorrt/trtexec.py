"""The trtexec command line equivalent to a Polygraphy build, and the ``build_plan.sh`` around it.

Both are rendered from ``settings.create_config_kwargs``, the dict the in-process build uses, so
the script built in a TensorRT/Triton container makes the same plan ``build-plan`` would.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Sequence

from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.profile_set import ProfileSet, TensorRTProfile
from aitune_triton.tensorrt.settings import HARDWARE_LEVELS, PRECISION_FLAGS, TrtSymbol, create_config_kwargs

_MIB = 1 << 20


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
    args += ["--%s" % flag for flag in PRECISION_FLAGS if kwargs[flag]]
    if not kwargs["tf32"]:
        args.append("--noTF32")
    for pool, nbytes in kwargs.get("memory_pool_limits", {}).items():
        if pool == TrtSymbol("MemoryPoolType", "WORKSPACE"):
            args.append("--memPoolSize=workspace:%s" % _mib(nbytes))
    if "builder_optimization_level" in kwargs:
        args.append("--builderOptimizationLevel=%d" % kwargs["builder_optimization_level"])
    if trt_config.compatibility_level is not None:
        args.append("--hardwareCompatibilityLevel=%s" % HARDWARE_LEVELS[trt_config.compatibility_level][1])
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
    from aitune_triton.version import __version__
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
