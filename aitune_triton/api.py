"""The Python API behind the CLI: ``generate`` runs the pipeline stage by stage.

model.py ─load─▶ ModelSource ─record─▶ IOSpec ─profiles─▶ ProfileSet ─fallback─▶ FallbackArtifact
  ─export─▶ OnnxArtifact, staged with the TensorRT config and build_plan.sh ─build─▶ plan (see below)
  ─map─▶ ModelConfigPlan ─render─▶ config.pbtxt ─write─▶ model directories + manifest

The TensorRT model takes one of two paths, decided by ``tensorrt.availability.build_status``
(``doctor`` shows the same answer):

* TensorRT imports as a builder and creates one (a GPU is usable): ``build_tensorrt_model`` builds
  the plan from the staged ONNX in a child process, runs it on the samples against the eager
  outputs, and writes ``<name>_trt/`` as a ready model. A parse, build or check failure becomes one
  note naming the stage and the build log; the staging stays and the model is ``pending``.
* Otherwise (TensorRT not installed, or installed without a usable GPU; the note says which): the
  staging only, ``pending``, for ``build-plan`` or ``build_plan.sh`` in a TensorRT/Triton container.

``build-plan`` (``build_plans``) runs the same ``build_tensorrt_model`` on a staged repository.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import shlex
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch

from aitune_triton.version import __version__
from aitune_triton.config import NOT_GIVEN, GenerateConfig, NotGiven
from aitune_triton.numerics import tolerance_for
from aitune_triton.envelope import Envelope, Source, apply_envelope, choose_envelope
from aitune_triton.errors import ModelError, UserError
from aitune_triton.triton.model_check import verify_model
from aitune_triton.source import ModelSource, load_model_source
from aitune_triton.spec import IOSpec, Sample, call_with_feed, flatten_outputs, record_spec, sample_feed
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.profile_set import ProfileSet
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles, narrower_than
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.tensorrt.stamp import LoaderFacts
from aitune_triton.triton import repository
from aitune_triton.numerics import to_numpy
from aitune_triton.probe_section import ChecksSection
from aitune_triton import pipeline
from aitune_triton.reference_data import REFERENCE, ReferenceCase, save_reference
from aitune_triton.triton.manifest import Manifest, OnnxSection, Versions
from aitune_triton.probe import ProbeResult, probe
from aitune_triton.triton.mapping import MappingOptions, ModelConfigPlan, client_shape_notes, plan_model_config
from aitune_triton.triton.render import SCHEMA_SKIPPED, render_config, schema, write_config
from aitune_triton.triton.tuning_section import TuningSection
from aitune_triton.user_code import contained, resolve_timeout

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

TRT_STAGE_DIR = "tensorrt"


class ModelStatus(str, Enum):
    """A generated model: ``ready`` to serve, or ``pending`` (a staged TensorRT plan not built yet)."""

    READY = "ready"
    PENDING = "pending"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GeneratedModel:
    name: str
    backend: str
    path: Path
    status: ModelStatus
    detail: str = ""


@dataclass(frozen=True)
class GenerateResult:
    repository: Path
    models: tuple[GeneratedModel, ...]
    notes: tuple[str, ...] = field(default=())
    selection: Any = None
    envelope: tuple[str, ...] = field(default=())  # one line per input: the sizes it accepts


@dataclass(frozen=True)
class GenerateOptions:
    """What this run changes in the model's ``get_config()``, field by field: a field left
    ``NOT_GIVEN`` keeps ``get_config()``'s value (or the default), ``None`` sets it to None
    (derived from the samples). ``tensorrt`` changes ``TensorRTBackendConfig`` fields the same
    way. ``force`` replaces models of the same name in the repository; ``model_py_timeout_s``
    limits importing model.py and its ``get_samples()``."""

    name: str | None | NotGiven = NOT_GIVEN
    backends: tuple[str, ...] | NotGiven = NOT_GIVEN
    max_batch_size: int | None | NotGiven = NOT_GIVEN
    instances: int | NotGiven = NOT_GIVEN
    gpus: tuple[int, ...] | None | NotGiven = NOT_GIVEN
    device: str | NotGiven = NOT_GIVEN
    max_queue_delay_us: int | None | NotGiven = NOT_GIVEN
    fallback_format: str | NotGiven = NOT_GIVEN
    portable: bool | NotGiven = NOT_GIVEN
    strategy: str | None | NotGiven = NOT_GIVEN
    budget_ms: float | None | NotGiven = NOT_GIVEN
    axis_ranges: dict[str, Any] | None | NotGiven = NOT_GIVEN
    atol: float | None | NotGiven = NOT_GIVEN
    rtol: float | None | NotGiven = NOT_GIVEN
    rel_l2: float | None | NotGiven = NOT_GIVEN
    tensorrt: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    model_py_timeout_s: float | None = None  # importing model.py and get_samples(); None: the default, 0: none
    task: str | None = None  # for a Hugging Face checkpoint directory: the task to serve

    def overrides(self) -> dict[str, Any]:
        """The ``GenerateConfig`` changes, as ``generate``'s ``overrides`` takes them."""
        changes: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                   if f.name not in ("tensorrt", "force", "model_py_timeout_s", "task")
                                   and getattr(self, f.name) is not NOT_GIVEN}
        changes["tensorrt"] = dict(self.tensorrt)
        return changes


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


