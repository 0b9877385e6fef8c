"""``generate``, ``build-plan``, ``pack-env`` and ``doctor``: parse, call the API, print."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aitune_triton import defaults
from aitune_triton.checkpoint import TASKS
from aitune_triton.cli.output import console, handle_errors, ints, labelled
from aitune_triton.console import make_console
from aitune_triton.progress import stage_progress


@click.command()
@click.argument("model_py", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True,
              help="Model repository to write into (other models in it are left untouched).")
@click.option("--name", help="Triton model name (default: get_config().name or the model.py's folder name).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["python", "tensorrt", "onnxruntime"]),
              help="Backends to generate (repeatable; default python + tensorrt).")
@click.option("--max-batch-size", type=int,
              help="Largest batch to serve (default: measured on the target device while rows/s improves).")
@click.option("--axis", "axes", multiple=True, metavar="INPUT:AXIS=LO..HI",
              help="Sizes an input axis accepts, e.g. input_ids:1=1..512 (repeatable; default: the model's own "
                   "limit, else probed beyond the samples).")
@click.option("--instances", type=int, help="Model instances per device.")
@click.option("--gpus",
              help="GPU instances: comma-separated GPU indices to place them on (default: every visible GPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where the fallback runs.")
@click.option("--max-queue-delay-us", type=int, help="Dynamic batching queue delay in microseconds.")
@click.option("--fallback-format", type=click.Choice(["auto", "aoti", "export", "eager"]),
              help="Force the fallback artifact format.")
@click.option("--portable/--no-portable", default=None,
              help="An artifact that loads on any host: the ExportedProgram instead of an AOTInductor package "
                   "(machine code for this host's CPU instruction set and GPU). [default: %s]"
                   % ("portable" if defaults.PORTABLE else "no-portable"))
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]),
              help="TensorRT builder precision.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=None, help="CUDA graphs for the TensorRT model.")
@click.option("--strategy", type=click.Choice(["min-latency", "max-throughput", "latency-budget"]),
              help="Stage-1 tuning: measure every fallback format and keep the one this strategy picks.")
@click.option("--budget-ms", type=float, help="Latency budget for --strategy latency-budget.")
@click.option("--atol", type=float,
              help="Absolute tolerance per element when checking exported outputs against eager (float outputs).")
@click.option("--rtol", type=float, help="Relative tolerance per element (float outputs).")
@click.option("--rel-l2", type=float,
              help="Largest relative L2 error ||got - eager|| / ||eager|| a float output may have when it misses "
                   "atol/rtol (default: %g for float16, %g for bfloat16; float32 is checked per element only)."
                   % (defaults.REL_L2_FLOAT16, defaults.REL_L2_BFLOAT16))
@click.option("--force", is_flag=True, help="Replace models of the same name.")
@click.option("--model-py-timeout", type=float,
              help="Seconds allowed for importing MODEL_PY and for its get_samples() (default: $%s, else %.0f; "
                   "0: no limit)." % ("AITUNE_MODEL_PY_TIMEOUT_S", defaults.MODEL_PY_TIMEOUT_S))
@click.option("--task", type=click.Choice(TASKS),
              help="For a checkpoint directory: the task to serve (default: from config.json's architecture).")
@handle_errors
def generate(model_py, out, name, backends, max_batch_size, axes, instances, gpus, device, max_queue_delay_us,
             fallback_format, portable, precision, cuda_graphs, strategy, budget_ms, atol, rtol, rel_l2, force,
             model_py_timeout, task):
    """Generate Triton model directories for MODEL_PY (defines get_model() and get_samples()), or for a
    Hugging Face checkpoint directory (config.json + weights): its model.py is generated.

    \f
    Model directories are staged and renamed into REPO atomically, and never replace an existing model without
    --force. Every artifact is checked against eager PyTorch computed on the same device with the model's own
    dtypes: float32 outputs per element, float16/bfloat16 outputs per element or by their relative L2 error
    (--atol/--rtol/--rel-l2 loosen the check, and a failed check names them); the eager fallback is never refused
    against itself. The serving envelope (batch range and every dynamic axis' range) is chosen on purpose: declared
    (--axis, --max-batch-size), the model's own limit, a probe beyond the samples, or a measurement, and printed one
    line per input. --strategy builds every fallback format and keeps the fastest by measurement. GPU instances go on
    every GPU visible at generate time unless --gpus lists them. --portable writes an artifact that loads on any
    host (no AOTInductor package, which is machine code for this host's CPU and GPU). Where TensorRT and a GPU are
    present the plan is built and checked; elsewhere it is staged for build-plan."""
    from aitune_triton.api import GenerateOptions, generate as run
    from aitune_triton.envelope import parse_axis_options

    trt = {k: v for k, v in {"precision": precision, "use_cuda_graphs": cuda_graphs}.items() if v is not None}
    given = {"name": name, "backends": tuple(backends) or None, "max_batch_size": max_batch_size,
             "instances": instances, "gpus": ints(gpus) if gpus else None, "device": device,
             "max_queue_delay_us": max_queue_delay_us,
             "fallback_format": fallback_format, "portable": portable, "strategy": strategy, "budget_ms": budget_ms,
             "atol": atol, "rtol": rtol, "rel_l2": rel_l2,
             "axis_ranges": parse_axis_options(axes) if axes else None}
    # click gives None for an option left out: that is "not given", never "set it to None"
    options = GenerateOptions(**{k: v for k, v in given.items() if v is not None}, tensorrt=trt, force=force,
                              model_py_timeout_s=model_py_timeout, task=task)
    with stage_progress(console, "generating") as progress:
        result = run(model_py, out, options, progress=progress)
    if result.selection is not None:
        make_console(stderr=True, width=max(console.width, 140)).print(result.selection.to_table())
    for model in result.models:
        console.print(labelled("✓", "green", "%s (%s, %s): %s" % (model.name, model.backend, model.status,
                                                                  model.detail)),
                      soft_wrap=True)  # one line even when not a terminal: a skipped format's cause and log
    for line in result.envelope:
        console.print(line, markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(note, markup=False, soft_wrap=True)
    console.print("wrote %s" % result.repository, markup=False, soft_wrap=True)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(TASKS), help="The task to serve (default: from the architecture).")
@handle_errors
def inspect(path, task):
    """Print what generate would build from the checkpoint directory PATH, without generating."""
    from aitune_triton.checkpoint import describe, plan_checkpoint

    for line in describe(plan_checkpoint(path, task)):
        click.echo(line)


@click.command("build-plan")
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--model", help="Only this model (default: every staged TensorRT model).")
@click.option("--force", is_flag=True, help="Replace an existing TensorRT model directory.")
@handle_errors
def build_plan(repo, model, force):
    """Build staged TensorRT plans in REPO (run inside a TensorRT or Triton container).

    \f
    Each plan is checked against eager PyTorch like generate does, stamped with the TensorRT version and compute
    capability, and activated as `<name>_trt`. A plan whose stamp does not match this machine is refused with the
    command that rebuilds it (--force)."""
    from aitune_triton.commands import build_plan as run

    with stage_progress(console, "building TensorRT plans") as progress:
        built = run(repo, model, force=force, progress=progress)
    for m in built.models:
        console.print(labelled("✓", "green", "%s: %s" % (m.name, m.detail)), soft_wrap=True)


@click.command("pack-env")
@click.argument("repo", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="The Python-backend model to pack an environment for.")
@click.option("--python", "python_version", metavar="X.Y",
              help="The serving stub's Python; must be this interpreter's (the default).")
@handle_errors
def pack_env(repo, model, python_version):
    """Pack torch and what MODEL imports into REPO/MODEL/python_env.tar.gz (Triton's EXECUTION_ENV_PATH).

    \f
    The model then serves on a Triton whose Python has no torch. The archive holds this interpreter's Python, so run
    it from a Python of the stub's version (--python checks it) whose torch is the model's; about 300 MB and a
    minute for the CPU torch. Its SHA-256 is recorded with the model's other files."""
    from aitune_triton.commands import pack_env as run

    console.print("packing the Python environment of %s (a few hundred MB; a minute or two)" % model, markup=False)
    packed = run(repo, model, python_version)
    console.print(labelled("✓", "green", "%s: %.0f MB in %.0f s (%s); config.pbtxt points EXECUTION_ENV_PATH at it"
                           % (packed.path, packed.size_bytes / 1e6, packed.seconds, ", ".join(packed.distributions))),
                  soft_wrap=True)
    for warning in packed.warnings:
        console.print(labelled("!", "yellow", warning), soft_wrap=True)


@click.command()
@handle_errors
def doctor():
    """Show which components are available (torch, GPU, TensorRT, tritonserver, perf_analyzer)."""
    from aitune_triton import doctor as doc

    rows = doc.collect()
    doc.render(rows, make_console())
    sys.exit(doc.exit_code(rows))
