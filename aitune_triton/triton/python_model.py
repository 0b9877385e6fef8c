"""Write the Python-backend model that serves a ``FallbackArtifact``.

The served code is the static package ``aitune_triton.runtime``, copied verbatim into the version
directory (as PyTriton copies its fixed model scripts); what differs per model (names, dtypes, how
inputs bind to ``forward``, accepted axis ranges, artifact hashes, what the serving side needs) goes
into ``aitune_model.json`` next to it. The serving environment need not have aitune-triton installed.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

from aitune_triton.errors import UserError
from aitune_triton.export.fallback_artifact import AOTI_FILE, FallbackArtifact, aoti_package_metadata
from aitune_triton.runtime import RUNTIME_FILES, runtime_source
from aitune_triton.runtime.aitune_runtime import (
    DATA_FILE,
    TORCH_EXACT,
    TORCH_MIN,
    TORCH_SCHEMA,
    InputBinding,
    ModelData,
    Requirements,
    cpu_flags_here,
    isa_flags,
    release,
    sha256_file,
)
from aitune_triton.spec import AxisKind, IOSpec
from aitune_triton.version import __version__

log = logging.getLogger(__name__)

FILE_ROLES = {"aoti": ("aoti",), "export": ("export",), "eager": ("source", "state_dict")}
DEFAULT_MAX_GRAPHS = 32
# the python backend release the runtime is validated on (the embedded server of nvidia-pytriton 0.7);
# it uses DLPack tensors, TritonError codes and pb_utils.Logger, all older than that release
TRITON_MIN = "2.51"
TORCH_FLOOR = "2.4.0"  # the oldest torch aitune-triton supports (weights_only loading, torch.export)


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself: with padding, any batch
    the dynamic batcher forms lands on one of these, so few CUDA graphs cover the whole range."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch_size] if max_batch_size > 0 else []


def runtime_requirements(fmt: str, device: str, version_dir: Path | None = None) -> Requirements:
    """What the serving side needs for an artifact of ``fmt`` built here on ``device``. For an
    AOTInductor package (in ``version_dir``) that includes this host's CPU instruction set, as the
    package itself records it, and on CUDA the GPU's compute capability."""
    import torch

    version = torch.__version__
    rule = {"aoti": TORCH_EXACT, "export": TORCH_SCHEMA}.get(fmt, TORCH_MIN)
    schema = None
    if fmt == "export":
        from torch._export.serde.schema import SCHEMA_VERSION

        schema = int(SCHEMA_VERSION[0])
    torch_min = "%d.%d.%d" % release(version) if rule != TORCH_MIN else TORCH_FLOOR
    host: dict[str, Any] = {}
    if fmt == "aoti":
        meta = aoti_package_metadata(Path(version_dir) / AOTI_FILE) if version_dir else {}
        isa = meta.get("AOTI_CPU_ISA") or torch.backends.cpu.get_cpu_capability()
        capability = None
        if device == "cuda" and torch.cuda.is_available():  # the GPU the package was compiled and checked on
            capability = "%d.%d" % torch.cuda.get_device_capability()
        host = {"machine": meta.get("AOTI_MACHINE") or platform.machine(),
                "cpu_isa": None if "INVALID" in isa.upper() else isa.upper(),
                "cpu_flags": isa_flags(cpu_flags_here() or ()), "compute_capability": capability}
    return Requirements(python="%d.%d" % tuple(map(int, platform.python_version_tuple()[:2])), torch=version,
                        torch_rule=rule, torch_min=torch_min,
                        cuda=(torch.version.cuda or "unknown") if device == "cuda" else None,
                        triton_min=TRITON_MIN, export_schema_major=schema, **host)


def _ranges(spec: IOSpec, artifact: FallbackArtifact, max_batch_size: int) -> dict[str, tuple]:
    out = {}
    for t in spec.inputs:
        given = artifact.axis_ranges.get(t.name)
        if given and len(given) == t.rank:
            ranges = [tuple(r) for r in given]
        else:
            ranges = [(a.max, a.max) if a.kind is AxisKind.STATIC else (a.min, a.max) for a in t.axes]
        if t.has_batch and max_batch_size > 0:
            ranges[0] = (1, max_batch_size)
        out[t.name] = tuple(ranges)
    return out


