"""TensorRT builder settings as plain data, and Polygraphy's ``CreateConfig`` made from them.

The settings are computed once, by ``create_config_kwargs``: TensorRT enums appear as
``TrtSymbol`` names, so the settings can be inspected (and tested) where TensorRT is not
installed. ``create_config`` resolves them into Polygraphy's ``CreateConfig``, and
``trtexec.trtexec_command`` renders the very same dict as trtexec flags, so the two cannot drift
apart. Written against the TensorRT 10 Python API and Polygraphy 0.53's loaders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polygraphy.backend.trt import Profile

from aitune_triton.errors import ModelError, UserError
from aitune_triton.tensorrt.availability import import_tensorrt
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.profile_set import ProfileSet, TensorRTProfile

log = logging.getLogger(__name__)

# compatibility_level -> (trt.HardwareCompatibilityLevel member, trtexec spelling, first TensorRT with it)
HARDWARE_LEVELS = {"ampere_plus": ("AMPERE_PLUS", "ampere+", (8, 6)),
                    "same_compute_capability": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability", (10, 9))}
PRECISION_FLAGS = ("fp16", "bf16", "int8", "fp8")


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


def _profile_copy(profile: TensorRTProfile) -> Profile:
    out = Profile()
    for name in profile.names():
        lo, opt, hi = profile.shapes(name)
        out.add(name, min=tuple(lo), opt=tuple(opt), max=tuple(hi))
    return out


def polygraphy_profiles(profile_set: ProfileSet) -> list[Profile]:
    """The profiles as fresh Polygraphy ``Profile`` objects, in plan order (profile index = list index)."""
    if not profile_set.profiles:
        raise UserError("the profile set is empty; a TensorRT plan needs at least one optimization profile")
    return [_profile_copy(p) for p in profile_set.profiles]


def precision_flags(trt_config: TensorRTBackendConfig) -> dict[str, bool]:
    """Builder precision flags. A strongly typed network takes its precision from the graph (AutoCast,
    Q/DQ): TensorRT rejects FP16/BF16/INT8/FP8 flags there (trtexec drops them with a warning), so
    none are set. A weakly typed build gets the flag of ``effective_precision`` (for a
    ``TorchQuantizationConfig`` the exported Q/DQ precision)."""
    flags = dict.fromkeys(PRECISION_FLAGS, False)
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
        member = HARDWARE_LEVELS[trt_config.compatibility_level][0]
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
        trt = import_tensorrt()
        if trt_config.compatibility_level is not None:
            member, _, since = HARDWARE_LEVELS[trt_config.compatibility_level]
            if not hasattr(trt.HardwareCompatibilityLevel, member):
                raise ModelError("compatibility_level=%r needs TensorRT >= %d.%d; this is TensorRT %s"
                                 % ((trt_config.compatibility_level,) + since + (trt.__version__,)))
        kwargs = resolve_symbols(kwargs, trt)
    return CreateConfig(**kwargs)