def write_warmup(spec: IOSpec, sample: Sample, warmup_dir: Path) -> dict[str, tuple[int, ...]]:
    """One batch item per input as raw row-major bytes (Triton replicates it to the batch size)."""
    warmup_dir.mkdir()
    dims = {}
    for t in spec.inputs:
        value = sample_feed(spec, sample)[t.name]
        item = value[0] if spec.batching else value
        if item.dim() == 0:
            item = item.reshape(1)
        (warmup_dir / ("%s.bin" % t.name)).write_bytes(item.contiguous().cpu().view(torch.uint8).numpy().tobytes()
                                                     if item.dtype == torch.bfloat16 else
                                                     item.contiguous().cpu().numpy().tobytes())
        dims[t.name] = tuple(item.shape)
    return dims


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


def prepare(model_py: Path, overrides: dict | None = None, model_py_timeout_s: float | None = None) -> Prepared:
    """Everything derived from model.py before anything is written, the serving envelope included
    (part of the spec stage: its errors come before anything else is printed). ``model_py_timeout_s``:
    the limit on importing model.py and on ``get_samples()`` (None: from ``$AITUNE_MODEL_PY_TIMEOUT_S``
    or the default; 0: none)."""
    source = load_model_source(model_py, (overrides or {}).get("max_detections"), resolve_timeout(model_py_timeout_s))
    config = source.config or GenerateConfig()
    if overrides:
        trt_over = overrides.pop("tensorrt", None) or {}
        cli_axes = overrides.get("axis_ranges")
        if isinstance(cli_axes, dict) and config.axis_ranges:  # --axis adds to get_config()'s ranges
            overrides["axis_ranges"] = {**config.axis_ranges, **{k: {**config.axis_ranges.get(k, {}), **v}
                                                                 for k, v in cli_axes.items()}}
        config = config.replace(**overrides)
        if trt_over:
            config = config.replace(tensorrt=config.tensorrt.replace(**trt_over))
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
    name = config.name or default_model_name(source.path)
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


def model_names(prep: Prepared) -> dict[str, str]:
    """Triton model name per backend: the fallback keeps the plain name (it serves first)."""
    names = {}
    for backend in prep.config.backends:
        names[backend] = {"python": prep.name, "tensorrt": prep.name + "_trt",
                          "onnxruntime": prep.name + "_onnx"}[backend]
    if "python" not in names and "tensorrt" in names:
        names["tensorrt"] = prep.name
    return names


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


