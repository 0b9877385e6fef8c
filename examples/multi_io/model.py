"""Several inputs and outputs of mixed dtypes: float features, int32 categories, a bool mask
(keyword-only), and a tuple of float32 / int64 / bool outputs."""
import torch
from torch import nn


class MixedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8 + 4, 3)

    def forward(self, features: torch.Tensor, category: torch.Tensor, *, valid: torch.Tensor):
        x = torch.cat([features, self.embed(category.long())], dim=-1)
        scores = self.proj(x) * valid.unsqueeze(-1).to(x.dtype)
        return scores, scores.argmax(-1), scores.sum(-1) > 0


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return MixedModel().eval()


def get_samples():
    g = torch.Generator().manual_seed(3)
    out = []
    for b in (1, 3, 6):
        args = (torch.randn(b, 4, generator=g), torch.randint(0, 16, (b,), generator=g, dtype=torch.int32))
        out.append((args, {"valid": torch.rand(b, generator=g) > 0.3}))
    return out
