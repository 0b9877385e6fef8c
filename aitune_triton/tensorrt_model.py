"""The TensorRT model of a repository: staging its checked ONNX, config and build script beside the
fallback, building and checking the plan (in ``generate`` where TensorRT can build, and in
``build-plan`` on a staged repository), the ``build-plan`` command's flow, and what both report
per model (``GeneratedModel``)."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import AituneError, ModelError, UserError
from aitune_triton.numerics import Tolerance
from aitune_triton.triton.model_check import verify_artifacts_of, verify_model
from aitune_triton.spec import IOSpec
from aitune_triton.profile_set import ProfileSet
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.tensorrt.stamp import LoaderFacts
from aitune_triton.triton import repository
from aitune_triton.reference_data import REFERENCE
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.mapping import MappingOptions, plan_model_config
from aitune_triton.triton.render import render_config, write_config
from aitune_triton.prepared import Prepared, Progress, _export_onnx, _manifest, _mapping

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
    from aitune_triton.tensorrt.plan_check import PlanCheckRequest

    tolerances, rule = _plan_check_tolerances(home, spec, config)
    (model_dir / "1").mkdir(exist_ok=True)
    artifact = build_plan(home / str(info.onnx), model_dir / "1" / "model.plan", config.tensorrt, profiles,
                          timeout_s=config.tensorrt.build_timeout_s, progress=progress,
                          check=PlanCheckRequest((home / REFERENCE).resolve(), tolerances, rule), log_path=log_path)
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


def _plan_check_tolerances(home: Path, spec: IOSpec, config: GenerateConfig) -> tuple[dict[str, Tolerance], str]:
    """The tolerance per float output the plan is checked with (``plan_tolerances`` for the plan's
    precision, scaled by ``home``'s recorded eager outputs), and the rule in words."""
    from aitune_triton.tensorrt.plan_check import plan_tolerances
    from aitune_triton.reference_data import load_reference

    return plan_tolerances({t.name: t.dtype for t in spec.outputs},
                           [case.outputs for case in load_reference((home / REFERENCE).resolve())], config.tensorrt,
                           config.tolerance_override)


def with_plan_tolerances(manifest: Manifest, home: Path) -> Manifest:
    """The manifest of a served TensorRT model with the tolerances its plan was accepted under.

    ``validate``'s accuracy and dynamic-batching checks compare with ``manifest.tolerances``; the
    eager dtype's (float32: atol 1e-4) are far tighter than a reduced-precision plan's (fp16, or
    TF32 as it is on by default: atol a fraction of the output's peak), so a plan that passed its
    check in ``generate``/``build-plan`` would fail ``validate``. Integer and bool outputs stay exact."""
    tolerances, _ = _plan_check_tolerances(home, manifest.spec, GenerateConfig.from_dict(manifest.config))
    return dataclasses.replace(manifest, tolerances={**manifest.tolerances, **tolerances})


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
        with_plan_tolerances(_manifest(prep, trt_name, "tensorrt", tensorrt=built), home).sealed(model_dir) \
            .save(model_dir)
    return built, None


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
    """Build each staged plan from its checked ONNX and activate the TensorRT model atomically.

    A TensorRT-only model (its TensorRT name is its own) is built in place, as ``generate`` does:
    into a staged copy of the model dir that then replaces it, so its ``tensorrt/`` staging stays and
    the manifest is sealed over the files that are actually there. A plan recorded as built whose
    model dir is gone or fails its integrity check is built again rather than reported ready."""
    from aitune_triton.tensorrt.availability import build_status
    from aitune_triton.tensorrt.stamp import this_machine

    status = build_status()
    if not status.available:
        raise UserError("TensorRT is not available here (%s); run build-plan inside the TensorRT or Triton "
                        "container that will serve the plan (nvcr.io/nvidia/tensorrt:YY.MM-py3), or run the "
                        "staged build_plan.sh there" % status.reason)
    repo = Path(repo)
    built = []
    machine = None
    for home, manifest in pending_plans(repo, model, include_built=True):
        info = manifest.tensorrt
        assert info is not None and info.model_name
        trt_name = info.model_name
        in_place = trt_name == home.name
        broken = None
        if info.status is PlanStatus.BUILT and not force:
            broken = _built_plan_problem(repo, trt_name)
            if broken is None:
                machine = machine or this_machine()
                built.append(existing_plan(repo, home, info, machine))
                continue
            progress("%s is recorded as built, but %s: building it again" % (trt_name, broken))
        verify_artifacts_of(home, repo, versions=not in_place)  # the ONNX and build script are about to be used
        config = GenerateConfig.from_dict(manifest.config)
        with repository.stage_models(repo, [trt_name], force=force or in_place or broken is not None) as staged:
            model_dir = staged.dir(trt_name)
            source = home
            if in_place:  # the copy is built and replaces the model; a plan built before goes first
                shutil.copytree(home, model_dir, dirs_exist_ok=True)
                _unbuilt(model_dir, model_dir)
                source = model_dir
            section = build_tensorrt_model(model_dir, source, info, manifest.spec, manifest.profiles,
                                           manifest.max_batch_size, config, progress)
            stamp = section.stamp or {}
            with_plan_tolerances(dataclasses.replace(manifest, name=trt_name, backend="tensorrt", tensorrt=section),
                                 source).sealed(model_dir).save(model_dir)
        if not in_place:
            dataclasses.replace(manifest, tensorrt=section).save(home)
        built.append(GeneratedModel(trt_name, "tensorrt", repo / trt_name, ModelStatus.READY,
                                    "TensorRT %s, checked against eager PyTorch: %s"
                                    % (stamp.get("tensorrt_version"), _check_words(section.check or {}))))
    return built


def _built_plan_problem(repo: Path, name: str) -> str | None:
    """Why the TensorRT model ``name``, recorded as built, cannot be kept as it is (its plan is
    missing, or the model fails the integrity check a load would run), or None."""
    plan = repo / name / "1" / "model.plan"
    if not plan.is_file():
        return "its plan %s is missing" % plan
    try:
        verify_model(repo / name, repo)
    except AituneError as exc:
        return str(exc)
    return None


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
