import torch
from torch import nn

from aitune_triton import GenerateConfig, TensorRTBackendConfig, TensorRTProfile
def get_model():
    return nn.Linear(4, 2)
def get_samples():
    return [torch.ones(1, 4), torch.ones(4, 4)]
def get_config():
    return GenerateConfig(tensorrt=TensorRTBackendConfig(profiles=[TensorRTProfile().add_input_shape('nope', (1, 4), (4, 4), (8, 4))]))