def _select_fallback(prep: Prepared, version_dir: Path, strategy: str, progress: Progress):
    """Stage-1 tuning: build every fallback format, measure each against eager in-process and keep
    the one the strategy picks (eager when nothing beats it by the margin)."""
    from aitune_triton.export.torch_export import load_runner
    from aitune_triton.tune.candidates import Candidate
    from aitune_triton.tune.strategies import select_candidate

    built, candidates = {}, []
    for fmt in ("export", "eager") if prep.config.portable else ("aoti", "export", "eager"):
        progress("stage-1 tuning: building the %s fallback" % fmt)
        trial = version_dir.parent / (".trial-" + fmt)
        trial.mkdir()
        try:
            built[fmt] = (trial, _build_fallback(prep, trial, fmt))
        except ModelError as exc:
            log.info("fallback format %s is not a candidate: %s", fmt, exc)
            continue
        runner = load_runner(trial, fmt, prep.device, prep.spec)
        candidates.append(Candidate(fmt, "eager" if fmt == "eager" else fmt, "fp32",
                                    functools.partial(call_with_feed, runner, prep.spec)))
    if not candidates:
        raise ModelError("no fallback format reproduces eager PyTorch; see --debug for each format's reason")
    progress("stage-1 tuning: measuring %s" % ", ".join(c.name for c in candidates))
    feeds = [sample_feed(prep.spec, s) for s in prep.source.samples]
    refs = [dict(flatten_outputs(o)) for o in prep.outputs]
    batches = sorted({1, *prep.profiles.opt_batches(), max(prep.profiles.max_batch_size, 1)}) \
        if prep.spec.batching else None
    selection = select_candidate(candidates, feeds, refs, strategy, prep.config.budget_ms,
                                 batch_sizes=batches)
    chosen = selection.chosen or "eager"
    trial, artifact = built[chosen]
    for f in artifact.files:
        shutil.move(str(trial / f), str(version_dir / f))
    for trial, _ in built.values():
        shutil.rmtree(trial, ignore_errors=True)
    return artifact, selection


def _write_python(prep: Prepared, model_dir: Path, name: str, progress: Progress,
                  final_dir: Path | None = None) -> tuple[Manifest, str, Any]:
    from aitune_triton.export.fallback_artifact import FALLBACK_LOG
    from aitune_triton.export.torch_export import skipped_summary
    from aitune_triton.triton.python_model import write_python_model

    warmup_dims = _write_common(prep, model_dir)
    version_dir = model_dir / "1"
    version_dir.mkdir()
    if prep.config.strategy:
        artifact, selection = _select_fallback(prep, version_dir, prep.config.strategy, progress)
    else:
        progress("building the PyTorch fallback (AOTInductor, ExportedProgram or eager)")
        artifact, selection = _build_fallback(prep, version_dir, prep.config.fallback_format), None
    served = write_python_model(version_dir, prep.spec, artifact, prep.profiles.max_batch_size, model_name=name,
                                accepted=prep.envelope.readme_lines(prep.spec) if prep.envelope else ())
    plan = _mapping(prep, name, "python", warmup_dims)
    write_config(model_dir, render_config(plan), plan.num_profiles)
    manifest = _manifest(prep, name, "python", artifact=artifact,
                         tuning=TuningSection(stage1=selection.to_dict() if selection else None),
                         runtime_requirements=served.requirements)
    skipped = skipped_summary(artifact.skipped)
    if skipped:  # one line per cause; torch's full output is in the log
        skipped += "; log: %s" % ((final_dir or model_dir) / FALLBACK_LOG)
    return manifest, "fallback %s on %s%s" % (artifact.format, artifact.device, " (%s)" % skipped if skipped else ""), \
        selection


