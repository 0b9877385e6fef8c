import torch
from torch import nn

def get_model():
    return nn.Linear(2, 2)
def get_samples():
    yield torch.ones(1, 2)
    raise ValueError('no more samples')
