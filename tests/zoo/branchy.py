"""Control flow on tensor values: each call takes one branch for the whole batch, so rows depend on each other."""

import torch


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # torch.export cannot trace a branch on tensor values
            return self.lin(x)
        return -self.lin(x)


def get_model():
    torch.manual_seed(0)
    return Branchy().eval()


def get_samples():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(b, 4, generator=g).abs() * (1 if b % 2 else -1) for b in (1, 2, 4)]
