"""``GenerateConfig``: everything ``generate`` needs to know beyond the model itself.

One frozen dataclass shared by the CLI (options override fields), the Python API
(``get_config()`` in the user's model.py returns one) and the manifest (``to_dict``).
Validation lives here, in ``__post_init__``, and only here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from aitune_triton.defaults import PORTABLE, QUEUE_DELAY_US
from aitune_triton.errors import UserError
from aitune_triton.not_given import given_changes
from aitune_triton.numerics import ToleranceOverride
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.triton.model_name import validate_model_name

BACKENDS = ("python", "tensorrt", "onnxruntime")
FALLBACK_FORMATS = ("auto", "aoti", "export", "eager")
DEVICES = ("auto", "cpu", "cuda")


def _output_dims(value: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise UserError("output_dims must be a dict of output name -> dims, e.g. {'boxes': (-1, 4)}; got a %s"
                        % type(value).__name__)
    out = {}
    for name, dims in value.items():
        if not isinstance(name, str) or not isinstance(dims, (tuple, list)) or \
                any(isinstance(d, bool) or not isinstance(d, int) or not (d == -1 or d >= 1) for d in dims):
            raise UserError("output_dims[%r] = %r: give a tuple of sizes >= 1 or -1 (varies), without the batch axis"
                            % (name, dims))
        out[name] = tuple(dims)
    return out


def _input_ranges(value: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict):
        raise UserError("input_ranges must be a dict of input name -> (low, high), e.g. {'lengths': (1, 16)}; "
                        "got a %s" % type(value).__name__)
    out = {}
    for name, bounds in value.items():
        ok = isinstance(name, str) and isinstance(bounds, (tuple, list)) and len(bounds) == 2 and \
            all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        if not ok or not bounds[0] <= bounds[1]:
            raise UserError("input_ranges[%r] = %r: give (low, high) numbers with low <= high" % (name, bounds))
        out[name] = (float(bounds[0]), float(bounds[1]))
    return out


def _axis_ranges(value: Any) -> dict[str, dict[int, tuple[int, int]]]:
    if not isinstance(value, dict):
        raise UserError("axis_ranges must be a dict of input name -> {axis: (min, max)}, e.g. "
                        "{'input_ids': {1: (1, 512)}}; got a %s" % type(value).__name__)
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for name, axes in value.items():
        if not isinstance(name, str) or not isinstance(axes, dict):
            raise UserError("axis_ranges[%r] = %r: give {axis: (min, max)}, e.g. {1: (1, 512)}" % (name, axes))
        for axis, bounds in axes.items():
            axis_i = int(axis) if isinstance(axis, str) and axis.isdigit() else axis  # JSON keys are strings
            ok = isinstance(axis_i, int) and not isinstance(axis_i, bool) and axis_i >= 0 and \
                isinstance(bounds, (tuple, list)) and len(bounds) == 2 and \
                all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            if not ok or not 1 <= bounds[0] <= bounds[1]:
                raise UserError("axis_ranges[%r][%r] = %r: give (min, max) sizes with 1 <= min <= max"
                                % (name, axis, bounds))
            out.setdefault(name, {})[axis_i] = (int(bounds[0]), int(bounds[1]))
    return out


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate. ``None`` fields are derived from the samples (and recorded in the manifest)."""

    name: str | None = None
    """Triton model name; ``None``: the model.py's folder name. Letters, digits, ``_`` and ``-``."""
    backends: tuple[str, ...] = ("python", "tensorrt")
    """Which models to write: ``python`` (the PyTorch fallback, serves anywhere), ``tensorrt`` (the plan where
    TensorRT and a GPU are here, else its staging), ``onnxruntime`` (the checked ONNX on Triton's ONNX Runtime
    backend)."""
    max_batch_size: int | None = None
    """Largest batch a request (or a dynamic batch) may have; ``None``: measured on the target device (doubling
    while rows/s still improves and latency stays inside ``budget_ms``), recorded with its curve in the manifest."""
    batch_axis: bool | None = None
    """Whether axis 0 is a batch axis; ``None``: decided from the samples (every input and output shares a leading
    size that varies across samples)."""
    instances: int = 1
    """Model instances per device (per GPU for GPU instances: Triton's count is per listed GPU)."""
    gpus: tuple[int, ...] | None = None
    """GPUs to place GPU instances on (``instance_group gpus``); ``None``: every GPU visible at generate time."""
    device: str = "auto"
    """Where the fallback runs: ``cpu``, ``cuda``, or ``auto`` (``cuda`` where a GPU is visible)."""
    max_queue_delay_us: int | None = None
    """Dynamic batching queue delay in microseconds; ``None``: the default in ``aitune_triton/defaults.py``."""
    fallback_format: str = "auto"
    """The PyTorch fallback's format: ``aoti`` (AOTInductor package), ``export`` (a ``torch.export`` program),
    ``eager`` (your module's source and weights), or ``auto`` (the first of those that matches eager)."""
    portable: bool = PORTABLE
    """An artifact that loads on any host: no AOTInductor package (machine code for this host's CPU instruction set
    and GPU), the ExportedProgram instead. For a serving fleet unlike the generating machine."""
    tensorrt: TensorRTBackendConfig = field(default_factory=TensorRTBackendConfig)
    """How the TensorRT plan is built: profiles, precision, quantization and builder options."""
    atol: float | None = None
    """Absolute per-element tolerance of the checks against eager PyTorch; ``None``: the output dtype's default."""
    rtol: float | None = None
    """Relative per-element tolerance of the checks against eager PyTorch; ``None``: the output dtype's default."""
    rel_l2: float | None = None
    """For float16/bfloat16 outputs, the relative L2 error ``|got - eager| / |eager|`` that still passes (deep
    networks' rounding grows with depth); ``None``: 0.02 for float16, 0.05 for bfloat16."""
    warmup: bool = True
    """Write ``model_warmup`` entries (from the samples) so the first request does not pay for warm-up."""
    description: str = ""
    """Free text written into the model README."""
    strategy: str | None = None
    """Build every fallback format, time each and keep the best by this rule: ``min-latency``, ``max-throughput``
    or ``latency-budget`` (with ``budget_ms``); ``None``: the first format that matches eager."""
    budget_ms: float | None = None
    """Latency budget in milliseconds: for ``strategy="latency-budget"`` and for the measured ``max_batch_size``."""
    output_dims: dict[str, tuple[int, ...]] | None = None
    """Triton dims per output (no batch axis, ``-1`` for a size that varies with the values) where probing the model
    cannot tell, e.g. ``{"boxes": (-1, 4)}`` for a detector."""
    input_ranges: dict[str, tuple[float, float]] | None = None
    """``(low, high)`` of the values valid for an input; validate draws values outside the samples' own ones only
    within these, e.g. ``{"lengths": (1, 16)}``."""
    axis_ranges: dict[str, dict[int, tuple[int, int]]] | None = None
    """The sizes an input axis accepts, e.g. ``{"input_ids": {1: (1, 512)}}`` (``--axis input_ids:1=1..512``).
    Axes not named get a range chosen for serving: the model's own limit (``max_position_embeddings``), else probed
    beyond the samples. The batch axis is ``max_batch_size``."""
    make_inputs: Callable[[dict[str, tuple[int, ...]]], dict[str, Any]] | None = None
    """``fn({input name: full shape}) -> {input name: tensor}``: valid inputs of any shape, for the edge shapes
    validate sends where cutting the samples cannot make valid ones (called by generate and stored in
    ``edge_inputs.npz``; the manifest records its name only)."""
    max_detections: int | None = None
    """For a model returning one dict per image (a detector): the rows per image it is served padded to; more are
    cut, and the ``num_detections`` output says how many are real. ``None``: the most its samples returned."""

    def __post_init__(self) -> None:
        if self.name is not None:
            validate_model_name(self.name)
        if self.backends is None:
            object.__setattr__(self, "backends", ())
        if isinstance(self.backends, (list, str)):
            object.__setattr__(self, "backends", tuple([self.backends] if isinstance(self.backends, str)
                                                       else self.backends))
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise UserError("unknown backend(s) %s; choose from %s" % (bad or "(none)", ", ".join(BACKENDS)))
        if self.max_batch_size is not None and (not isinstance(self.max_batch_size, int) or self.max_batch_size < 1):
            raise UserError("max_batch_size must be a positive integer, got %r; omit it to derive it from the samples"
                            % (self.max_batch_size,))
        if not isinstance(self.instances, int) or not 1 <= self.instances <= 64:
            raise UserError("instances must be 1..64, got %r" % (self.instances,))
        if self.gpus is not None:
            gpus = (self.gpus,) if isinstance(self.gpus, int) else tuple(self.gpus)
            if not gpus or any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in gpus) \
                    or len(set(gpus)) != len(gpus):
                raise UserError("gpus must be distinct GPU indices >= 0 (e.g. 0,1), got %r" % (self.gpus,))
            object.__setattr__(self, "gpus", gpus)
        if self.device not in DEVICES:
            raise UserError("device must be one of %s, got %r" % (", ".join(DEVICES), self.device))
        if self.fallback_format not in FALLBACK_FORMATS:
            raise UserError("fallback_format must be one of %s, got %r"
                            % (", ".join(FALLBACK_FORMATS), self.fallback_format))
        if not isinstance(self.portable, bool):
            raise UserError("portable must be True or False, got %r" % (self.portable,))
        if self.portable and self.fallback_format == "aoti":
            raise UserError("portable and fallback_format 'aoti' contradict: an AOTInductor package is machine code "
                            "for the host that compiles it; use fallback_format 'export' or 'auto'")
        if self.max_queue_delay_us is not None and not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise UserError("max_queue_delay_us must be 0..10000000, got %r" % self.max_queue_delay_us)
        for tol in ("atol", "rtol", "rel_l2"):
            v = getattr(self, tol)
            if v is not None and not v >= 0:
                raise UserError("%s must be >= 0, got %r" % (tol, v))
        if self.strategy not in (None, "min-latency", "max-throughput", "latency-budget"):
            raise UserError("strategy must be min-latency, max-throughput or latency-budget, got %r" % self.strategy)
        # any budget given is a latency limit (also of the measured max_batch_size), not only the strategy's
        if self.budget_ms is not None and not (isinstance(self.budget_ms, (int, float))
                                               and not isinstance(self.budget_ms, bool)
                                               and math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise UserError("budget_ms (--budget-ms) must be a finite number of milliseconds > 0, got %r"
                            % (self.budget_ms,))
        if self.strategy == "latency-budget" and self.budget_ms is None:
            raise UserError("strategy latency-budget needs budget_ms > 0 (--budget-ms)")
        if isinstance(self.tensorrt, dict):
            object.__setattr__(self, "tensorrt", TensorRTBackendConfig.from_dict(self.tensorrt))
        if not isinstance(self.tensorrt, TensorRTBackendConfig):
            raise UserError("tensorrt must be a TensorRTBackendConfig (or a dict of its fields), got %r"
                            % (self.tensorrt,))
        if self.output_dims is not None:
            object.__setattr__(self, "output_dims", _output_dims(self.output_dims))
        if self.input_ranges is not None:
            object.__setattr__(self, "input_ranges", _input_ranges(self.input_ranges))
        if self.axis_ranges is not None:
            object.__setattr__(self, "axis_ranges", _axis_ranges(self.axis_ranges))
        if self.max_detections is not None and (not isinstance(self.max_detections, int)
                                                or isinstance(self.max_detections, bool) or self.max_detections < 1):
            raise UserError("max_detections must be a positive integer (detections served per image), got %r"
                            % (self.max_detections,))
        if isinstance(self.make_inputs, str):  # the name a manifest recorded: the function itself is not kept
            object.__setattr__(self, "make_inputs", None)
        if self.make_inputs is not None and not callable(self.make_inputs):
            raise UserError("make_inputs must be a function {input name: shape} -> {input name: tensor}, got a %s"
                            % type(self.make_inputs).__name__)

    @property
    def tolerance_override(self) -> ToleranceOverride | None:
        """The user's tolerance for float outputs, None when none was given. A field left out stays
        None: ``numerics.tolerance_for`` fills it from each output dtype's own default (filling it
        here from float32's tightened a float16/bfloat16 output's other per-element bound)."""
        if self.atol is None and self.rtol is None and self.rel_l2 is None:
            return None
        return ToleranceOverride(self.atol, self.rtol, self.rel_l2)

    @property
    def queue_delay_us(self) -> int:
        return QUEUE_DELAY_US if self.max_queue_delay_us is None else self.max_queue_delay_us

    def replace(self, **changes: Any) -> "GenerateConfig":
        """A copy with ``changes`` applied; a change of :data:`NOT_GIVEN` is skipped (``None`` is a value),
        an unknown field is a UserError naming the fields."""
        return dataclasses.replace(self, **given_changes(type(self), changes))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["backends"] = list(self.backends)
        d["tensorrt"] = self.tensorrt.to_dict()
        for key in ("output_dims", "input_ranges"):
            if d[key] is not None:
                d[key] = {k: list(v) for k, v in d[key].items()}
        if self.axis_ranges is not None:
            d["axis_ranges"] = {k: {str(a): list(r) for a, r in v.items()} for k, v in self.axis_ranges.items()}
        if self.make_inputs is not None:
            d["make_inputs"] = getattr(self.make_inputs, "__qualname__", repr(self.make_inputs))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GenerateConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError("unknown GenerateConfig field(s): %s" % ", ".join(sorted(unknown)))
        return cls(**d)


def check_override_fields(overrides: Mapping[str, Any]) -> None:
    """The names of ``generate``'s overrides (and of their ``"tensorrt"`` dict) before model.py is
    loaded or a checkpoint's weights are: a misspelt field is one line naming the valid ones, not a
    TypeError after the load. Their values are checked where they are applied, against get_config()."""
    given_changes(GenerateConfig, overrides, "the overrides")
    trt = overrides.get("tensorrt")
    if isinstance(trt, Mapping):
        given_changes(TensorRTBackendConfig, trt, "the overrides' tensorrt")
