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

This module only orchestrates: each step's work lives with its step. ``prepared`` derives
everything from model.py (``prepare``) and writes the pieces every model dir shares; the
fallback's stage-1 format selection is ``tune.stage1``; warm-up files are ``triton.warmup``; the
TensorRT staging, plan build and ``build-plan`` flow are ``tensorrt_model``.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitune_triton import pipeline
from aitune_triton.config import GenerateConfig, check_override_fields
from aitune_triton.not_given import NOT_GIVEN, NotGiven
from aitune_triton.errors import ModelError, UserError
from aitune_triton.prepared import (Prepared, Progress, _build_fallback, _export_onnx, _manifest, _mapping,
                                    _write_common, model_names, prepare)
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.tensorrt_model import (TRT_STAGE_DIR, GeneratedModel, ModelStatus, _build_in_generate,
                                          _check_words, _stage_tensorrt, with_plan_tolerances)
from aitune_triton.triton import launch, repository
from aitune_triton.triton.manifest import Manifest, OnnxSection
from aitune_triton.triton.render import SCHEMA_SKIPPED, render_config, schema, write_config
from aitune_triton.triton.tuning_section import TuningSection
from aitune_triton.tune.stage1 import select_fallback
from aitune_triton.user_code import contained, resolve_timeout



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


def _write_python(prep: Prepared, model_dir: Path, name: str, progress: Progress,
                  final_dir: Path | None = None) -> tuple[Manifest, str, Any]:
    from aitune_triton.export.fallback_artifact import FALLBACK_LOG
    from aitune_triton.export.torch_export import skipped_summary
    from aitune_triton.triton.python_model import write_python_model

    warmup_dims = _write_common(prep, model_dir)
    version_dir = model_dir / "1"
    version_dir.mkdir()
    if prep.config.strategy:
        artifact, selection = select_fallback(functools.partial(_build_fallback, prep), prep.spec,
                                              prep.source.samples, prep.outputs, prep.profiles, prep.device,
                                              prep.config.portable, prep.config.budget_ms, version_dir,
                                              prep.config.strategy, progress, prep.config.tolerance_override)
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
    ``TensorRTBackendConfig`` fields): a value of ``not_given.NOT_GIVEN`` leaves the field as it is,
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
    check_override_fields(overrides or {})  # a misspelt name before model.py or a checkpoint is loaded
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
    if not (path / checkpoint.CONFIG_FILE).is_file():  # generate, unlike inspect, takes a model.py too
        raise UserError("%s: no config.json (nor a model.py); pass a model.py (or its folder) or a Hugging Face "
                        "checkpoint directory (save_pretrained output)" % path)
    repository.check_repository_path(out)  # before the checkpoint is loaded, which takes a while
    plan = checkpoint.plan_checkpoint(path, task)  # config.json only: instant
    # the generated get_config() sets neither name nor backends: an existing model is refused before the weights load
    named = GenerateConfig().replace(**{k: v for k, v in (overrides or {}).items() if k in ("name", "backends")})
    repository.check_new_models(out, list(model_names(named.backends, named.name or plan.name).values()), force)
    progress("checkpoint: loading the weights%s of %s" % (" and the tokenizer" if plan.has_tokenizer else "", path))
    # the generated model.py sets HF_HUB_OFFLINE at import: undone with preflight's, when this returns
    with checkpoint.offline_and_quiet(), tempfile.TemporaryDirectory(prefix="aitune-checkpoint-") as tmp:
        checkpoint.preflight(plan)
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
    def refuse_existing(names: dict[str, str]) -> None:  # before the probe and the batch measurement
        repository.check_new_models(out, list(names.values()), force)

    prep = prepare(model_py, dict(overrides or {}), model_py_timeout_s, names_known=refuse_existing)
    names = model_names(prep.config.backends, prep.name)
    results, notes, selection = [], list(prep.notes), None
    if schema() is None:
        notes.append(SCHEMA_SKIPPED)
    trt_status = build_status() if "tensorrt" in names else None
    hooks = pipeline.load_hooks(prep.source.path, resolve_timeout(model_py_timeout_s), prep.source.module) \
        if "python" in names else None
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
                                        {role: staged.dir(n) for role, n in pipe_names.items()},
                                        prep.config.tolerance_override)
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
            trt_manifest = _manifest(prep, names["tensorrt"], "tensorrt", tensorrt=trt_info)
            if trt_info.status is PlanStatus.BUILT:  # the home is the TensorRT model: held to its plan's check
                trt_manifest = with_plan_tolerances(trt_manifest, home)
            trt_manifest.sealed(home).save(home)
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
    if pipe_names:  # written, but the bundled server would refuse it here: say so now, not at the first validate
        problem = launch.numpy_bytes_problem(out, tuple(pipe_names.values()))
        if problem is not None and problem[0]:
            notes.append("warning: this environment's bundled tritonserver cannot serve the raw-data pipeline "
                         "(validate and serve will refuse it): %s" % problem[1])
    return GenerateResult(Path(out), tuple(results), tuple(notes), selection, prep.envelope_lines)