def _stage_tensorrt(prep: Prepared, home_dir: Path, trt_name: str, repo: Path, progress: Progress,
                    reason: str) -> TensorRTSection:
    """Keep the checked ONNX, the TensorRT config and a build script under the model's
    ``tensorrt/`` dir (not a version dir, so Triton never loads it): what ``build-plan`` and the
    plan build in ``generate`` start from, and what the user retries in a container with when this
    machine cannot build. A ``quantization_config`` is applied to that ONNX here
    (``tensorrt/quantized_onnx.py``). ``reason`` is why no plan is built yet."""
    from aitune_triton.tensorrt.trtexec import render_build_script
    from aitune_triton.tensorrt.quantized_onnx import stage_onnx

    stage = home_dir / TRT_STAGE_DIR
    stage.mkdir()
    quantization = None
    try:
        if prep.config.tensorrt.quantization_config is None:
            onnx = _export_onnx(prep, stage / "model.onnx", progress)
        else:
            staged_onnx = stage_onnx(prep.source.model, prep.spec, prep.source.samples, prep.source.outputs,
                                     prep.profiles, stage / "model.onnx", prep.config.tensorrt,
                                     tolerance=prep.config.tolerance_override, progress=progress)
            onnx, quantization = staged_onnx.artifact, staged_onnx.quantization
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # no half-staged TensorRT model next to the fallback
        raise
    plan = _mapping(prep, trt_name, "tensorrt", None)
    write_config(stage, render_config(plan), plan.num_profiles)
    script = stage / "build_plan.sh"
    script.write_text(render_build_script(onnx_path=Path("model.onnx"), plan_path=Path("model.plan"),
                                          trt_config=prep.config.tensorrt, profile_set=prep.profiles,
                                          model_name=trt_name, repository=str(repo), home_model=home_dir.name,
                                          quantization=quantization.summary() if quantization else None))
    script.chmod(0o755)
    return TensorRTSection(
        status=PlanStatus.PENDING, model_name=trt_name, onnx="%s/model.onnx" % TRT_STAGE_DIR,
        build_script="%s/build_plan.sh" % TRT_STAGE_DIR, config="%s/config.pbtxt" % TRT_STAGE_DIR,
        reason=reason, onnx_check=onnx.check.to_dict(), opset=onnx.opset, exporter=onnx.exporter,
        settings=prep.config.tensorrt.to_dict(), quantization=quantization)


def build_tensorrt_model(model_dir: Path, home: Path, info: TensorRTSection, spec: IOSpec, profiles: ProfileSet,
                         max_batch_size: int, config: GenerateConfig, progress: Progress | None = None,
                         log_path: Path | None = None) -> TensorRTSection:
    """Build the plan from ``home``'s staged ONNX, check it and write the TensorRT model into ``model_dir``:
    ``generate`` (where TensorRT can build) and ``build-plan`` both come here.

    The plan is built in a child process with ``config.tensorrt``'s settings (profiles, precision,
    quantization, timing cache, version and hardware compatibility, optimization level), run on
    ``home``'s recorded samples against their eager outputs with the tolerance of its precision,
    and only then written as ``1/model.plan``, with ``config.pbtxt`` mapped from the profiles and
    the engine's own I/O types. Returns ``info`` as built: the plan's stamp and the check. A failed
    stage raises one ``ModelError`` line naming it (parse / build / check) and the log."""
    from aitune_triton.tensorrt.builder import build_plan
    from aitune_triton.tensorrt.plan_check import PlanCheckRequest, plan_tolerances
    from aitune_triton.reference_data import load_reference

    reference = (home / REFERENCE).resolve()
    tolerances, rule = plan_tolerances({t.name: t.dtype for t in spec.outputs},
                                       [case.outputs for case in load_reference(reference)], config.tensorrt,
                                       config.tolerance_override)
    (model_dir / "1").mkdir(exist_ok=True)
    artifact = build_plan(home / str(info.onnx), model_dir / "1" / "model.plan", config.tensorrt, profiles,
                          timeout_s=config.tensorrt.build_timeout_s, progress=progress,
                          check=PlanCheckRequest(reference, tolerances, rule), log_path=log_path)
    io_dtypes = {t.name: t.dtype for t in artifact.engine_io.tensors}
    plan = plan_model_config(spec, profiles, MappingOptions(
        name=str(info.model_name), backend="tensorrt", max_batch_size=max_batch_size, instances=config.instances,
        kind="KIND_GPU", gpus=config.gpus or (), visible_gpus=torch.cuda.device_count(),
        queue_delay_us=config.queue_delay_us, use_cuda_graphs=config.tensorrt.use_cuda_graphs, io_dtypes=io_dtypes))
    write_config(model_dir, render_config(plan), plan.num_profiles)
    if model_dir.resolve() != home.resolve():
        for extra in (REFERENCE, "edge_inputs.npz"):
            if (home / extra).exists():
                shutil.copy2(home / extra, model_dir / extra)
    return info.replace(status=PlanStatus.BUILT, stamp=artifact.stamp_dict(), reason="",
                        check=artifact.check.to_dict() if artifact.check else None)


