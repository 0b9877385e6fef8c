"""AITune's TensorRT backend configs (``TensorRTBackendConfig``, the quantization configs) in this project's words.

Field names and defaults mirror AITune's TensorRT backend API (``aitune.torch.backend.tensorrt``) so
its users feel at home; ``version_compatible`` is added because a Triton deployment often runs a
newer TensorRT than the one that built the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from aitune_triton.errors import UserError
from aitune_triton.not_given import given_changes
from aitune_triton.profile_set import ProfileMode, TensorRTProfile, profiles_from_dict

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")


# ModelOpt ONNX PTQ's calibration methods per precision. "max" is AITune's default and also
# stands for ModelOpt's own default where "max" does not apply (fp16 has no calibration; int4
# then uses awq_clip), so the default config is valid for every precision.
CALIBRATION_METHODS = {"int8": ("max", "entropy"), "fp8": ("max", "entropy"), "fp16": ("max",),
                       "int4": ("max", "awq_clip", "awq_lite", "awq_full", "rtn_dq")}


def _check_patterns(qconfig: Any) -> None:
    """``nodes_to_exclude`` are regular expressions matched against node names (as ModelOpt does)."""
    if isinstance(qconfig.nodes_to_exclude, (str, list)):
        items = [qconfig.nodes_to_exclude] if isinstance(qconfig.nodes_to_exclude, str) else qconfig.nodes_to_exclude
        object.__setattr__(qconfig, "nodes_to_exclude", tuple(items))
    for pattern in qconfig.nodes_to_exclude:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise UserError("%s.nodes_to_exclude entry %r is not a regular expression: %s"
                            % (type(qconfig).__name__, pattern, exc)) from None


@dataclass(frozen=True)
class ONNXAutoCastConfig:
    """Mixed precision by ModelOpt's ONNX AutoCast: the ONNX graph carries the precision,
    so the engine is built strongly typed."""

    precision: str = "fp16"
    """The low precision: ``fp16`` or ``bf16``."""
    low_precision_type: str | None = None
    """ModelOpt's name for ``precision``; leave ``None`` (it must agree with ``precision``)."""
    nodes_to_exclude: tuple[str, ...] = ()
    """Regular expressions of ONNX node names kept in fp32."""
    data_max: float = 512.0
    """Nodes whose outputs exceed this magnitude on the samples stay in fp32 (overflow guard)."""

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "bf16"):
            raise UserError("ONNXAutoCastConfig.precision must be 'fp16' or 'bf16', got %r" % self.precision)
        if self.low_precision_type not in (None, self.precision):
            raise UserError("ONNXAutoCastConfig.low_precision_type=%r contradicts precision=%r; set only precision"
                            % (self.low_precision_type, self.precision))
        if not self.data_max > 0:
            raise UserError("ONNXAutoCastConfig.data_max must be > 0, got %r" % (self.data_max,))
        _check_patterns(self)


@dataclass(frozen=True)
class ONNXQuantizationConfig:
    """Post-training quantization of the ONNX graph with ModelOpt (``modelopt.onnx.quantization``)."""

    precision: str = "int8"
    """Quantized precision: ``int8``, ``fp8``, ``fp16`` or ``int4``."""
    calibration_method: str = "max"
    """Calibration method (per precision: int8/fp8 ``max`` or ``entropy``; int4 ``awq_clip``, ``awq_lite``,
    ``awq_full``, ``rtn_dq``)."""
    nodes_to_exclude: tuple[str, ...] = ()
    """Regular expressions of ONNX node names left unquantized."""

    def __post_init__(self) -> None:
        if self.precision not in CALIBRATION_METHODS:
            raise UserError("ONNXQuantizationConfig.precision must be int8, fp8, fp16 or int4, got %r" % self.precision)
        methods = CALIBRATION_METHODS[self.precision]
        if self.calibration_method not in methods:
            raise UserError("ONNXQuantizationConfig(precision=%r) cannot use calibration_method=%r; use %s"
                            % (self.precision, self.calibration_method, " or ".join(methods)))
        if self.precision == "fp16" and self.nodes_to_exclude:
            raise UserError("ONNXQuantizationConfig(precision='fp16') converts the whole graph and cannot exclude "
                            "nodes; use ONNXAutoCastConfig(precision='fp16', nodes_to_exclude=...)")
        _check_patterns(self)


