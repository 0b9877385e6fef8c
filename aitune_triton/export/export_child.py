"""The fallback build's child processes: the AOTInductor compile and each candidate's check.

``torch_export.build_fallback`` runs these through ``procs.run_child``: AOTInductor compiles are
slow and can crash, and loading a package in the process that compiled it segfaulted on CUDA, so
every compile and every check gets a fresh interpreter with a timeout.
"""

from __future__ import annotations

import torch

from aitune_triton.errors import CandidateFailed
from aitune_triton.export.torch_export import CheckRequest, CompileRequest, check_runner, load_runner
from aitune_triton.export.torch_program import first_line


def compile_aoti(request: CompileRequest) -> None:
    program = torch.export.load(str(request.program_path))
    torch._inductor.aoti_compile_and_package(program, package_path=str(request.package_path))


def check(request: CheckRequest) -> dict[str, float]:
    """Per output, the largest absolute error against eager; ``CandidateFailed`` on a mismatch."""
    data = torch.load(request.cases_path, weights_only=True)
    cases = list(zip(data["labels"], data["inputs"], data["outputs"], strict=True))
    try:
        runner = load_runner(request.version_dir, request.format, request.device, request.spec,
                             request.max_detections)
    except Exception as exc:
        raise CandidateFailed("loading failed: %s" % first_line(exc)) from exc
    return check_runner(runner, request.spec, cases, request.device, request.tolerance, request.refuse_mismatch)