def python_model_data(spec: IOSpec, artifact: FallbackArtifact, max_batch_size: int, version_dir: Path, *,
                      pad_to_buckets: bool | None = None, cuda_graphs: bool = True,
                      graph_batches: list[int] | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS,
                      requirements: Requirements | None = None, flat_io: bool = False) -> ModelData:
    """The data of the served model. ``pad_to_buckets`` None pads on CUDA instances only, and only when
    the artifact's rows were found independent; ``cuda_graphs`` applies to GPU instances only;
    ``flat_io``: the exported artifact takes the inputs in spec order and returns a flat tuple. The
    artifact files must already be in ``version_dir``: their SHA-256 is recorded."""
    if spec.batching and max_batch_size < 0:
        raise UserError("max_batch_size must be >= 0, got %d" % max_batch_size)
    batches = sorted(set(graph_batches)) if graph_batches else graph_batch_sizes(max_batch_size)
    if any(not 1 <= b <= max(max_batch_size, 1) for b in batches):
        raise UserError("graph batch sizes %s must lie in 1..max_batch_size (%d)" % (batches, max_batch_size))
    if pad_to_buckets is None and not artifact.row_independent:
        pad_to_buckets = False
    elif pad_to_buckets and not artifact.row_independent:
        log.warning("padding batches for %s although its rows were not found independent: outputs may differ",
                    artifact.format)
    batched = spec.batching and max_batch_size > 0
    ranges = _ranges(spec, artifact, max_batch_size if batched else 0)
    inputs = []
    for t in spec.inputs:
        kind, _, key = t.binding.partition(":")
        inputs.append(InputBinding(t.name, t.dtype, kind, int(key) if kind == "arg" else key,
                                   bool(batched and t.has_batch), ranges[t.name]))
    missing = [f for f in artifact.files if not (Path(version_dir) / f).is_file()]
    if missing:
        raise UserError("artifact file(s) %s are not in %s" % (", ".join(missing), version_dir))
    return ModelData(
        generator="aitune-triton %s" % __version__,
        format=artifact.format,
        artifact_device=artifact.device,
        files=dict(zip(FILE_ROLES[artifact.format], artifact.files, strict=True)),
        sha256={f: sha256_file(str(Path(version_dir) / f)) for f in artifact.files},
        max_batch_size=max_batch_size if batched else 0,
        inputs=tuple(inputs),
        outputs=tuple((t.name, t.dtype) for t in spec.outputs),
        pad_to_buckets=pad_to_buckets,
        cuda_graphs=bool(cuda_graphs),
        graph_batches=tuple(batches) if batched else (),
        max_graphs=int(max_graphs),
        requirements=requirements or runtime_requirements(artifact.format, artifact.device, Path(version_dir)),
        flat_io=bool(flat_io or getattr(artifact, "flat_io", False)) and artifact.format != "eager",
        max_detections=artifact.max_detections if artifact.format == "eager" else 0,  # exported: padding inside
    )


def serving_readme(name: str, data: ModelData, client_notes: tuple[str, ...] = (),
                   accepted: tuple[str, ...] = ()) -> str:
    """``README.md`` for the model directory: what the serving side needs (the manifest's
    ``runtime_requirements`` in words) and how to get it; ``client_notes``: where the shapes
    clients receive differ from eager PyTorch (``mapping.client_shape_notes``); ``accepted``: the
    serving envelope, one line per input (``Envelope.lines``)."""
    from aitune_triton.templating import render

    reqs = data.requirements
    what = {"aoti": "an AOTInductor package", "export": "a torch.export ExportedProgram",
            "eager": "your module and its state_dict"}[data.format]
    torch_line = {TORCH_EXACT: "exactly %s (an AOTInductor package loads only with the torch that compiled it)"
                  % "%d.%d.%d" % release(reqs.torch),
                  TORCH_SCHEMA: "a release whose torch.export schema major is %s: %s or newer within it "
                  "(generated with %s)" % (reqs.export_schema_major, reqs.torch_min, reqs.torch),
                  TORCH_MIN: "%s or newer (generated with %s)" % (reqs.torch_min, reqs.torch)}[reqs.torch_rule]
    cuda_line = ("a torch build for CUDA %s and a GPU (the artifact runs on cuda)" % reqs.cuda if reqs.cuda
                 else "none (the artifact runs on the CPU)")
    return render("model_readme.md.j2", name=name, version=__version__, what=what, files=sorted(data.sha256),
                  reqs=reqs, torch_line=torch_line, cuda_line=cuda_line, host_line=reqs.host_needs(),
                  client_notes=client_notes, accepted=accepted)


def write_python_model(version_dir: Path, spec: IOSpec, artifact: FallbackArtifact, max_batch_size: int,
                       model_name: str | None = None, accepted: tuple[str, ...] = (), **options) -> ModelData:
    """Copy the runtime into ``version_dir``, write its data file and the model directory's README.md
    (``accepted``: the envelope's lines; ``options``: see ``python_model_data``)."""
    version_dir = Path(version_dir)
    data = python_model_data(spec, artifact, max_batch_size, version_dir, **options)
    for name in RUNTIME_FILES:
        (version_dir / name).write_bytes(runtime_source(name))
    (version_dir / DATA_FILE).write_text(json.dumps(data.to_dict(), indent=2, sort_keys=True) + "\n")
    from aitune_triton.triton.mapping import client_shape_notes

    (version_dir.parent / "README.md").write_text(serving_readme(model_name or version_dir.parent.name, data,
                                                                 client_shape_notes(spec), accepted))
    return data