@dataclass(frozen=True)
class TorchQuantizationConfig:
    """Quantization of the torch module with ModelOpt (``modelopt.torch.quantization``) before export;
    ``quantization_config`` names one of ModelOpt's configs, e.g. ``"FP8_DEFAULT_CFG"``."""

    quantization_config: str = "INT8_DEFAULT_CFG"
    """The name of one of ModelOpt's quantization configs, e.g. ``"FP8_DEFAULT_CFG"``."""
    calibration_steps: int = 8
    """How many sample batches calibrate the quantizers."""

    def __post_init__(self) -> None:
        if not isinstance(self.calibration_steps, int) or self.calibration_steps < 1:
            raise UserError("TorchQuantizationConfig.calibration_steps must be a positive integer, got %r"
                            % (self.calibration_steps,))


QuantizationConfig = Union[ONNXAutoCastConfig, ONNXQuantizationConfig, TorchQuantizationConfig]
_QUANT_TYPES = {c.__name__: c for c in (ONNXAutoCastConfig, ONNXQuantizationConfig, TorchQuantizationConfig)}


def quantization_to_dict(q: QuantizationConfig | None) -> dict | None:
    if q is None:
        return None
    return {"type": type(q).__name__, **{k: list(v) if isinstance(v, tuple) else v
                                         for k, v in dataclasses.asdict(q).items()}}


def quantization_from_dict(d: dict | None) -> QuantizationConfig | None:
    if d is None:
        return None
    d = dict(d)
    name = d.pop("type", "")
    kind = _QUANT_TYPES.get(name)
    if kind is None:
        raise UserError("unknown quantization config type %r; use one of %s" % (name, ", ".join(_QUANT_TYPES)))
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return kind(**fields)


