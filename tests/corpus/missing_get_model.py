import torch
from torch import nn

def get_samples():
    return [torch.ones(1, 2)]
