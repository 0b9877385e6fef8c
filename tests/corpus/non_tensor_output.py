import torch
from torch import nn

class M(nn.Module):
    def forward(self, x):
        return {'value': x, 'label': 'text'}
def get_model():
    return M()
def get_samples():
    return [torch.ones(1, 2), torch.ones(2, 2)]
