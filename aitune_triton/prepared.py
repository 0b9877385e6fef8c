"""What ``generate`` derives from model.py before anything is written (``Prepared``: the
source, the effective config, the recorded spec, the profiles, the serving envelope and the
reference outputs on the serving device), and the per-model pieces every backend's model
directory is written from: its config mapping, its manifest, the reference and warm-up files,
the ONNX export and the fallback build."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from aitune_triton.version import __version__
from aitune_triton.config import GenerateConfig
from aitune_triton.not_given import NOT_GIVEN
from aitune_triton.numerics import to_numpy, tolerance_for
from aitune_triton.envelope import Envelope, Source, apply_envelope, choose_envelope
from aitune_triton.errors import ModelError, UserError
from aitune_triton.source import ModelSource, load_model_source
from aitune_triton.spec import IOSpec, Sample, call_with_feed, flatten_outputs, record_spec, sample_feed
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.profile_set import ProfileMode, ProfileSet
from aitune_triton.tensorrt.profiles import derive_profiles, narrower_than
from aitune_triton.probe_section import ChecksSection
from aitune_triton.reference_data import REFERENCE, ReferenceCase, save_reference
from aitune_triton.triton.manifest import Manifest, Versions
from aitune_triton.probe import ProbeResult, probe
from aitune_triton.triton.mapping import MappingOptions, ModelConfigPlan, client_shape_notes, plan_model_config
from aitune_triton.triton.warmup import write_warmup
from aitune_triton.user_code import resolve_timeout

Progress = Callable[[str], None]  # called with a message as each stage starts


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but torch sees no GPU; use --device cpu")
    return device


def versions(device: str) -> Versions:
    exporters: dict[str, str | None] = {}
    for mod in ("onnx", "onnxruntime"):
        try:
            exporters[mod] = __import__(mod).__version__
        except ImportError:
            exporters[mod] = None
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    capability = "%d.%d" % torch.cuda.get_device_capability(0) if device == "cuda" else None
    return Versions(aitune_triton=__version__, python=platform.python_version(), torch=torch.__version__,
                    cuda=torch.version.cuda, device=device, onnx=exporters["onnx"],
                    onnxruntime=exporters["onnxruntime"], gpu=gpu, compute_capability=capability)


def default_model_name(path: Path) -> str:
    stem = path.parent.name if path.stem == "model" else path.stem
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).lstrip("._-")
    return name or "model"


def check_outputs_finite(spec: IOSpec, outputs: tuple) -> None:
    for i, out in enumerate(outputs):
        for name, t in flatten_outputs(out):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ModelError("output %r of sample %d contains NaN or Inf; fix the model or the sample "
                                 "(reference outputs must be finite to validate against)" % (name, i))


def reference_cases(spec: IOSpec, samples: tuple[Sample, ...], outputs: tuple) -> list[ReferenceCase]:
    return [ReferenceCase({k: to_numpy(v) for k, v in sample_feed(spec, s).items()},
                          {k: to_numpy(v) for k, v in flatten_outputs(o)})
            for s, o in zip(samples, outputs, strict=True)]


@dataclass(frozen=True)
class Prepared:
    """Everything derived from model.py before anything is written."""

    source: ModelSource
    config: GenerateConfig
    spec: IOSpec
    profiles: ProfileSet
    name: str
    device: str
    probe: ProbeResult | None = None
    envelope: Envelope | None = None
    # the samples' eager outputs computed on ``device`` (the reference every artifact and validate
    # are compared with); None: ``source.outputs``, already computed there
    device_outputs: tuple | None = None

    @property
    def outputs(self) -> tuple:
        return self.source.outputs if self.device_outputs is None else self.device_outputs

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user must know about how the model is served (batching, output dims, shapes)."""
        notes = self.source.notes + (self.probe.notes if self.probe else ()) + client_shape_notes(self.spec)
        if "tensorrt" in self.config.backends:
            narrow = narrower_than(self.spec, self.profiles)
            if narrow:
                notes += ("the TensorRT profiles (%s) take a narrower range than the fallback: %s; requests outside "
                          "them are refused by the TensorRT model (ProfileMode.SINGLE or wider profiles cover it)"
                          % (self.profiles.mode, "; ".join(narrow)),)
        return notes

    @property
    def envelope_lines(self) -> tuple[str, ...]:
        return self.envelope.lines(self.spec) if self.envelope else ()


