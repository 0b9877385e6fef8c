import torch
from torch import nn

class M(nn.Module):
    def forward(self, x):
        raise RuntimeError('expected [batch, seq]; see [/docs]')
def get_model():
    return M()
def get_samples():
    return [torch.ones(1, 2)]