TRT_BUILD_LOG = "logs/tensorrt_build.log"


def _unbuilt(model_dir: Path, home: Path) -> None:
    """Remove what a failed build wrote into ``model_dir`` (all of it, unless it is ``home`` itself)."""
    if model_dir.resolve() != home.resolve():
        shutil.rmtree(model_dir, ignore_errors=True)
        return
    shutil.rmtree(home / "1", ignore_errors=True)
    (home / "config.pbtxt").unlink(missing_ok=True)


def _build_in_generate(prep: Prepared, staged: repository.StagedModels, home: Path, home_final: Path,
                       info: TensorRTSection, progress: Progress) -> tuple[TensorRTSection, str | None]:
    """``generate``'s plan build: the TensorRT model dir on success, or the staging kept and the failure
    as one line (with the build log's final path) for the notes."""
    trt_name = str(info.model_name)
    model_dir = home if trt_name == home.name else staged.dir(trt_name)
    log_path = home / TRT_BUILD_LOG
    try:
        built = build_tensorrt_model(model_dir, home, info, prep.spec, prep.profiles, prep.profiles.max_batch_size,
                                     prep.config, progress, log_path=log_path)
    except ModelError as exc:
        _unbuilt(model_dir, home)
        if model_dir != home:
            staged.discard(trt_name)
        log_note = "; log: %s" % (home_final / TRT_BUILD_LOG) if log_path.exists() else ""
        return info.replace(reason=str(exc)), "%s%s" % (exc, log_note)
    if model_dir != home:
        _manifest(prep, trt_name, "tensorrt", tensorrt=built).sealed(model_dir).save(model_dir)
    return built, None


def _keep_log(exc: ModelError, model_dir: Path, final_dir: Path) -> str:
    """Write the failed exporter's whole output (``exc.details``) to the model's ``logs/onnx_export.log``
    and return ``; log: PATH`` for the one-line note, or "" when there is none."""
    if not exc.details:
        return ""
    path = model_dir / "logs" / "onnx_export.log"
    path.parent.mkdir(exist_ok=True)
    path.write_text(exc.details)
    return "; log: %s" % (final_dir / "logs" / "onnx_export.log")


def generate(model_py: Path | str, out: Path | str = Path("model_repository"),
             overrides: GenerateOptions | dict | None = None, force: bool = False,
             progress: Progress = lambda msg: None, model_py_timeout_s: float | None = None,
             task: str | None = None) -> GenerateResult:
    """Generate the model directories for ``model_py`` into the repository ``out``.

    ``overrides``: a ``GenerateOptions`` (its ``force`` counts too), or the same changes as a dict.
    ``model_py`` may be a Hugging Face checkpoint directory (``config.json`` + weights, + tokenizer):
    a ``model.py`` is generated for it (``task`` overrides the task guessed from the architecture),
    the normal pipeline runs on that file and it is kept in the model directory's ``source/``. A
    directory that holds a ``model.py`` uses that file (a model.py always wins).

    ``overrides`` changes ``GenerateConfig`` fields of ``get_config()`` (``"tensorrt"``: a dict of
    ``TensorRTBackendConfig`` fields): a value of ``config.NOT_GIVEN`` leaves the field as it is,
    ``None`` sets it to None (derive it from the samples).

    ``progress(message)`` is called as each stage starts (spec, fallback compile + check or
    stage-1 timing, ONNX export + check, write); the CLI prints each stage's duration.

    ``model_py_timeout_s`` limits importing model.py and its ``get_samples()`` (see ``prepare``); the
    processes model.py starts and leaves running are killed when this returns or raises."""
    if isinstance(overrides, GenerateOptions):
        force = force or overrides.force
        if model_py_timeout_s is None:
            model_py_timeout_s = overrides.model_py_timeout_s
        task = task or overrides.task
        overrides = overrides.overrides()
    model_py, out = Path(model_py), Path(out)
    if model_py.is_dir() and (model_py / "model.py").is_file():
        model_py = model_py / "model.py"
    with contained():
        if model_py.is_dir() or task is not None:
            return _generate_from_checkpoint(model_py, out, overrides, force, progress, task, model_py_timeout_s)
        return _generate(model_py, out, overrides, force, progress, model_py_timeout_s)