def _envelope(source: ModelSource, spec: IOSpec, config: GenerateConfig, device: str) -> Envelope:
    """The serving envelope (``aitune_triton.envelope``); user TensorRT profiles without a
    ``max_batch_size`` keep deciding the batch, as they did before the envelope existed."""
    by_profiles = not isinstance(config.tensorrt.profiles, ProfileMode) and config.max_batch_size is None
    env = choose_envelope(source.model, spec, source.samples, device=device, declared=config.axis_ranges,
                          max_batch_size=1 if by_profiles else config.max_batch_size, budget_ms=config.budget_ms)
    if by_profiles:  # the max batch is the profiles' (prepare sets it once they are derived)
        env = dataclasses.replace(env, batch_source=Source.DECLARED, batch_detail="the TensorRT profiles")
    return env


def model_names(backends: tuple[str, ...], name: str) -> dict[str, str]:
    """Triton model name per backend: the fallback keeps the plain name (it serves first)."""
    names = {}
    for backend in backends:
        names[backend] = {"python": name, "tensorrt": name + "_trt", "onnxruntime": name + "_onnx"}[backend]
    if "python" not in names and "tensorrt" in names:
        names["tensorrt"] = name
    return names


def prepare(model_py: Path, overrides: dict | None = None, model_py_timeout_s: float | None = None,
            names_known: Callable[[dict[str, str]], None] | None = None) -> Prepared:
    """Everything derived from model.py before anything is written, the serving envelope included
    (part of the spec stage: its errors come before anything else is printed). ``model_py_timeout_s``:
    the limit on importing model.py and on ``get_samples()`` (None: from ``$AITUNE_MODEL_PY_TIMEOUT_S``
    or the default; 0: none). ``names_known(model_names)`` is called as soon as the config is final,
    before the probe and the batch measurement, so a caller can refuse them (an existing model) early."""
    max_detections = (overrides or {}).get("max_detections")
    source = load_model_source(model_py, None if max_detections is NOT_GIVEN else max_detections,
                               resolve_timeout(model_py_timeout_s))
    config = source.config or GenerateConfig()
    if overrides:
        trt_over = overrides.pop("tensorrt", NOT_GIVEN)
        cli_axes = overrides.get("axis_ranges")
        if isinstance(cli_axes, dict) and config.axis_ranges:  # --axis adds to get_config()'s ranges
            overrides["axis_ranges"] = {**config.axis_ranges, **{k: {**config.axis_ranges.get(k, {}), **v}
                                                                 for k, v in cli_axes.items()}}
        config = config.replace(**overrides)
        # a dict changes get_config()'s TensorRT fields one by one (NOT_GIVEN keeps one); anything
        # else replaces the whole config, checked by GenerateConfig
        config = config.replace(tensorrt=config.tensorrt.replace(**trt_over) if isinstance(trt_over, Mapping)
                                else trt_over)
    name = config.name or default_model_name(source.path)
    if names_known is not None:
        names_known(model_names(config.backends, name))
    from aitune_triton.tensorrt.quantized_onnx import check_applicable

    check_applicable(config.backends, config.tensorrt)
    spec = record_spec(source.model, source.samples, source.outputs, config.batch_axis)
    check_outputs_finite(spec, source.outputs)
    unknown = sorted(set(config.input_ranges or {}) - {t.name for t in spec.inputs})
    if unknown:
        raise UserError("input_ranges names unknown input(s) %s; the inputs are %s"
                        % (unknown, [t.name for t in spec.inputs]))
    probed = probe(source.model, spec, source.samples, config.tolerance_override, config.output_dims)
    device = resolve_device(config.device)
    env = _envelope(source, probed.spec, config, device)
    spec = apply_envelope(probed.spec, env)
    custom = not isinstance(config.tensorrt.profiles, ProfileMode)
    profiles = derive_profiles(spec, source.samples, config.tensorrt.profiles,
                               config.max_batch_size if custom else (env.max_batch_size if spec.batching else None),
                               declared=config.axis_ranges)
    if custom and spec.batching:
        env = dataclasses.replace(env, max_batch_size=profiles.max_batch_size)
    return Prepared(source, config, spec, profiles, name, device, probed, env,
                    outputs_on_device(source, spec, device))


