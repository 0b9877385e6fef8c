import torch
from torch import nn

from aitune_triton import GenerateConfig, ONNXQuantizationConfig, TensorRTBackendConfig


def get_model():
    return nn.Linear(2, 2)


def get_samples():
    return [torch.ones(1, 2), torch.ones(3, 2)]


def get_config():
    # quantization is a TensorRT setting: with only the Python backend nothing would apply it
    return GenerateConfig(backends=("python",),
                          tensorrt=TensorRTBackendConfig(quantization_config=ONNXQuantizationConfig()))
