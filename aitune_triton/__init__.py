"""aitune-triton: from a PyTorch model to a validated Triton model repository."""

__version__ = "0.1.0"

from aitune_triton.config import GenerateConfig  # noqa: E402
from aitune_triton.tensorrt.config import (  # noqa: E402
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TensorRTBackendConfig,
    TorchQuantizationConfig,
)
from aitune_triton.tensorrt.profiles import ProfileMode, TensorRTProfile  # noqa: E402

__all__ = ["GenerateConfig", "TensorRTBackendConfig", "TensorRTProfile", "ProfileMode", "ONNXAutoCastConfig",
           "ONNXQuantizationConfig", "TorchQuantizationConfig", "__version__"]
