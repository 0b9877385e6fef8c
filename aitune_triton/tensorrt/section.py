"""The manifest's ``tensorrt`` section: where the TensorRT model stands, and what went into it.

Kept free of torch/onnx imports: ``manifest.json`` is read by every command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class PlanStatus(str, Enum):
    """``pending``: the checked ONNX, config and build_plan.sh are staged, no plan yet (the reason
    says why: no TensorRT or GPU here, or the stage of the build that failed); ``built``:
    ``generate`` or ``build-plan`` built the plan, checked it against eager PyTorch and activated
    it; ``export_failed``: no ONNX could be staged (the reason says why; the Python fallback serves)."""

    PENDING = "pending"
    BUILT = "built"
    EXPORT_FAILED = "export_failed"


class QuantMethod(str, Enum):
    """Which ModelOpt entry point produced the staged ONNX."""

    ONNX_PTQ = "modelopt.onnx.quantization.quantize"
    ONNX_FP16 = "modelopt.onnx.autocast.convert_to_f16"
    ONNX_AUTOCAST = "modelopt.onnx.autocast.convert_to_mixed_precision"
    TORCH_PTQ = "modelopt.torch.quantization.quantize"


@dataclass(frozen=True)
class QuantizationRecord:
    """Exactly what was applied to the staged ONNX (see ``tensorrt/quantized_onnx.py``):
    ``graph`` counts Q/DQ and Cast nodes, ``check`` is the ONNX Runtime check against eager with
    the per-output tolerances of ``tolerance_rule``, ``build_flags`` the precision flags of the build."""

    method: QuantMethod
    config: dict
    precision: str
    tool: str
    calibration_samples: int
    calibration_method: str | None
    excluded_nodes: tuple[str, ...]
    graph: dict[str, int]
    exporter: str
    strongly_typed: bool
    build_flags: tuple[str, ...]
    tolerance_rule: str
    check: dict
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", QuantMethod(self.method))
        for name in ("excluded_nodes", "build_flags", "notes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def check_ok(self) -> bool:
        return not self.check.get("skipped") and all(o["ok"] for o in self.check.get("outputs", ()))

    def summary(self) -> str:
        """One line, e.g. ``int8 by modelopt.onnx.quantization.quantize: 4 Q / 4 DQ; ONNX Runtime vs eager ok``."""
        g = self.graph
        if self.method in (QuantMethod.ONNX_AUTOCAST, QuantMethod.ONNX_FP16):
            nodes = "%d Cast, %d low-precision initializers" % (g.get("Cast", 0),
                                                                 g.get("low_precision_initializers", 0))
        else:
            nodes = "%d Q / %d DQ" % (g.get("QuantizeLinear", 0), g.get("DequantizeLinear", 0))
        if self.check.get("skipped"):
            verdict = "skipped (%s)" % self.check["skipped"]
        else:
            worst = max((o["max_abs_err"] / o["atol"] if o["atol"] else 0.0 for o in self.check.get("outputs", ())),
                        default=0.0)
            verdict = "%s (worst error %.2g of atol)" % ("ok" if self.check_ok else "FAIL", worst)
        return "%s by %s: %s; ONNX Runtime vs eager %s; build %s" % (
            self.precision, self.method.value, nodes, verdict, " ".join(self.build_flags) or "without precision flags")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        for name in ("excluded_nodes", "build_flags", "notes"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizationRecord":
        return cls(**d)


@dataclass(frozen=True)
class TensorRTSection:
    """The manifest's ``tensorrt`` section. Paths are relative to the model directory."""

    status: PlanStatus
    model_name: str | None = None
    reason: str = ""
    onnx: str | None = None
    build_script: str | None = None
    config: str | None = None
    onnx_check: dict | None = None
    opset: int | None = None
    exporter: str | None = None
    settings: dict = field(default_factory=dict)
    quantization: QuantizationRecord | None = None
    stamp: dict | None = None
    check: dict | None = None  # the built plan against eager PyTorch on the samples (``PlanCheck.to_dict``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", PlanStatus(self.status))
        if isinstance(self.quantization, dict):
            object.__setattr__(self, "quantization", QuantizationRecord.from_dict(self.quantization))

    def replace(self, **changes: Any) -> "TensorRTSection":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Fields that are unset (None, empty settings) are left out: a plain staged model's section
        reads as it did before quantization and stamps were recorded."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["status"] = self.status.value
        d["quantization"] = self.quantization.to_dict() if self.quantization else None
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorRTSection":
        """Raises ``ValueError`` on unknown fields or a bad status (``Manifest.load`` reports it)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError("unknown tensorrt field(s) %s" % ", ".join(sorted(unknown)))
        return cls(**d)