def outputs_on_device(source: ModelSource, spec: IOSpec, device: str) -> tuple | None:
    """The samples' eager outputs computed on ``device`` with the model's own dtypes, when model.py
    built the model elsewhere (a float16 model on the CPU served on the GPU): the served artifact
    runs there, so its reference must too. None when the outputs were computed there already."""
    from aitune_triton.export.torch_program import on_device

    leaves = [t for out in source.outputs for _, t in flatten_outputs(out)]
    if all(t.device.type == device for t in leaves):
        return None
    try:
        model = on_device(source.model, device)
        with torch.inference_mode():
            return tuple(call_with_feed(model, spec, {k: v.to(device) for k, v in sample_feed(spec, s).items()})
                         for s in source.samples)
    except Exception as exc:  # the model's own failure on that device, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError("the model runs on %s in model.py but fails on %s, where the fallback would serve it: "
                         "%s: %s; generate with --device %s, or fix the model for %s"
                         % (", ".join(sorted({t.device.type for t in leaves})), device, type(exc).__name__,
                            first[:300], leaves[0].device.type if leaves else "cpu", device)) from exc


def _mapping(prep: Prepared, name: str, backend: str, warmup_dims, **extra) -> ModelConfigPlan:
    kind = "KIND_GPU" if prep.device == "cuda" else "KIND_CPU"
    return plan_model_config(prep.spec, prep.profiles, MappingOptions(
        name=name, backend=backend, max_batch_size=prep.profiles.max_batch_size, instances=prep.config.instances,
        kind=kind, gpus=(prep.config.gpus or ()) if "GPU" in kind or backend == "tensorrt" else (),
        visible_gpus=torch.cuda.device_count(), queue_delay_us=prep.config.queue_delay_us,
        use_cuda_graphs=prep.config.tensorrt.use_cuda_graphs,
        warmup_dims=warmup_dims if prep.config.warmup else None, description=prep.config.description, **extra))


def _manifest(prep: Prepared, name: str, backend: str, **sections) -> Manifest:
    override = prep.config.tolerance_override
    return Manifest(
        name=name, backend=backend, spec=prep.spec, profiles=prep.profiles,
        max_batch_size=prep.profiles.max_batch_size,
        tolerances={t.name: tolerance_for(t.dtype, override) for t in prep.spec.outputs},
        versions=versions(prep.device), config=prep.config.to_dict(),
        checks=dataclasses.replace(prep.probe.checks if prep.probe else ChecksSection(), notes=prep.notes),
        envelope=prep.envelope, **sections)


def _write_common(prep: Prepared, model_dir: Path) -> dict:
    save_reference(model_dir / REFERENCE, reference_cases(prep.spec, prep.source.samples, prep.outputs))
    if prep.config.make_inputs is not None:  # validate has no model.py: its edge inputs are made now
        from aitune_triton.validate.edge_inputs import EDGE_INPUTS, save_edge_inputs

        save_edge_inputs(model_dir / EDGE_INPUTS, prep.config.make_inputs, prep.spec, prep.profiles,
                         prep.profiles.max_batch_size,
                         joint_corner=prep.envelope.joint_corner_ok() if prep.envelope else True)
    return write_warmup(prep.spec, prep.source.samples[0], model_dir / "warmup")


def _export_onnx(prep: Prepared, path: Path, progress: Progress):
    from aitune_triton.export.onnx import export_onnx

    progress("exporting ONNX and checking it with ONNX Runtime")
    trt: TensorRTBackendConfig = prep.config.tensorrt
    return export_onnx(prep.source.model, prep.spec, prep.source.samples, prep.profiles, path,
                       use_dynamo=trt.use_dynamo, opset_version=trt.opset_version,
                       tolerance=prep.config.tolerance_override)


def _build_fallback(prep: Prepared, version_dir: Path, fmt: str):
    from aitune_triton.export.torch_export import build_fallback

    return build_fallback(prep.source.path, prep.source.model, prep.spec, prep.source.samples, prep.outputs,
                          prep.profiles, version_dir, device=prep.device, preferred=fmt,
                          tolerance=prep.config.tolerance_override, portable=prep.config.portable,
                          retry_crashed=prep.config.fallback_format == "aoti",
                          joint_corner=prep.envelope.joint_corner_ok() if prep.envelope else True)
