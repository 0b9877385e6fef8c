import torch
from torch import nn

def get_model():
    return lambda x: x
def get_samples():
    return [torch.ones(1, 2)]
