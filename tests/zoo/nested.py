"""Nested dict / list outputs (a backbone with auxiliary heads): output names come from the paths."""

import torch
from torch import nn


class MultiHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.GELU())
        self.cls, self.box = nn.Linear(16, 3), nn.Linear(16, 4)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.cls(h), "aux": [self.box(h), {"norm": h.norm(dim=-1, keepdim=True)}]}


def get_model():
    torch.manual_seed(0)
    return MultiHead().eval()


def get_samples():
    g = torch.Generator().manual_seed(4)
    return [torch.randn(b, 6, generator=g) for b in (1, 3, 8)]