@dataclass(frozen=True)
class TensorRTBackendConfig:
    """How the TensorRT plan is built (AITune's field names and defaults)."""

    use_dynamo: bool = True
    """Export to ONNX with the dynamo-based exporter (``torch.onnx.export(dynamo=True)``); ``False``: TorchScript."""
    workspace_size: int | None = None
    """TensorRT builder workspace limit in bytes; ``None``: TensorRT's default (the GPU's memory)."""
    opset_version: int | None = None
    """ONNX opset of the export (9..23); ``None``: the exporter's default."""
    optimization_level: int | None = None
    """TensorRT builder optimization level 0..5 (higher searches longer for faster kernels); ``None``: TensorRT's
    default (3)."""
    compatibility_level: str | None = None
    """Hardware compatibility of the plan: ``ampere_plus`` (runs on any Ampere or newer GPU) or
    ``same_compute_capability``; ``None``: only GPUs like the build GPU."""
    timing_cache: Path | None = None
    """A TensorRT timing cache file, read before the build and written after it (faster rebuilds)."""
    profiles: Any = ProfileMode.SINGLE
    """Optimization profiles: ``ProfileMode.SINGLE`` (one min/opt/max profile over the serving range),
    ``ProfileMode.SAMPLES_USED`` (one profile per sample shape), or a list of ``TensorRTProfile``."""
    device: str = "cuda"
    """The device the plan is built for."""
    quantization_config: QuantizationConfig | None = None
    """Quantize before the build: ``ONNXAutoCastConfig``, ``ONNXQuantizationConfig`` or ``TorchQuantizationConfig``;
    ``None``: no quantization (``precision`` chooses the builder flags)."""
    enable_tf32: bool = True
    """Allow TF32 tensor-core math for fp32 layers."""
    use_cuda_graphs: bool = False
    """Serve the plan with CUDA graphs (Triton's TensorRT ``graphs`` optimization, one graph per profile's max
    batch)."""
    version_compatible: bool = False
    """Build a version-compatible plan, which a newer TensorRT runtime (e.g. a newer Triton container) can load."""
    precision: str = "fp32"
    """Builder precision flags when no ``quantization_config`` is given (a weakly typed build): ``fp32``, ``tf32``,
    ``fp16``, ``bf16``, ``int8`` or ``fp8``."""
    build_timeout_s: float = 3600.0
    """Time limit of the build's child process in seconds."""

    def __post_init__(self) -> None:
        if isinstance(self.profiles, str):
            try:
                object.__setattr__(self, "profiles", ProfileMode(self.profiles))
            except ValueError:
                raise UserError("profiles must be %s or a list of TensorRTProfile, got %r"
                                % (" or ".join(repr(m.value) for m in ProfileMode), self.profiles)) from None
        elif isinstance(self.profiles, list):
            object.__setattr__(self, "profiles", tuple(self.profiles))
        if not isinstance(self.profiles, ProfileMode) and not all(
                isinstance(p, TensorRTProfile) for p in self.profiles):
            raise UserError("profiles must be a ProfileMode or a list of TensorRTProfile")
        if self.timing_cache is not None and not isinstance(self.timing_cache, Path):
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if self.workspace_size is not None and self.workspace_size <= 0:
            raise UserError("workspace_size must be a positive number of bytes, got %r" % self.workspace_size)
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise UserError("optimization_level must be 0..5, got %r" % self.optimization_level)
        if self.compatibility_level not in (None, "ampere_plus", "same_compute_capability"):
            raise UserError("compatibility_level must be None, 'ampere_plus' or 'same_compute_capability', got %r"
                            % self.compatibility_level)
        if self.opset_version is not None and not 9 <= self.opset_version <= 23:
            raise UserError("opset_version must be between 9 and 23, got %r" % self.opset_version)
        if self.precision not in PRECISIONS:
            raise UserError("precision must be one of %s, got %r" % (", ".join(PRECISIONS), self.precision))
        q = self.quantization_config
        if q is not None and not isinstance(q, tuple(_QUANT_TYPES.values())):
            raise UserError("quantization_config must be one of %s or None, got %s"
                            % (", ".join(_QUANT_TYPES), type(q).__name__))
        if q is not None and self.precision not in ("fp32", "tf32"):
            raise UserError("precision=%r and quantization_config=%s both choose the precision; drop precision "
                            "(the quantization config decides it)" % (self.precision, type(q).__name__))

    @property
    def strongly_typed(self) -> bool:
        """The ONNX graph itself carries the precision (AutoCast / Q-DQ), so TensorRT must not re-decide it."""
        return isinstance(self.quantization_config, (ONNXAutoCastConfig, ONNXQuantizationConfig))

    @property
    def effective_precision(self) -> str:
        q = self.quantization_config
        if isinstance(q, (ONNXAutoCastConfig, ONNXQuantizationConfig)):
            return q.precision
        if isinstance(q, TorchQuantizationConfig):
            return "fp8" if "FP8" in q.quantization_config.upper() else "int8"
        return self.precision

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["profiles"] = (self.profiles.value if isinstance(self.profiles, ProfileMode)
                         else [p.to_dict() for p in self.profiles])
        d["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        d["quantization_config"] = quantization_to_dict(self.quantization_config)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorRTBackendConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError("unknown TensorRTBackendConfig field(s): %s" % ", ".join(sorted(unknown)))
        if "profiles" in d:
            d["profiles"] = profiles_from_dict(d["profiles"])
        if "quantization_config" in d:
            d["quantization_config"] = quantization_from_dict(d["quantization_config"])
        return cls(**d)

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    def describe(self) -> str:
        """Only the fields that differ from the defaults, e.g. ``precision=bf16,use_cuda_graphs=True``."""
        default = type(self)().to_dict()
        return ",".join("%s=%s" % (k, v) for k, v in self.to_dict().items() if default[k] != v)

    def key(self) -> str:
        """A stable hash of the settings (same config, same key, across processes)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "TensorRTBackendConfig":
        """A copy with ``changes`` applied, by ``GenerateConfig.replace``'s rule: a change of
        ``NOT_GIVEN`` is skipped (``None`` is a value), an unknown field is a UserError naming the fields."""
        return dataclasses.replace(self, **given_changes(type(self), changes))

