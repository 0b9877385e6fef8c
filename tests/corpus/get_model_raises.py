import torch
from torch import nn

def get_model():
    raise ValueError('weights missing')
def get_samples():
    return [torch.ones(1, 2)]
