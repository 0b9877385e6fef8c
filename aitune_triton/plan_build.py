"""``build-plan``: build the TensorRT plans ``generate`` staged (inside a TensorRT or Triton
container) and activate each TensorRT model atomically, or keep a plan built before when its
stamp matches this machine."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from pathlib import Path
from typing import Callable

import torch

from aitune_triton.api import GeneratedModel, ModelStatus
from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError
from aitune_triton.integrity import verify_artifacts
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.tensorrt.stamp import LoaderFacts
from aitune_triton.triton import repository
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.mapping import MappingOptions, plan_model_config
from aitune_triton.triton.render import render_config, write_config

Progress = Callable[[str], None]


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
    from aitune_triton.tensorrt.availability import tensorrt_status
    from aitune_triton.tensorrt.builder import build_plan
    from aitune_triton.tensorrt.stamp import this_machine

    status = tensorrt_status()
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
        verify_artifacts(home, manifest.files)  # the ONNX and build script are about to be used
        config = GenerateConfig.from_dict(manifest.config)
        with repository.stage_models(Path(repo), [trt_name], force=force) as staged:
            model_dir = staged.dir(trt_name)
            (model_dir / "1").mkdir()
            progress("building TensorRT plan for %s" % trt_name)
            plan_artifact = build_plan(home / str(info.onnx), model_dir / "1" / "model.plan", config.tensorrt,
                                       manifest.profiles, timeout_s=config.tensorrt.build_timeout_s)
            io_dtypes = {t.name: t.dtype for t in plan_artifact.engine_io.tensors}
            plan = plan_model_config(manifest.spec, manifest.profiles, MappingOptions(
                name=trt_name, backend="tensorrt", max_batch_size=manifest.max_batch_size,
                instances=config.instances, kind="KIND_GPU", gpus=config.gpus or (),
                visible_gpus=torch.cuda.device_count(), queue_delay_us=config.queue_delay_us,
                use_cuda_graphs=config.tensorrt.use_cuda_graphs, io_dtypes=io_dtypes))
            write_config(model_dir, render_config(plan), plan.num_profiles)
            for extra in ("reference.npz", "edge_inputs.npz"):
                if (home / extra).exists():
                    shutil.copy2(home / extra, model_dir / extra)
            stamp = plan_artifact.stamp_dict()
            section = info.replace(status=PlanStatus.BUILT, stamp=stamp)
            dataclasses.replace(manifest, name=trt_name, backend="tensorrt",
                                tensorrt=section).sealed(model_dir).save(model_dir)
        dataclasses.replace(manifest, tensorrt=section).save(home)
        built.append(GeneratedModel(trt_name, "tensorrt", Path(repo) / trt_name, ModelStatus.READY,
                                    "TensorRT %s" % stamp.get("tensorrt_version")))
    return built


def existing_plan(repo: Path, home: Path, info: TensorRTSection, machine: LoaderFacts) -> GeneratedModel:
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
