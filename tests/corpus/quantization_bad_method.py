import torch
from torch import nn

from aitune_triton import GenerateConfig, ONNXQuantizationConfig, TensorRTBackendConfig


def get_model():
    return nn.Linear(2, 2)


def get_samples():
    return [torch.ones(1, 2), torch.ones(3, 2)]


def get_config():
    return GenerateConfig(tensorrt=TensorRTBackendConfig(
        quantization_config=ONNXQuantizationConfig(precision="fp8", calibration_method="awq_clip")))