def _generate_from_checkpoint(path: Path, out: Path, overrides: dict | None, force: bool, progress: Progress,
                              task: str | None, model_py_timeout_s: float | None) -> GenerateResult:
    """Plan from config.json, load the checkpoint once (a bad one fails before anything is
    written), write its model.py to a temporary folder and run the pipeline on it."""
    import tempfile

    from aitune_triton import checkpoint

    if task is not None and not path.is_dir():
        raise UserError("--task applies to a checkpoint directory; %s is not one" % path)
    repository.check_repository_path(out)  # before the checkpoint is loaded, which takes a while
    plan = checkpoint.plan_checkpoint(path, task)  # config.json only: instant
    progress("checkpoint: loading the weights%s of %s" % (" and the tokenizer" if plan.has_tokenizer else "", path))
    checkpoint.preflight(plan)
    with tempfile.TemporaryDirectory(prefix="aitune-checkpoint-") as tmp:
        model_py = checkpoint.write_model_py(plan, Path(tmp))
        result = _generate(model_py, out, overrides, force, progress, model_py_timeout_s, keep_source=True)
    kept = [m.path / "source" / "model.py" for m in result.models if (m.path / "source" / "model.py").is_file()]
    inferred = "checkpoint: %s" % plan.summary()
    written = "generated model.py (start from it to customise): %s" % ", ".join(map(str, kept)) if kept else None
    return dataclasses.replace(result, notes=(inferred,) + tuple(n for n in (written,) if n) + result.notes)


