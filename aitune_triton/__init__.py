"""aitune-triton: from a PyTorch model to a validated Triton model repository.

The Python API: ``generate``, ``validate``, ``tune``, ``serve``, ``push``, ``plan``,
``deploy_k8s``, ``pack_env`` and ``build_plan`` do what the CLI commands of the same names do,
with typed options and results. The names are loaded lazily: ``import aitune_triton`` (and
``aitune-triton --version``) does not import torch until one of them is used. ``validate`` and
``tune`` are the subpackages of those names, made callable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aitune_triton.version import __version__

_EXPORTS = {
    # the model's configuration (get_config())
    "GenerateConfig": "aitune_triton.config",
    "TensorRTBackendConfig": "aitune_triton.tensorrt.config",
    "ONNXAutoCastConfig": "aitune_triton.tensorrt.config",
    "ONNXQuantizationConfig": "aitune_triton.tensorrt.config",
    "TorchQuantizationConfig": "aitune_triton.tensorrt.config",
    "ProfileMode": "aitune_triton.profile_set",
    "TensorRTProfile": "aitune_triton.profile_set",
    # the commands, their options and results
    "generate": "aitune_triton.api",
    "GenerateOptions": "aitune_triton.api",
    "GenerateResult": "aitune_triton.api",
    "ValidateOptions": "aitune_triton.validate.options",
    "ValidationReport": "aitune_triton.validate.report",
    "TuneOptions": "aitune_triton.tune.options",
    "TuneOutcome": "aitune_triton.commands",
    "ServerTarget": "aitune_triton.triton.session",
    "serve": "aitune_triton.commands",
    "ServeOptions": "aitune_triton.commands",
    "ServerURLs": "aitune_triton.commands",
    "push": "aitune_triton.commands",
    "plan": "aitune_triton.commands",
    "PlanOptions": "aitune_triton.commands",
    "deploy_k8s": "aitune_triton.commands",
    "DeployK8sOptions": "aitune_triton.commands",
    "DeployK8sResult": "aitune_triton.commands",
    "pack_env": "aitune_triton.commands",
    "build_plan": "aitune_triton.commands",
    "plan_checkpoint": "aitune_triton.checkpoint",
    "BuildPlanResult": "aitune_triton.commands",
}
_CALLABLE_SUBPACKAGES = ("validate", "tune")

if TYPE_CHECKING:
    from aitune_triton.api import GenerateOptions, GenerateResult, generate
    from aitune_triton.commands import (
        BuildPlanResult,
        DeployK8sOptions,
        DeployK8sResult,
        PlanOptions,
        ServeOptions,
        ServerURLs,
        TuneOutcome,
        build_plan,
        deploy_k8s,
        pack_env,
        plan,
        push,
        serve,
    )
    from aitune_triton.config import GenerateConfig
    from aitune_triton.profile_set import ProfileMode, TensorRTProfile
    from aitune_triton.tensorrt.config import (
        ONNXAutoCastConfig,
        ONNXQuantizationConfig,
        TensorRTBackendConfig,
        TorchQuantizationConfig,
    )
    from aitune_triton.triton.session import ServerTarget
    from aitune_triton.tune.options import TuneOptions
    from aitune_triton.validate.options import ValidateOptions
    from aitune_triton.validate.report import ValidationReport
    from aitune_triton.checkpoint import plan_checkpoint


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_SUBPACKAGES:
        return importlib.import_module("%s.%s" % (__name__, name))
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'aitune_triton' has no attribute %r" % name)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + list(_CALLABLE_SUBPACKAGES))


__all__ = [
    "BuildPlanResult", "DeployK8sOptions", "DeployK8sResult", "GenerateConfig", "GenerateOptions", "GenerateResult",
    "ONNXAutoCastConfig", "ONNXQuantizationConfig", "PlanOptions", "ProfileMode", "ServeOptions", "ServerTarget",
    "ServerURLs", "TensorRTBackendConfig", "TensorRTProfile", "TorchQuantizationConfig", "TuneOptions", "TuneOutcome",
    "ValidateOptions", "ValidationReport", "__version__", "build_plan", "deploy_k8s", "generate", "pack_env", "plan",
    "plan_checkpoint", "push", "serve", "tune", "validate",
]
