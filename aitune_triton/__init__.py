"""aitune-triton: from a PyTorch model to a validated Triton model repository.

The public names are re-exported lazily: ``import aitune_triton`` (and ``aitune-triton --version``)
does not import torch until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aitune_triton.version import __version__

_EXPORTS = {
    "GenerateConfig": "aitune_triton.config",
    "TensorRTBackendConfig": "aitune_triton.tensorrt.config",
    "ONNXAutoCastConfig": "aitune_triton.tensorrt.config",
    "ONNXQuantizationConfig": "aitune_triton.tensorrt.config",
    "TorchQuantizationConfig": "aitune_triton.tensorrt.config",
    "ProfileMode": "aitune_triton.tensorrt.profiles",
    "TensorRTProfile": "aitune_triton.tensorrt.profiles",
    "generate": "aitune_triton.api",
    "plan_checkpoint": "aitune_triton.checkpoint",
}

if TYPE_CHECKING:
    from aitune_triton.config import GenerateConfig
    from aitune_triton.tensorrt.config import (
        ONNXAutoCastConfig,
        ONNXQuantizationConfig,
        TensorRTBackendConfig,
        TorchQuantizationConfig,
    )
    from aitune_triton.profile_set import ProfileMode, TensorRTProfile
    from aitune_triton.api import generate
    from aitune_triton.checkpoint import plan_checkpoint


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'aitune_triton' has no attribute %r" % name)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = ["GenerateConfig", "TensorRTBackendConfig", "TensorRTProfile", "ProfileMode", "ONNXAutoCastConfig",
           "ONNXQuantizationConfig", "TorchQuantizationConfig", "generate", "plan_checkpoint", "__version__"]