def _generate(model_py: Path, out: Path, overrides: dict | None, force: bool, progress: Progress,
              model_py_timeout_s: float | None, keep_source: bool = False) -> GenerateResult:
    from aitune_triton.tensorrt.availability import build_status

    progress("spec: loading %s, recording and probing its inputs and outputs" % model_py.name)
    prep = prepare(model_py, dict(overrides or {}), model_py_timeout_s)
    names = model_names(prep)
    results, notes, selection = [], list(prep.notes), None
    if schema() is None:
        notes.append(SCHEMA_SKIPPED)
    trt_status = build_status() if "tensorrt" in names else None
    hooks = pipeline.load_hooks(prep.source.path, resolve_timeout(model_py_timeout_s)) if "python" in names else None
    pipe_names = pipeline.model_names(names["python"]) if hooks else {}
    with repository.stage_models(out, list(names.values()) + list(pipe_names.values()), force=force) as staged:
        trt_info: TensorRTSection | None = None
        home_name = names.get("python") or names.get("tensorrt")
        failure = None
        if "python" in names:
            home = staged.dir(names["python"])
            manifest, detail, selection = _write_python(prep, home, names["python"], progress, out / names["python"])
            if "tensorrt" in names:
                assert trt_status is not None
                try:
                    trt_info = _stage_tensorrt(prep, home, names["tensorrt"], out, progress, trt_status.reason)
                except ModelError as exc:
                    trt_info = TensorRTSection(status=PlanStatus.EXPORT_FAILED, reason=str(exc))
                    notes.append("TensorRT skipped: %s%s" % (exc, _keep_log(exc, home, out / names["python"])))
                if trt_info.status is PlanStatus.PENDING and trt_status.available:
                    trt_info, failure = _build_in_generate(prep, staged, home, out / names["python"], trt_info,
                                                           progress)
            manifest = dataclasses.replace(manifest, tensorrt=trt_info)
            manifest.sealed(home).save(home)
            if hooks is not None:
                progress("raw-data pipeline: recording %d raw samples through the hooks, writing %s"
                         % (len(hooks.raw), ", ".join(pipe_names.values())))
                pipeline.write_pipeline(hooks, prep.source.model, home, manifest,
                                        {role: staged.dir(n) for role, n in pipe_names.items()})
                pipe_result = GeneratedModel(pipe_names["pipeline"], "ensemble", out / pipe_names["pipeline"],
                                             ModelStatus.READY, "raw data -> pre -> %s -> post (%d raw samples "
                                             "recorded)" % (names["python"], len(hooks.raw)))
            results.append(GeneratedModel(names["python"], "python", out / names["python"], ModelStatus.READY,
                                          detail))
            if hooks is not None:
                results.append(pipe_result)
        elif "tensorrt" in names:
            assert trt_status is not None
            home = staged.dir(names["tensorrt"])
            _write_common(prep, home)
            trt_info = _stage_tensorrt(prep, home, names["tensorrt"], out, progress, trt_status.reason)
            if trt_status.available:
                trt_info, failure = _build_in_generate(prep, staged, home, out / names["tensorrt"], trt_info,
                                                       progress)
            _manifest(prep, names["tensorrt"], "tensorrt", tensorrt=trt_info).sealed(home).save(home)
        if trt_info is not None and trt_info.status is PlanStatus.BUILT:
            check = trt_info.check or {}
            results.append(GeneratedModel(names["tensorrt"], "tensorrt", out / names["tensorrt"], ModelStatus.READY,
                                          "TensorRT %s plan, checked against eager PyTorch: %s"
                                          % ((trt_info.stamp or {}).get("tensorrt_version"), _check_words(check))))
        if trt_info is not None and trt_info.status is PlanStatus.PENDING:
            assert trt_status is not None and home_name is not None
            stage_dir = out / home_name / TRT_STAGE_DIR
            retry = ("aitune-triton build-plan %s --model %s" % (shlex.quote(str(out)), home_name))
            meanwhile = "the Python fallback serves meanwhile" if "python" in names else "nothing serves it until then"
            if failure is not None:
                notes.append("TensorRT plan not built: %s" % failure)
                notes.append("The checked ONNX, the TensorRT config and build_plan.sh stay staged in %s (not loaded "
                             "by Triton): retry with `%s` (here or inside a TensorRT/Triton container) or %s/"
                             "build_plan.sh; %s." % (stage_dir, retry, stage_dir, meanwhile))
            else:
                if trt_status.installed:
                    notes.append("%s; so the checked ONNX, the TensorRT config and build_plan.sh are staged in %s "
                                 "(not loaded by Triton)." % (trt_status.reason, stage_dir))
                else:
                    notes.append("TensorRT is not installed here: the checked ONNX, the TensorRT config and "
                                 "build_plan.sh are staged in %s (not loaded by Triton)." % stage_dir)
                notes.append("Build the plan inside a TensorRT/Triton container with `%s` (or %s/build_plan.sh); "
                             "%s." % (retry, stage_dir, meanwhile))
            if trt_info.quantization is not None:
                notes.append("TensorRT ONNX quantized: %s" % trt_info.quantization.summary())
                notes.extend(trt_info.quantization.notes)
            results.append(GeneratedModel(names["tensorrt"], "tensorrt", stage_dir, ModelStatus.PENDING,
                                          "plan not built" + (" (%s)" % failure.split(":")[0] if failure else "")))
        if "onnxruntime" in names:
            onnx_dir = staged.dir(names["onnxruntime"])
            (onnx_dir / "1").mkdir()
            warmup_dims = _write_common(prep, onnx_dir)
            onnx = _export_onnx(prep, onnx_dir / "1" / "model.onnx", progress)
            plan = _mapping(prep, names["onnxruntime"], "onnxruntime", warmup_dims)
            write_config(onnx_dir, render_config(plan), plan.num_profiles)
            onnx_manifest = _manifest(prep, names["onnxruntime"], "onnxruntime",
                                      artifact=OnnxSection(opset=onnx.opset, check=onnx.check.to_dict()))
            onnx_manifest.sealed(onnx_dir).save(onnx_dir)
            results.append(GeneratedModel(names["onnxruntime"], "onnxruntime", out / names["onnxruntime"],
                                          ModelStatus.READY, "ONNX opset %s" % onnx.opset))
        if keep_source and home_name is not None:  # the generated model.py, for the user to start from
            (staged.dir(home_name) / "source").mkdir()
            shutil.copy2(prep.source.path, staged.dir(home_name) / "source" / "model.py")
        progress("writing %s into %s" % (", ".join(list(names.values()) + list(pipe_names.values())), out))
    return GenerateResult(Path(out), tuple(results), tuple(notes), selection, prep.envelope_lines)



