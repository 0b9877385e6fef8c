"""A model without a batch axis returning a scalar beside a vector: Triton has no scalar tensors, so
the scalar is served as dims [1] (clients receive [1])."""

import torch
from torch import nn


class Stats(nn.Module):
    def forward(self, x: torch.Tensor):
        return x.sum(), x * 2.0


def get_model():
    return Stats().eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(6, generator=g), torch.randn(6, generator=g)]
