"""A Linear-only MLP with int8 dynamic quantization (``torch.ao.quantization.quantize_dynamic``):
its state_dict holds packed Linear params and dtypes next to tensors."""

import torch
from torch import nn


def get_model():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return torch.ao.quantization.quantize_dynamic(mlp, {nn.Linear}, dtype=torch.qint8)


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 16, generator=g) for b in (1, 2, 4)]
