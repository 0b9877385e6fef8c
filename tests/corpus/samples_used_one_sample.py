import torch
from torch import nn

from aitune_triton import GenerateConfig, TensorRTBackendConfig, ProfileMode
def get_model():
    return nn.Linear(2, 2)
def get_samples():
    return [torch.ones(3, 2)]
def get_config():
    return GenerateConfig(batch_axis=True, tensorrt=TensorRTBackendConfig(profiles=ProfileMode.SAMPLES_USED))
