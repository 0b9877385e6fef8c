"""A plan's version stamp against the machine (or container) that would load it.

A TensorRT plan loads only with the TensorRT release that built it, unless it was built version
compatible (then any release of the same major, same or newer), and only on GPUs of the compute
capability it was built for, unless built hardware compatible (``ampere_plus``: compute
capability 8.0 or newer). Triton reports a mismatch only as an opaque load error at serving
time; ``build-plan`` and ``validate`` compare the stamp first and say how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from aitune_triton.errors import UserError

PORTABLE_HINT = ("or generate with TensorRTBackendConfig(version_compatible=True, compatibility_level='ampere_plus') "
                 "for a plan that newer TensorRT 10.x releases and other Ampere+ GPUs load")


@dataclass(frozen=True)
class LoaderFacts:
    """What loads the plan: a TensorRT version and a GPU compute capability, either unknown."""

    tensorrt_version: str | None
    compute_capability: str | None
    where: str = "this machine"


def _numbers(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version or "")))


def _cc(value: str | None) -> tuple[int, ...] | None:
    nums = _numbers(value)
    return nums[:2] if len(nums) >= 2 else None


def tensorrt_problem(built: str | None, version_compatible: bool, loader: str | None) -> str | None:
    """Why TensorRT ``loader`` cannot load a plan built with ``built`` (None: it can, or unknown).

    Versions are compared on the components both give (a container known as ``10.6.0`` matches a
    plan stamped ``10.6.0.26``)."""
    b, here = _numbers(built), _numbers(loader)
    if not b or not here:
        return None
    if version_compatible:
        if b[0] != here[0] or here[:3] < b[:3]:
            return ("version-compatible plan built with TensorRT %s needs TensorRT %d.x, %s or newer; %s has %s"
                    % (built, b[0], built, "{where}", loader))
        return None
    n = max(2, min(len(b), len(here), 3))
    if b[:n] != here[:n]:
        return "plan built with TensorRT %s (not version compatible); {where} has TensorRT %s" % (built, loader)
    return None


def gpu_problem(built_cc: str | None, hardware_level: str | None, loader_cc: str | None) -> str | None:
    """Why a GPU of compute capability ``loader_cc`` cannot run the plan (None: it can, or unknown)."""
    b, here = _cc(built_cc), _cc(loader_cc)
    if here is None:
        return None
    if hardware_level == "ampere_plus":
        return None if here >= (8, 0) else ("ampere_plus plan needs compute capability 8.0 or newer; {where} has %s"
                                           % loader_cc)
    if b is not None and b != here:
        return ("plan built for compute capability %s (%s); {where} has %s"
                % (built_cc, "same_compute_capability" if hardware_level else "not hardware compatible", loader_cc))
    return None


def stamp_problems(stamp: Mapping[str, Any], loader: LoaderFacts) -> list[str]:
    """Every reason ``loader`` would refuse the plan stamped ``stamp`` (as ``PlanStamp.to_dict``)."""
    problems = [tensorrt_problem(stamp.get("tensorrt_version"), bool(stamp.get("version_compatible")),
                                 loader.tensorrt_version),
                gpu_problem(stamp.get("compute_capability"), stamp.get("hardware_compatibility_level"),
                            loader.compute_capability)]
    return [p.format(where=loader.where) for p in problems if p]


def describe_stamp(stamp: Mapping[str, Any]) -> str:
    """``TensorRT 10.6.0.26, compute capability 9.0, not version compatible, not hardware compatible``."""
    level = stamp.get("hardware_compatibility_level")
    return "TensorRT %s, compute capability %s, %s, %s" % (
        stamp.get("tensorrt_version") or "?", stamp.get("compute_capability") or "?",
        "version compatible" if stamp.get("version_compatible") else "not version compatible",
        "hardware compatible (%s)" % level if level else "not hardware compatible")


def require_loadable(stamp: Mapping[str, Any], loader: LoaderFacts, plan: Path | str, rebuild: str) -> None:
    """Refuse a plan ``loader`` cannot load: one line with the reason and ``rebuild`` (the command)."""
    problems = stamp_problems(stamp, loader)
    if problems:
        raise UserError("%s does not match %s: %s; rebuild it there with `%s`, %s"
                        % (plan, loader.where, "; ".join(problems), rebuild, PORTABLE_HINT))


def this_machine() -> LoaderFacts:
    """This Python environment's TensorRT (None when it cannot build) and GPU 0's compute capability."""
    from aitune_triton.tensorrt.availability import tensorrt_status
    from aitune_triton.tensorrt.plan import gpu_facts

    status = tensorrt_status()
    return LoaderFacts(status.version if status.available else None, gpu_facts()["compute_capability"])


def refusal_here(stamp: Mapping[str, Any] | None, plan: Path | str, rebuild: str) -> str | None:
    """The one-line refusal when this machine cannot load the plan (None: it can, or facts are
    unknown). For the embedded server, which runs here: the plan is refused before Triton tries."""
    if not stamp:
        return None
    try:
        require_loadable(stamp, this_machine(), plan, rebuild)
    except UserError as exc:
        return str(exc)
    return None