def pending_plans(repo: Path, model: str | None = None,
                  include_built: bool = False) -> list[tuple[Path, Manifest]]:
    """Model dirs whose manifest has a staged TensorRT model not yet built (or, with
    ``include_built``, already built from its staged ONNX)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise UserError("%s is not a model repository directory" % repo)
    found = []
    for model_dir in sorted(p for p in repo.iterdir() if (p / "manifest.json").exists()):
        manifest = Manifest.load(model_dir)
        trt = manifest.tensorrt
        wanted = (PlanStatus.PENDING, PlanStatus.BUILT) if include_built else (PlanStatus.PENDING,)
        if trt and trt.status in wanted and trt.onnx and (model_dir / trt.onnx).is_file() \
                and model in (None, model_dir.name, trt.model_name):
            found.append((model_dir, manifest))
    if not found:
        raise UserError("no staged TensorRT model%s in %s; generate with the tensorrt backend first"
                        % (" named %s" % model if model else "", repo))
    return found


def build_plans(repo: Path, model: str | None = None, force: bool = False,
                progress: Progress = lambda msg: None) -> list[GeneratedModel]:
    """Build each staged plan from its checked ONNX and activate the TensorRT model atomically."""
    from aitune_triton.tensorrt.availability import build_status
    from aitune_triton.tensorrt.stamp import this_machine

    status = build_status()
    if not status.available:
        raise UserError("TensorRT is not available here (%s); run build-plan inside the TensorRT or Triton "
                        "container that will serve the plan (nvcr.io/nvidia/tensorrt:YY.MM-py3), or run the "
                        "staged build_plan.sh there" % status.reason)
    built = []
    machine = None
    for home, manifest in pending_plans(repo, model, include_built=True):
        info = manifest.tensorrt
        assert info is not None and info.model_name
        trt_name = info.model_name
        if info.status is PlanStatus.BUILT and not force:
            machine = machine or this_machine()
            built.append(existing_plan(Path(repo), home, info, machine))
            continue
        verify_model(home, Path(repo))  # the ONNX and build script are about to be used
        config = GenerateConfig.from_dict(manifest.config)
        with repository.stage_models(Path(repo), [trt_name], force=force) as staged:
            model_dir = staged.dir(trt_name)
            section = build_tensorrt_model(model_dir, home, info, manifest.spec, manifest.profiles,
                                           manifest.max_batch_size, config, progress)
            stamp = section.stamp or {}
            dataclasses.replace(manifest, name=trt_name, backend="tensorrt",
                                tensorrt=section).sealed(model_dir).save(model_dir)
        dataclasses.replace(manifest, tensorrt=section).save(home)
        built.append(GeneratedModel(trt_name, "tensorrt", Path(repo) / trt_name, ModelStatus.READY,
                                    "TensorRT %s, checked against eager PyTorch: %s"
                                    % (stamp.get("tensorrt_version"), _check_words(section.check or {}))))
    return built


def _check_words(check: dict) -> str:
    """The one-line summary of a check as the manifest records it."""
    from aitune_triton.tensorrt.plan_check import PlanCheck

    return PlanCheck.from_dict(check).summary() if check else "no check recorded"


def existing_plan(repo: Path, home: Path, info: TensorRTSection, machine: "LoaderFacts") -> GeneratedModel:
    """A plan ``build-plan`` built before: kept when its stamp matches ``machine``, refused with the
    rebuild command otherwise (Triton would only fail to load it, with an opaque error)."""
    from aitune_triton.tensorrt.stamp import describe_stamp, require_loadable

    plan = repo / str(info.model_name) / "1" / "model.plan"
    stamp = info.stamp or {}
    require_loadable(stamp, machine, plan, "aitune-triton build-plan %s --model %s --force"
                     % (shlex.quote(str(repo)), home.name))
    return GeneratedModel(str(info.model_name), "tensorrt", repo / str(info.model_name), ModelStatus.READY,
                          "already built, matches %s (%s); --force rebuilds it"
                          % (machine.where, describe_stamp(stamp)))
